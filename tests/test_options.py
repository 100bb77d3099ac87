"""One spelling per concept: every option's values are written once, in :mod:`pope.options`.

The test reads the source of the package (``ast``) and looks for a second spelling of an option
set: a ``Literal[...]`` (alias or annotation), or a list or tuple of two or more strings (an
``argparse`` ``choices=[...]``, a ``value in (...)`` check), whose values equal those of an option
defined in :mod:`pope.options`. Such a copy can drift from the
definition (it did: ``"snips"`` was a coverage spelling in the objective but not in
``pope.evaluate``).
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

import pope
import pope.options as options

SRC = Path(pope.__file__).resolve().parent


def _option_sets() -> dict[frozenset[str], str]:
    sets = {}
    for name in dir(options):
        obj = getattr(options, name)
        if typing.get_origin(obj) is typing.Literal:
            sets[frozenset(typing.get_args(obj))] = name
    return sets


def _string_set(node: ast.AST) -> frozenset[str] | None:
    """The strings of a Literal subscript or a list/tuple of string constants, else None."""
    if isinstance(node, ast.Subscript):
        base = node.value
        is_literal = (isinstance(base, ast.Name) and base.id == "Literal") or (
            isinstance(base, ast.Attribute) and base.attr == "Literal"
        )
        if not is_literal:
            return None
        node = node.slice
        if isinstance(node, ast.Constant):
            return frozenset([node.value]) if isinstance(node.value, str) else None
    if isinstance(node, (ast.Tuple, ast.List)) and node.elts:
        values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        if len(values) == len(node.elts) and all(isinstance(v, str) for v in values):
            return frozenset(values)
    return None


def _copies() -> list[str]:
    option_sets = _option_sets()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "options.py" and path.parent == SRC:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            candidates: list[ast.AST] = []
            if isinstance(node, ast.Subscript):
                candidates.append(node)
            elif isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) >= 2:
                candidates.append(node)  # choices=[...], `x in (...)`, a tuple of names
            for cand in candidates:
                values = _string_set(cand)
                if values is not None and values in option_sets:
                    rel = path.relative_to(SRC)
                    if found and found[-1].startswith(f"{rel}:{cand.lineno} "):
                        continue  # the tuple inside Literal[...] on the same line
                    found.append(
                        f"{rel}:{cand.lineno} repeats pope.options."
                        f"{option_sets[values]} {sorted(values)}"
                    )
    return found


def test_the_scan_finds_a_copy():
    # The detector itself must be able to fail: a copy of Coverage is found.
    tree = ast.parse('x: Literal["ips", "self_normalized"] = "ips"\nf(choices=["mean", "sum"])')
    sets = _option_sets()
    subs = [n for n in ast.walk(tree) if isinstance(n, ast.Subscript)]
    assert _string_set(subs[0]) in sets
    kws = [n for n in ast.walk(tree) if isinstance(n, ast.keyword)]
    assert _string_set(kws[0].value) in sets


def test_every_option_is_spelled_once():
    copies = _copies()
    assert not copies, "option values spelled outside pope.options:\n" + "\n".join(copies)


def test_snips_is_not_a_coverage_spelling():
    assert "snips" not in options.COVERAGES
    assert "snips" in options.RELEVANCES  # it names the self-normalised *relevance* estimator


@pytest.mark.parametrize("name", [n for n in options.__all__ if n.isupper()])
def test_each_tuple_is_its_literal(name):
    literal = getattr(options, "".join(p.capitalize() for p in name.lower().split("_")), None)
    values = getattr(options, name)
    assert isinstance(values, tuple) and values
    assert len(set(values)) == len(values)
    if literal is not None and typing.get_origin(literal) is typing.Literal:
        assert values == typing.get_args(literal)


def test_model_dtype_names() -> None:
    """The model dtype is one of MODEL_DTYPES (no second spelling such as "bf16")."""
    import torch

    from pope.options import MODEL_DTYPES
    from pope.scoring import _resolve_dtype

    assert _resolve_dtype("bfloat16") is torch.bfloat16
    assert _resolve_dtype("float16") is torch.float16
    assert _resolve_dtype("auto") in (torch.float32, torch.bfloat16)
    assert _resolve_dtype(torch.float64) is torch.float64
    assert _resolve_dtype(None) is None
    for name in MODEL_DTYPES:
        assert isinstance(_resolve_dtype(name), torch.dtype)
    with pytest.raises(ValueError, match="dtype must be one of"):
        _resolve_dtype("bf16")
