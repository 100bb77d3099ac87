"""Interval maths: moved to :mod:`pope.intervals` (below the estimates, so that nothing imports
upwards); this module re-exports it under the old path."""

from __future__ import annotations

from pope.intervals import *  # noqa: F403
from pope.intervals import __all__  # noqa: F401
