r"""Compile the pope kernels for a GPU architecture on a machine without a GPU.

Why: the Triton interpreter (``TRITON_INTERPRET=1``) runs a kernel's Python semantics, not
the GPU compiler. Code that the compiler rejects passes every interpreter test and fails at
the first launch on a GPU. One example: a plain-float module global read inside
``@triton.jit`` code. Triton ships ``ptxas``, and compiling needs no driver, so this module
runs the **real launchers** (:func:`~pope.kernels.logprob.logprob_fwd`, ...) on small CPU
tensors while a stand-in driver reports a chosen target (``sm_80``, ``sm_90``, ...).

Each ``kernel[grid](...)`` launch is turned into a compile-only *warmup*, with exactly the
specialisation the launcher produces: argument dtypes, 16-byte alignment of pointers and
integers, and constexprs. Nothing is launched.

For each compiled kernel the report gives what can be known without running it:

* registers per thread;
* local memory per thread (non-zero means register spills);
* shared memory;
* whether the logits are read and written with 128-bit vector instructions
  (``ld.global.v4`` / ``st.global.v4`` in the PTX). The kernels are bandwidth-bound, so this is
  a precondition of reaching the copy-bandwidth targets. It holds only when the row stride
  and the vocabulary size are multiples of 16 elements.

Use ``python -m pope.kernels.aot --arch 80 90`` for a table, or :func:`compile_report`.
Run it in a process of its own, **without** ``TRITON_INTERPRET=1``: under the interpreter the
kernels are not compiled at all. On a machine that has a GPU the stand-in driver is also safe:
the compile caches of the kernels are swapped out while it is active and restored after.

This relies on Triton internals (``JITFunction.run`` and the active-driver slot). It was
tested with Triton 3.9.0. If those internals are missing, it raises a ``RuntimeError`` that
says so; other changes in them may surface as errors from Triton itself.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
import triton

__all__ = ["KernelReport", "compile_launches", "compile_report", "default_cases", "main"]

#: Architectures compiled by default: A100 (sm_80) and H100/H200 (sm_90).
DEFAULT_ARCHES = (80, 90)


class _TargetOnlyDriver:
    """Stand-in for Triton's active driver: answers the target queries and nothing else."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"pope.kernels.aot: Triton {triton.__version__} asked the stand-in driver for "
            f"{name!r}; this Triton version's launch path is not supported by the AOT check"
        )


