"""The fused kernel's limit on this machine (``daskgmm bench``, columns "limit s/iter" and "% limit").

One full-covariance EM iteration of the fused kernel (:mod:`daskgmm._kernels`) is, per block
of rows, two matrix products and one log-sum-exp:

* ``G @ F`` (K × P times P × N, with P = D(D+1)/2 + D + 1 design rows): 2·N·K·P flops;
* ``F @ respᵀ``: the same count again;
* N·K exponentials.

So the kernel does ``4·N·K·(D(D+1)/2 + D + 1)`` flops, the count of the issue, exactly (the
other work is not counted: building the design matrix F, the max, subtraction, sum and
scaling passes of the log-sum-exp, moving the moments to the centres, the reduction, the
M-step). Its *limit* is the time of those flops at the machine's matrix-multiply rate plus
the time of those exponentials at the machine's ``np.exp`` rate, both of the compute dtype and
on all cores, measured in the same run (:func:`measure_rates`)::

    limit s/iter = 4·N·K·P / GEMM rate + N·K / exp rate

"% limit" is ``100 · limit / measured s/iter``: 100% would be a kernel doing nothing but its
products at the peak of a large square product, and its exponentials at the rate of one
large ``np.exp``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: the issue's targets, per iteration against scikit-learn at 500,000×16, K=16, full covariances
TARGET_SHAPE = (500_000, 16, 16)
TARGETS = {"float64": 20.0, "float32": 40.0}


def kernel_flops(n: int, d: int, k: int) -> float:
    """Flops of one full-covariance iteration of the fused kernel: 4·N·K·(D(D+1)/2 + D + 1)."""
    return 4.0 * n * k * (d * (d + 1) / 2 + d + 1)


def limit_seconds(n: int, d: int, k: int, gemm_flops: float, exp_rate: float) -> float:
    """Seconds of the kernel's flops at ``gemm_flops`` (flop/s) plus its N·K exponentials at
    ``exp_rate`` (exponentials/s)."""
    return kernel_flops(n, d, k) / gemm_flops + n * k / exp_rate


def gemm_rate(dtype=np.float64, n: int = 2048, repeats: int = 3) -> float:
    """Matrix-multiply rate (flop/s) of an n×n product of ``dtype`` on all cores (BLAS's
    default threads), best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def exp_rate(dtype=np.float64, size: int = 1 << 20, threads: int = 1, repeats: int = 3) -> float:
    """Exponentials per second of ``np.exp`` (in place, ``size`` values per thread) on
    ``threads`` threads at once, best of ``repeats``: each thread works on its own array, as
    each chunk task does (numpy releases the GIL inside the loop)."""
    # log-densities minus their maximum: negative values of a few units, as in the kernel
    src = [np.linspace(-4.0, 0.0, size, dtype=dtype) for _ in range(threads)]
    bufs = [np.empty_like(s) for s in src]

    def one(i):
        np.exp(src[i], out=bufs[i])

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))  # warm-up: pages touched, threads started
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(one, range(threads)))
            best = min(best, time.perf_counter() - t0)
    return threads * size / best


def measure_rates(cores: int, gemm_n: int = 2048, exp_size: int = 1 << 20) -> dict:
    """GEMM (flop/s, all cores) and exp (per second, one core and all cores) rates, per dtype."""
    out = {}
    for dt in ("float64", "float32"):
        out[dt] = {
            "gemm_flops": gemm_rate(np.dtype(dt), gemm_n),
            "exp_per_s_one_core": exp_rate(np.dtype(dt), exp_size, 1),
            "exp_per_s": exp_rate(np.dtype(dt), exp_size, cores),
        }
    return out


def best_rates(a: dict, b: dict) -> dict:
    """The better of two :func:`measure_rates` results, rate by rate (a busy moment at one of
    them does not lower the limit)."""
    return {dt: {key: max(a[dt][key], b[dt][key]) for key in a[dt]} for dt in a}


def add_limit(row: dict, rates: dict) -> None:
    """Set ``limit_s``, ``pct_limit`` and ``target`` of a benchmark row (full covariances only)."""
    row["limit_s"] = row["pct_limit"] = row["target"] = None
    if row["covariance_type"] != "full" or not row.get("daskgmm_s"):
        return
    r = rates[row["dtype"]]
    row["limit_s"] = limit_seconds(row["n"], row["d"], row["k"], r["gemm_flops"], r["exp_per_s"])
    row["pct_limit"] = 100.0 * row["limit_s"] / row["daskgmm_s"]
    at_target = (row["n"], row["d"], row["k"]) == TARGET_SHAPE and row["case"] in ("full", "float32")
    if at_target and row.get("speedup") is not None:
        goal = TARGETS[row["dtype"]]
        row["target"] = f"≥{goal:.0f}x {'met' if row['speedup'] >= goal else 'not met'}"


# --------------------------------------------------------------------------
# where the time goes: the kernel's phases, timed one by one
# --------------------------------------------------------------------------
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
    BLAS thread) with a clock between them; returns ``{"total_s", "chunk_stats_s", "block_rows",
    "phases": {name: seconds}}``, the best of ``repeats`` passes. ``chunk_stats_s`` is the
    kernel itself, timed without the clocks.
    """
    from threadpoolctl import threadpool_limits

    from daskgmm._gaussian import (
        EStepParams,
        compute_precision_cholesky,
        design_t,
        log_resp_and_norm_t,
        weighted_log_prob_t,
    )
    from daskgmm._kernels import _blocks, _Moments, block_rows, chunk_stats
    from daskgmm.benchmarks.kernel import make_data

    X, start = make_data(n, d, k, seed=seed)
    X = X.astype(dtype)
    prec_chol = compute_precision_cholesky(start["covariances"], "full")
    p = EStepParams(start["weights"], start["means"], prec_chol, "full", dtype)
    clock = time.perf_counter
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
    best["chunk_stats_s"] = kernel_s
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
        "| **chunk_stats, one thread** | "
        + " | ".join(f"**{1e9 * p['chunk_stats_s'] / p['n']:.0f} ns/row**" for p in profiles)
        + " |"
    )
    return "\n".join(lines)
