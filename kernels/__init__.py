"""Triton kernels of pope, shipped as ``pope.kernels``.

Only Triton code lives here; autograd wrappers and dispatch live in ``pope.ops``.
Import this package only after deciding on ``TRITON_INTERPRET`` (the interpreter must be
selected before the kernels are decorated).
"""
