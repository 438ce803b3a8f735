"""Where the fused kernel's time goes (``daskgmm bench --profile``): the numpy kernel's phases
timed one by one, and the whole compiled kernel (:mod:`daskgmm._compiled`, one call per chunk whose
phases cannot be clocked apart) next to it.

The limit these phases are compared with is in :mod:`daskgmm.benchmarks.limit`.
"""

from __future__ import annotations

import time

import numpy as np

from daskgmm import _compiled
from daskgmm._gaussian import (
    EStepParams,
    compute_precision_cholesky,
    design_t,
    log_resp_and_norm_t,
    weighted_log_prob_t,
)
from daskgmm._kernels import _blocks, _Moments, block_rows, chunk_stats
from daskgmm.benchmarks.kernel import make_data

PHASES = (
    ("design", "design matrix F (centre, x_i·x_j rows)"),
    ("gemm_logdens", "G @ F (log-densities)"),
    ("logsumexp", "max, subtract, exp, sum, log, scale"),
    ("gemm_stats", "F @ respᵀ (statistics)"),
    ("recentre", "moments moved to the centres (once per chunk)"),
    ("other", "Python between the calls, buffers"),
)


def phase_profile(n: int, d: int, k: int, dtype="float64", seed: int = 0, repeats: int = 3) -> dict:
    """Time the phases of the fused kernel on one chunk of ``n`` rows, on one thread.

    Runs the steps of :func:`daskgmm._kernels.chunk_stats` (same functions, same blocks, one
    BLAS thread) with a clock between them (this thread's CPU time, so that a loaded machine
    disturbs the shares less than a wall clock would); returns ``{"total_s", "chunk_stats_s", "block_rows",
    "phases": {name: seconds}, "compiled_s"}``, the best of ``repeats`` passes. ``chunk_stats_s`` is the
    numpy kernel itself, timed without the clocks; ``compiled_s`` the compiled kernel on the same
    chunk (None where numba cannot import).
    """
    from threadpoolctl import threadpool_limits

    X, start = make_data(n, d, k, seed=seed)
    X = X.astype(dtype)
    prec_chol = compute_precision_cholesky(start["covariances"], "full")
    p = EStepParams(start["weights"], start["means"], prec_chol, "full", dtype)
    p.kernel = "numpy"
    clock = time.thread_time  # CPU time of this thread: another process's load counts less
    best: dict | None = None
    with threadpool_limits(1, user_api="blas"):
        kernel_s = float("inf")
        for _ in range(repeats):
            t0 = clock()
            chunk_stats(X, p)
            kernel_s = min(kernel_s, clock() - t0)
        for _ in range(repeats):
            ph = {name: 0.0 for name, _ in PHASES[:-1]}
            t_start = clock()
            acc = _Moments(p)
            for lo, hi, F, W, center in _blocks(n, p):
                with np.errstate(invalid="ignore", over="ignore"):
                    t0 = clock()
                    xt = design_t(X[lo:hi], p, F, center)
                    t1 = clock()
                    wlp = weighted_log_prob_t(F, xt, p, W)
                    t2 = clock()
                    resp, log_norm = log_resp_and_norm_t(wlp)
                    float(log_norm.sum(dtype=np.float64))
                    t3 = clock()
                acc.add(F, xt, resp, None)
                t4 = clock()
                ph["design"] += t1 - t0
                ph["gemm_logdens"] += t2 - t1
                ph["logsumexp"] += t3 - t2
                ph["gemm_stats"] += t4 - t3
            t0 = clock()
            acc.into({"nk": 0.0, "u": 0.0, "s2": 0.0})
            ph["recentre"] = clock() - t0
            total = clock() - t_start
            ph["other"] = max(total - sum(ph.values()), 0.0)
            if best is None or total < best["total_s"]:
                best = {"total_s": total, "phases": ph}
        compiled_s = None
        if _compiled.available():
            pc = EStepParams(start["weights"], start["means"], prec_chol, "full", dtype)
            pc.kernel = "numba"
            chunk_stats(X[:4], pc)  # compile, or load from numba's disk cache
            compiled_s = float("inf")
            for _ in range(repeats):
                t0 = clock()
                chunk_stats(X, pc)
                compiled_s = min(compiled_s, clock() - t0)
    best["chunk_stats_s"] = kernel_s
    best["compiled_s"] = compiled_s
    best["block_rows"] = block_rows(k, d, "full", np.dtype(dtype).itemsize)
    best.update(n=n, d=d, k=k, dtype=str(np.dtype(dtype)))
    return best


def format_profile(profiles: list[dict]) -> str:
    """Markdown table: one column per profile, one row per phase (ns per row and share)."""
    head = "| phase | " + " | ".join(f"{p['n']:,}×{p['d']} K={p['k']} {p['dtype']}" for p in profiles) + " |"
    lines = [head, "|---|" + "--:|" * len(profiles)]
    for name, title in PHASES:
        cells = []
        for p in profiles:
            s = p["phases"][name]
            cells.append(f"{1e9 * s / p['n']:.0f} ns ({100 * s / p['total_s']:.0f}%)")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append(
        "| **numpy kernel, one thread** | "
        + " | ".join(f"**{1e9 * p['chunk_stats_s'] / p['n']:.0f} ns/row**" for p in profiles)
        + " |"
    )
    if all(p.get("compiled_s") is not None for p in profiles):
        lines.append(
            "| **compiled kernel (numba, the default), one thread** | "
            + " | ".join(f"**{1e9 * p['compiled_s'] / p['n']:.0f} ns/row**" for p in profiles)
            + " |"
        )
    return "\n".join(lines)
