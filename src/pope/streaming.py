"""The evaluation pipeline under its former name: :mod:`pope.pipeline` (re-exported).

``pope.streaming`` was one module holding the whole pipeline; it is now the package
:mod:`pope.pipeline` (spec, prepare, stats, result, run...). The public names of
``pope.pipeline`` (``EvalSpec``, ``evaluate_logs``, ``evaluate_stream``, ``iter_raw_chunks``,
``map_partition``, ``merge``...) stay importable from here, and so do ``evaluate_ray`` and
``evaluate_spark`` of :mod:`pope.engines`.
"""

from __future__ import annotations

from pope import pipeline
from pope.pipeline import *  # noqa: F403  (the same public names)

__all__ = list(pipeline.__all__)
__getattr__ = pipeline.__getattr__
