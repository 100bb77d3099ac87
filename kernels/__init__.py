"""Triton kernels of pope, shipped as ``pope.kernels``.

Only Triton code lives here: the kernels and their launchers (``logprob``, ``pope_loss``,
``linear_logprob``) and ``aot``, which compiles them for a GPU target without a GPU. Autograd
wrappers and dispatch live in ``pope.ops``. Import this package only after deciding on
``TRITON_INTERPRET`` (the interpreter must be selected before the kernels are decorated).
"""
