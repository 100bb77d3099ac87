"""Shared test setup.

Without a CUDA device the Triton kernels run through the interpreter; the variable must be
set before any kernel module is imported (kernels are decorated at import time).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test (fixed seed: failures reproduce)."""
    return np.random.default_rng(20260924)


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    torch.manual_seed(0)
