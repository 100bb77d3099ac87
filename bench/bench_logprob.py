#!/usr/bin/env python
r"""Benchmark the fused sequence log-prob / POPE-loss kernels against torch baselines.

For ``N`` tokens and vocabulary ``V`` (default ``N = 16384``, ``V`` in {32000, 128256,
151936}, bf16 and fp32), forward and forward+backward, providers:

* ``pope_kernel``: the raw Triton launcher (:func:`pope.kernels.logprob.logprob_fwd`), forward
  only: the kernel alone, without validation;
* ``pope``: :func:`pope.ops.sequence_logprob` (validation + kernel; fwd+bwd via autograd);
* ``pope_inplace``: the same with ``inplace_backward=True`` (no gradient buffer);
* ``pope_loss`` / ``pope_loss_inplace``: :func:`pope.ops.pope_loss` with PPO clipping;
* ``eager``: the torch reference (fp32 ``log_softmax`` + ``gather`` + ``index_add``);
* ``compile``: ``torch.compile`` of the same reference;
* ``trl_loop``: a row-looped selective log-softmax in the style of TRL (rows of ``T`` tokens;
  ``gather - logsumexp`` for fp32, per-row ``log_softmax`` + ``gather`` for 16-bit inputs).

Timings are ``triton.testing.do_bench`` medians (and p20/p80) in ms. Effective bandwidth
counts the logits traffic of an ideal implementation: forward = one read of the ``N x V``
logits, forward+backward = two reads + one write; it is reported in GB/s and as a fraction
of a device-to-device copy (read + write) measured in the same run. Peak memory is
``torch.cuda.max_memory_allocated`` during one call, minus what was allocated before it
(the logits themselves are not counted).

``--linear`` adds the chunked hidden-state path (:func:`pope.ops.linear_sequence_logprob`)
against materialising the logits with a matmul (``H = 4096``, ``V = 128256``, bf16).

Needs a CUDA device; ``--smoke`` instead runs a tiny case on the CPU through the Triton
interpreter, to check the script itself (no timings worth reading).

Usage::

    python bench/bench_logprob.py [--out DIR] [--vocab 32000 128256] [--dtypes bf16]
    python bench/bench_logprob.py --smoke
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
QUANTILES = [0.5, 0.2, 0.8]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run through the interpreter")
    p.add_argument("--out", type=Path, default=None, help="folder for CSV/JSON results")
    p.add_argument("--tokens", type=int, default=16384, help="N (default 16384)")
    p.add_argument("--seq-len", type=int, default=1024, help="T of a trl_loop row")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256, 151936])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    p.add_argument("--providers", nargs="+", default=None, help="subset of providers")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms)")
    p.add_argument("--linear", action="store_true", help="also benchmark the chunked LM-head path")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- baselines


def trl_style_selective_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, seq_len: int
) -> torch.Tensor:
    """Per-token log-probs, looping over rows of ``seq_len`` tokens (caps peak memory).

    fp32/fp64: ``z[y] - logsumexp(z)`` per row; 16-bit: ``log_softmax`` in the input dtype
    per row, then ``gather`` (a decomposed logsumexp is inaccurate in bf16). Masked targets
    must be replaced by a valid id beforehand.
    """
    out = []
    for start in range(0, logits.shape[0], seq_len):
        rows = logits[start : start + seq_len]
        y = targets[start : start + seq_len, None]
        if rows.dtype in (torch.float32, torch.float64):
            out.append((rows.gather(-1, y) - torch.logsumexp(rows, dim=-1, keepdim=True))[:, 0])
        else:
            out.append(torch.log_softmax(rows, dim=-1).gather(-1, y)[:, 0])
    return torch.cat(out).float()


def trl_sequence_logprob(logits, targets, seq_index, num_seqs, seq_len):
    mask = targets != -100
    tok = trl_style_selective_log_softmax(logits, torch.where(mask, targets, 0), seq_len)
    tok = torch.where(mask, tok, torch.zeros_like(tok))
    return torch.zeros(num_seqs, device=logits.device).index_add(0, seq_index, tok)


# ------------------------------------------------------------------------------- harness


def make_inputs(n: int, v: int, dtype: torch.dtype, device: str, seq_len: int):
    g = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(n, v, device=device, generator=g, dtype=torch.float32) * 2).to(dtype)
    targets = torch.randint(0, v, (n,), device=device, generator=g)
    targets[:: max(1, seq_len // 4)] = -100  # some masked (prompt) tokens
    num_seqs = max(1, n // 512)
    seq_index = torch.arange(n, device=device) * num_seqs // n
    return logits, targets, seq_index, num_seqs


def providers(seq_len: int, smoke: bool) -> dict[str, dict[str, Callable | None]]:
    """name -> {"fn": f(x, y, si, S, log_logging, advantages) -> tensor, "bwd": has a
    backward, "fwd": worth timing forward-only (default True)}."""
    from pope.kernels import logprob as K

    from pope import ops, ops_reference

    def pope_loss_fn(inplace: bool):
        def f(x, y, si, s, ll, adv):
            return ops.pope_loss(
                x, y, si, s, ll, adv, ppo_eps=0.2, inplace_backward=inplace, backend="triton"
            ).loss

        return f

    table: dict[str, dict] = {
        "pope_kernel": {"fn": lambda x, y, si, s, *_: K.logprob_fwd(x, y, si, s)[0], "bwd": False},
        "pope": {
            "fn": lambda x, y, si, s, *_: ops.sequence_logprob(x, y, si, s, backend="triton"),
            "bwd": True,
        },
        "pope_inplace": {
            "fn": lambda x, y, si, s, *_: ops.sequence_logprob(
                x, y, si, s, inplace_backward=True, backend="triton"
            ),
            "bwd": True,
            "fwd": False,  # identical forward to "pope"
        },
        "pope_loss": {"fn": pope_loss_fn(False), "bwd": True},
        "pope_loss_inplace": {"fn": pope_loss_fn(True), "bwd": True, "fwd": False},
        "eager": {
            "fn": lambda x, y, si, s, *_: ops_reference.sequence_logprob(x, y, si, s),
            "bwd": True,
        },
        "trl_loop": {
            "fn": lambda x, y, si, s, *_: trl_sequence_logprob(x, y, si, s, seq_len),
            "bwd": True,
        },
    }
    if not smoke:
        compiled = torch.compile(ops_reference.sequence_logprob, dynamic=False)
        table["compile"] = {"fn": lambda x, y, si, s, *_: compiled(x, y, si, s), "bwd": True}
    return table


def bench_ms(fn: Callable[[], object], args: argparse.Namespace, grad_to_none=None):
    """(median, p20, p80) in ms."""
    if args.smoke:
        fn()
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms, ms
    import triton.testing

    return tuple(
        triton.testing.do_bench(
            fn, warmup=args.warmup, rep=args.rep, grad_to_none=grad_to_none, quantiles=QUANTILES
        )
    )


def peak_extra_mb(fn: Callable[[], object]) -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbps(nbytes: int, args: argparse.Namespace, device: str) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), args)[0]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def run_logits_benchmarks(args: argparse.Namespace, device: str) -> list[dict]:
    from pope import ops_reference

    rows: list[dict] = []
    table = providers(args.seq_len, args.smoke)
    names = args.providers or list(table)
    for v in args.vocab:
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            x0, y, si, s = make_inputs(args.tokens, v, dtype, device, args.seq_len)
            nbytes = x0.numel() * x0.element_size()
            copy_bw = copy_bandwidth_gbps(nbytes, args, device)
            gold = ops_reference.sequence_logprob(x0, y, si, s)
            # logging log-probs near the policy's own: weights ~ 1, PPO clips some sequences
            extra = (
                gold + 0.1 * torch.randn(s, device=device),
                torch.linspace(-1, 1, s, device=device),
            )
            for name in names:
                spec = table[name]
                for mode in args.modes:
                    if mode == "fwd" and not spec.get("fwd", True):
                        continue
                    if mode == "fwd_bwd" and not spec["bwd"]:
                        continue
                    row = {
                        "provider": name, "mode": mode, "N": args.tokens, "V": v,
                        "dtype": dname, "copy_GBps": round(copy_bw, 1),
                    }  # fmt: skip
                    try:
                        inputs = (x0, y, si, s, *extra)
                        restore = name.endswith("_inplace")
                        row.update(measure(spec["fn"], mode, inputs, nbytes, args, gold, restore))
                    except torch.cuda.OutOfMemoryError:
                        row["error"] = "OOM"
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(format_row(row), flush=True)
            del x0, gold
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def measure(fn, mode, inputs, nbytes, args, gold, restore=False) -> dict:
    """Time (and check, forward) one provider; ``restore``: the backward is in place."""
    x0, rest = inputs[0], inputs[1:]
    if mode == "fwd":
        with torch.no_grad():
            out = fn(x0, *rest)
            err = None
            if out.dim() == 1:  # sequence log-probs: check them against the reference
                err = (out - gold).abs().max().item() / max(1.0, gold.abs().max().item())
            call = lambda: fn(x0, *rest)  # noqa: E731
            ms = bench_ms(call, args)
            mem = peak_extra_mb(call)
        traffic = nbytes
    else:
        x = x0.clone().requires_grad_(True)
        g = torch.ones(gold.shape[0], device=x.device)

        def call():
            if restore:
                x.data.copy_(x0)
            # A view, as model logits are a non-leaf: a gradient arriving at a leaf directly
            # would be copied by autograd (AccumulateGrad), hiding the in-place saving.
            out = fn(x.view_as(x), *rest)
            out.backward(g if out.dim() == 1 else None)

        call()
        err = None
        ms = bench_ms(call, args, grad_to_none=[x])
        if restore:
            # An in-place backward leaves the gradient in x; each repetition first restores the
            # logits (a D2D copy), whose separately measured time is subtracted here.
            copy_ms = bench_ms(lambda: x.data.copy_(x0), args)
            ms = tuple(a - b for a, b in zip(ms, copy_ms))
        x.grad = None
        mem = peak_extra_mb(call)
        x.grad = None
        del x
        traffic = 3 * nbytes
    med, p20, p80 = ms
    gbps = traffic / (med * 1e-3) / 1e9
    return {
        "ms": round(med, 4),
        "ms_p20": round(p20, 4),
        "ms_p80": round(p80, 4),
        "GBps": round(gbps, 1),
        "frac_copy": None,
        "peak_extra_MB": None if mem is None else round(mem, 1),
        "max_rel_err": err,
    }


def run_linear_benchmark(args: argparse.Namespace, device: str) -> list[dict]:
    from pope import ops

    if args.smoke:
        n, h, v = 32, 16, 300
    else:
        n, h, v = min(args.tokens, 8192), 4096, 128256
    dtype = torch.bfloat16 if not args.smoke else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, h, device=device, generator=g).to(dtype)
    weight = (torch.randn(v, h, device=device, generator=g) / h**0.5).to(dtype)
    y = torch.randint(0, v, (n,), device=device, generator=g)
    s = max(1, n // 512)
    si = torch.arange(n, device=device) * s // n
    rows = []
    variants = {
        "pope_linear_chunked": lambda hh, ww: ops.linear_sequence_logprob(
            hh, ww, y, si, s, backend="triton"
        ),
        "matmul+pope": lambda hh, ww: ops.sequence_logprob(hh @ ww.t(), y, si, s, backend="triton"),
        "matmul+eager": lambda hh, ww: ops.sequence_logprob(hh @ ww.t(), y, si, s, backend="torch"),
    }
    flops = {"fwd": 2 * n * h * v, "fwd_bwd": 6 * n * h * v}
    for name, fn in variants.items():
        for mode in args.modes:
            row = {"provider": name, "mode": mode, "N": n, "H": h, "V": v, "dtype": str(dtype)}
            try:
                if mode == "fwd":
                    with torch.no_grad():
                        call = lambda fn=fn: fn(hidden, weight)  # noqa: E731
                        ms = bench_ms(call, args)
                        mem = peak_extra_mb(call)
                else:
                    hh = hidden.clone().requires_grad_(True)
                    ww = weight.clone().requires_grad_(True)

                    def call(fn=fn, hh=hh, ww=ww):
                        fn(hh, ww).sum().backward()

                    ms = bench_ms(call, args, grad_to_none=[hh, ww])
                    hh.grad = ww.grad = None
                    mem = peak_extra_mb(call)
                    del hh, ww
                row.update(
                    ms=round(ms[0], 3),
                    TFLOPs=round(flops[mode] / (ms[0] * 1e-3) / 1e12, 1),
                    peak_extra_MB=None if mem is None else round(mem, 1),
                )
            except torch.cuda.OutOfMemoryError:
                row["error"] = "OOM"
                torch.cuda.empty_cache()
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in row.items() if v is not None)


def environment() -> dict:
    import triton

    info = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except OSError:
        pass
    return info


def write_results(out: Path, env: dict, rows: list[dict], linear_rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_logprob.json").write_text(
        json.dumps({"environment": env, "logits": rows, "linear": linear_rows}, indent=1)
    )
    for name, data in (("bench_logprob.csv", rows), ("bench_linear_logprob.csv", linear_rows)):
        if not data:
            continue
        keys = sorted({k for r in data for k in r}, key=lambda k: list(data[0]).index(k)
                      if k in data[0] else 99)  # fmt: skip
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(data)
    print(f"results written to {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        if not torch.cuda.is_available():
            # must happen before pope.kernels is imported (kernels are decorated at import)
            os.environ["TRITON_INTERPRET"] = "1"
        args.tokens, args.seq_len, args.vocab = 32, 16, [300]
        args.dtypes = ["fp32", "bf16"]
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        if not torch.cuda.is_available():
            print(
                "bench_logprob: no CUDA device found; the benchmarks need a GPU "
                "(run with --smoke for a tiny CPU check of the script through the interpreter)",
                file=sys.stderr,
            )
            return 2
        device = "cuda"
    env = environment()
    print(format_row(env), flush=True)
    rows = run_logits_benchmarks(args, device)
    for r in rows:
        if "GBps" in r and r.get("copy_GBps"):
            r["frac_copy"] = round(r["GBps"] / r["copy_GBps"], 3)
    linear_rows = run_linear_benchmark(args, device) if (args.linear or args.smoke) else []
    if args.smoke:
        bad = [
            r for r in rows
            if r["provider"].startswith("pope") and (r.get("max_rel_err") or 0.0) > 1e-4
        ]  # fmt: skip
        if bad or any("error" in r for r in rows + linear_rows):
            print("smoke: FAILED", bad, file=sys.stderr)
            return 1
        print("smoke: ok")
    if args.out is not None:
        write_results(args.out, env, rows, linear_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
