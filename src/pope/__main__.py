"""``python -m pope``: the ``pope`` command (see :mod:`pope.cli`)."""

from __future__ import annotations

import sys

from pope.cli import main

if __name__ == "__main__":
    sys.exit(main())
