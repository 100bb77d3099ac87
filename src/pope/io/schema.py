"""The column schema of a log: :class:`LogColumns` (schema field -> column name), list fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["LIST_COLUMNS", "LogColumns"]

#: Schema fields whose values are lists (stored as JSON text in CSV).
LIST_COLUMNS = ("aspect_probs", "token_log_logging", "embedding")


@dataclass(frozen=True)
class LogColumns:
    """Column names of the log schema (map your own names onto the schema fields).

    Every attribute is the column holding that field; ``None`` disables an optional field.
    Optional fields whose column is absent from the data are simply not used.
    """

    prompt_id: str = "prompt_id"
    prompt: str = "prompt"
    response: str = "response"
    signal: str = "signal"
    aspect: str | None = "aspect"
    aspect_probs: str | None = "aspect_probs"
    log_logging: str | None = "log_logging"
    position: str | None = "position"
    token_log_logging: str | None = "token_log_logging"
    embedding: str | None = "embedding"
    log_target: str | None = "log_target"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | None]) -> LogColumns:
        """Defaults overridden by ``{field: column}`` (unknown fields raise ``ValueError``)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ValueError(f"unknown schema field(s) {unknown}; fields are {sorted(names)}")
        # None for a required field passes here and is reported where the column is looked
        # up (LogFormatError "required column(s) None (for prompt) not found")
        changes: dict[str, Any] = dict(mapping)
        return replace(cls(), **changes)

    def as_dict(self) -> dict[str, str | None]:
        """``{field: column}`` for every schema field."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
