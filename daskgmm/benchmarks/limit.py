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