@contextlib.contextmanager
def compile_launches(arch: int) -> Iterator[list[Any]]:
    """Within the block, kernel launches compile for ``sm_<arch>`` and do not run.

    Parameters
    ----------
    arch : int
        CUDA compute capability times ten (80: A100, 90: H100/H200, 100: B200).

    Yields
    ------
    list
        Receives one Triton ``CompiledKernel`` per launch, in launch order.
    """
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError(
            "pope.kernels.aot needs the compiler: unset TRITON_INTERPRET (under the interpreter "
            "the kernels are never compiled); run it in a separate process"
        )
    if not hasattr(driver, "_active") or not hasattr(JITFunction, "run"):
        raise RuntimeError(
            f"pope.kernels.aot: Triton {triton.__version__} has no JITFunction.run / "
            "driver._active; the AOT check supports Triton 3.x"
        )
    compiled: list[Any] = []
    swapped: dict[int, tuple[Any, Any]] = {}
    original_run = JITFunction.run

    def compile_only(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if id(self) not in swapped:  # fresh caches: no sm_<arch> binary leaks into real launches
            swapped[id(self)] = (self, self.device_caches)
            self.device_caches = collections.defaultdict(self.create_binder)
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(kernel)
        return kernel

    previous = driver._active
    driver.set_active(_TargetOnlyDriver(arch))
    JITFunction.run = compile_only
    try:
        yield compiled
    finally:
        JITFunction.run = original_run
        driver._active = previous
        for fn, caches in swapped.values():
            fn.device_caches = caches


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """Static facts about one compiled launch.

    Attributes
    ----------
    case : the launch case (see :func:`default_cases`).
    kernel : Triton kernel name. arch : compute capability times ten.
    num_warps : warps per program.
    registers : registers per thread. local_bytes : local memory per thread (spills if > 0).
    shared_bytes : static shared memory per program.
    vector_load, vector_store : 128-bit global loads / stores present in the PTX.
    """

    case: str
    kernel: str
    arch: int
    num_warps: int
    registers: int
    local_bytes: int
    shared_bytes: int
    vector_load: bool
    vector_store: bool


_RESOURCE = re.compile(r"REG:(\d+).*?LOCAL:(\d+)")


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, local bytes) of the single kernel in ``cubin``, from ``cuobjdump``."""
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        out = subprocess.run(
            [tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout
    match = _RESOURCE.search(out)
    if match is None:
        raise RuntimeError(f"cannot parse cuobjdump resource usage:\n{out}")
    return int(match.group(1)), int(match.group(2))


def _report(case: str, arch: int, kernel: Any) -> KernelReport:
    ptx = kernel.asm["ptx"]
    registers, local = _resource_usage(kernel.asm["cubin"])
    return KernelReport(
        case=case,
        kernel=kernel.name,
        arch=arch,
        num_warps=int(kernel.metadata.num_warps),
        registers=registers,
        local_bytes=local,
        shared_bytes=int(kernel.metadata.shared),
        vector_load=re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx) is not None,
        vector_store=re.search(r"st\.global(\.\w+)*\.v4\.b32", ptx) is not None,
    )


# ------------------------------------------------------------------------------ cases


def _logits(n: int, v: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    x = torch.zeros(n, v, dtype=dtype)
    y = torch.zeros(n, dtype=torch.int64)
    s = torch.zeros(n, dtype=torch.int64)
    return x, y, s


def _fwd(v: int, dtype: torch.dtype, *, count: bool = False) -> Callable[[], None]:
    def run() -> None:
        from pope.kernels.logprob import logprob_fwd

        logprob_fwd(*_logits(2, v, dtype), 1, count_tokens=count)

    return run


def _bwd(
    v: int, dtype: torch.dtype, *, gseq: bool = True, gtok: bool = False
) -> Callable[[], None]:
    def run() -> None:
        from pope.kernels.logprob import logprob_bwd

        x, y, s = _logits(2, v, dtype)
        g = torch.zeros(2, dtype=torch.float32)
        logprob_bwd(x, y, s, g, g[:1] if gseq else None, g if gtok else None)

    return run


def _weights(mode: str, token_mean: bool) -> Callable[[], None]:
    def run() -> None:
        from pope.kernels.pope_loss import pope_weights

        z = torch.zeros(3, dtype=torch.float32)
        kw = {"clip": 2.0} if mode == "truncate" else {"ppo_eps": 0.2} if mode == "ppo" else {}
        pope_weights(z, z, z, z if token_mean else None, 1.0, **kw)

    return run


def _linear(dtype: torch.dtype) -> Callable[[], None]:
    def run() -> None:
        from pope.kernels.linear_logprob import linear_logprob_bwd, linear_logprob_fwd

        h = torch.zeros(8, 64, dtype=dtype)
        w = torch.zeros(4096, 64, dtype=dtype)
        y = torch.zeros(8, dtype=torch.int64)
        s = torch.zeros(8, dtype=torch.int64)
        seq, lse = linear_logprob_fwd(h, w, y, s, 1, chunk_size=4)
        linear_logprob_bwd(h, w, y, s, lse, seq, chunk_size=4)

    return run


def default_cases(*, full: bool = True) -> dict[str, Callable[[], None]]:
    """Named launch cases covering every kernel and every constexpr branch.

    Parameters
    ----------
    full : also the fp16 variants and the 152k vocabulary (the report); ``False`` keeps one
        instance of each specialisation that changes the generated code (the test).

    Returns
    -------
    dict
        ``name -> callable`` that calls the launchers on CPU tensors.
    """
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if not full:
        dtypes.pop("fp16")
    vocabs = {"V=32000": 32000, "V=151936": 151936} if full else {"V=32000": 32000}
    cases: dict[str, Callable[[], None]] = {}
    for dname, dtype in dtypes.items():
        for vname, v in vocabs.items():
            cases[f"fwd {dname} {vname}"] = _fwd(v, dtype)
            cases[f"bwd {dname} {vname}"] = _bwd(v, dtype)
        cases[f"fwd {dname} V=50257 (unaligned)"] = _fwd(50257, dtype)
        cases[f"bwd {dname} V=50257 (unaligned)"] = _bwd(50257, dtype)
        cases[f"fwd {dname} V=100 (one block)"] = _fwd(100, dtype)
        cases[f"bwd {dname} V=100 (one block)"] = _bwd(100, dtype)
        cases[f"linear {dname}"] = _linear(dtype)
    cases["fwd fp32 V=32000 +counts"] = _fwd(32000, torch.float32, count=True)
    cases["bwd fp32 V=32000 +token grad"] = _bwd(32000, torch.float32, gtok=True)
    cases["bwd fp32 V=32000 token grad only"] = _bwd(32000, torch.float32, gseq=False, gtok=True)
    for mode in ("none", "truncate", "ppo"):
        for token_mean in (False, True):
            cases[f"weights {mode}{' token_mean' if token_mean else ''}"] = _weights(
                mode, token_mean
            )
    return cases


def compile_report(
    arches: tuple[int, ...] = DEFAULT_ARCHES, *, full: bool = True
) -> list[KernelReport]:
    """Compile every case of :func:`default_cases` for each architecture.

    Raises
    ------
    triton.compiler.errors.CompilationError
        A kernel does not compile for a target (the error names the kernel and the line).
    """
    reports: list[KernelReport] = []
    for arch in arches:
        for name, case in default_cases(full=full).items():
            with compile_launches(arch) as compiled:
                case()
            unique = {k.hash: k for k in compiled}  # a chunked case launches the same binary
            reports.extend(_report(name, arch, k) for k in unique.values())
    return reports


def _table(reports: list[KernelReport]) -> str:
    head = "| arch | case | kernel | warps | regs | spill B | smem B | 128-bit ld | 128-bit st |"
    rows = [head, "|" + "---|" * 9]
    for r in reports:
        rows.append(
            f"| sm_{r.arch} | {r.case} | {r.kernel} | {r.num_warps} | {r.registers} | "
            f"{r.local_bytes} | {r.shared_bytes} | {'yes' if r.vector_load else 'no'} | "
            f"{'yes' if r.vector_store else 'no'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m pope.kernels.aot``: compile for the given architectures and print a table."""
    parser = argparse.ArgumentParser(
        prog="python -m pope.kernels.aot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHES))
    parser.add_argument("--quick", action="store_true", help="the reduced case list of the tests")
    parser.add_argument("--json", help="also write the reports to this JSON file")
    args = parser.parse_args(argv)
    reports = compile_report(tuple(args.arch), full=not args.quick)
    print(f"Triton {triton.__version__}, torch {torch.__version__}")
    print(_table(reports))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dataclasses.asdict(r) for r in reports], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
