"""pope: pluralistic off-policy evaluation and alignment of LLMs.

Main entry points: :class:`LoggedFeedback` (the log), :func:`evaluate` (POPE relevance,
diversity and total with intervals), :func:`compare` (two policies on one log, paired), the
baseline estimators in :mod:`pope.estimators`, and the coverage helpers :func:`coverage`,
:func:`coverage_entropy`, :func:`diversity_reward`.

``import pope`` stays light (NumPy only); torch is imported by :mod:`pope.ops` on use.
Note that ``pope.coverage`` is the function; import the module's other names with
``from pope.coverage import ...``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pope import estimators
from pope.coverage import coverage, coverage_entropy, diversity_reward
from pope.data import LoggedFeedback
from pope.estimate import Diagnostics, Estimate, InsufficientDataWarning, WeightOverflowError
from pope.estimators.compare import PopeComparison, compare
from pope.estimators.pope import PopeEstimate, evaluate

__all__ = [
    "Diagnostics",
    "Estimate",
    "InsufficientDataWarning",
    "LoggedFeedback",
    "PopeComparison",
    "PopeEstimate",
    "WeightOverflowError",
    "__version__",
    "compare",
    "coverage",
    "coverage_entropy",
    "diversity_reward",
    "estimators",
    "evaluate",
]
