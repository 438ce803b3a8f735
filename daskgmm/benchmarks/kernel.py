"""The kernel benchmark (``daskgmm bench``): EM iterations of daskgmm against scikit-learn on the
same data, in one process. The command line is in :mod:`daskgmm.cli.bench`.

What is measured
----------------
* **Same data, same start.** One synthetic mixture per shape (seeded); both libraries
  start from the same ``weights_init``/``means_init``/``precisions_init`` and run
  ``max_iter=n`` iterations with ``tol=0``, so they do the same arithmetic.
* **scikit-learn seconds per iteration** = (``fit`` time − one ``score_samples`` pass) / n.
  ``fit`` runs n E+M steps plus one final E-step; ``score_samples`` is that final E-step
  (public API only, so the figure does not depend on private methods). scikit-learn runs
  twice, with one BLAS thread and with BLAS's default threads, and keeps its faster run
  (both are in the JSON: ``sklearn_s_by_blas``).
* **daskgmm seconds per iteration** = the mean of ``history_[i]["seconds"]`` over the n
  iterations (each one a full pass: graph, the default threaded scheduler, reduction and the
  M-step), after one untimed warm-up iteration; daskgmm too runs twice and keeps its faster
  run, as scikit-learn does, so that one run slowed by other jobs on a shared machine decides
  neither side.
* **GFLOP/s** counts 4·N·K·D² flops per full-covariance iteration (E-step and M-step,
  the count used in the issue); **% peak** divides by the float64 matrix-multiply rate
  on all cores measured in the same run (the best of measurements at its start, between
  the shapes and at its end). The kernel does about half of the counted flops (``x_i x_j`` is
  symmetric), so an effective rate above 100% of the peak is possible.
* **limit s/iter, % limit**: the kernel's own flops, 4·N·K·(D(D+1)/2+D+1), at the GEMM rate
  plus its N·K exponentials at the ``np.exp`` rate, both of the row's dtype and on all cores,
  measured in the same run (:mod:`daskgmm.benchmarks.limit`); % limit = limit / s/iter.
  Blocks that take the sparse moments (most responsibilities exactly 0, reported as a share
  of the blocks under the table) do the E-step's half of those flops and about D²/2
  multiply-adds per nonzero responsibility in place of the M-step's half, so on them the
  limit counts more work than the kernel does.
  **target**: the issue's speed-ups at 500,000×16, K=16 (≥20x float64, ≥40x float32).
* **Peak memory**: the largest resident-set size above the level before the call,
  sampled every 5 ms by a thread (psutil); the data itself is not counted. For daskgmm
  it is taken on the warm-up fit (one iteration), for scikit-learn on the timed fit.
* **max rel diff**: the largest ``|a − b| / max|b|`` over weights, means and covariances
  against scikit-learn's fit (or, on the float32 row, against daskgmm's float64 fit).
* **float32 speed-up**: float64 over float32 seconds, each the faster of two runs taken
  back to back (the float32 row shows its faster run).
* **Chunk overhead**: the same data and parameters with 1, 10, 100 and 1000 chunks; the
  fixed cost per chunk is the slope between the two largest counts, and the default
  chunking's share of an iteration is ``chunks × cost / seconds``. These rows run one task
  per chunk (``daskgmm.chunks_per_task=1``); coarse tasks (``daskgmm plan``) hide that cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import dask
import numpy as np

from daskgmm.benchmarks import CHUNK_COUNTS, QUICK_SHAPES
from daskgmm.benchmarks.limit import add_limit, best_rates, measure_rates
from daskgmm.datasets import make_mixture

logger = logging.getLogger("daskgmm")

COLUMNS = (
    ("case", "case"),
    ("n", "N"),
    ("d", "D"),
    ("k", "K"),
    ("covariance_type", "cov"),
    ("dtype", "dtype"),
    ("chunks", "chunks"),
    ("sklearn_s", "sklearn s/iter"),
    ("daskgmm_s", "daskgmm s/iter"),
    ("speedup", "speed-up"),
    ("gflops", "GFLOP/s"),
    ("pct_peak", "% peak"),
    ("sklearn_mib", "sklearn MiB"),
    ("daskgmm_mib", "daskgmm MiB"),
    ("max_rel_diff", "max rel diff"),
    ("limit_s", "limit s/iter"),
    ("pct_limit", "% limit"),
    ("target", "target"),
)


# --------------------------------------------------------------------------
# machine and reference rates
# --------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model, cores, numpy's BLAS, library versions and the load average now."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    blas = "unknown"
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            if lib.get("user_api") == "blas" and "numpy" in str(lib.get("filepath", "")):
                blas = f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')}, {lib.get('num_threads')} threads)"
                break
    import dask
    import sklearn

    from daskgmm import __version__ as daskgmm_version
    from daskgmm import _compiled
    from daskgmm._placement import kernel_setting

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    mem = float("nan")
    with contextlib.suppress(Exception):
        import psutil

        mem = psutil.virtual_memory().total / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "memory_gib": round(mem, 1),
        "blas": blas,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "dask": dask.__version__,
        "daskgmm": daskgmm_version,
        "kernel": _compiled.describe(kernel_setting()),
        "load": tuple(round(v, 2) for v in load),
    }


@contextlib.contextmanager
def memory_watch(interval: float = 0.005):
    """Yield a dict whose ``"peak_mib"`` is set, on exit, to the peak RSS growth (MiB)."""
    out = {"peak_mib": float("nan")}
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        yield out
        return
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield out
    finally:
        stop.set()
        th.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        out["peak_mib"] = (peak[0] - base) / 2**20


# --------------------------------------------------------------------------
# data and starting parameters
# --------------------------------------------------------------------------
def make_data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """A float64 sample of a K-component mixture and a shared starting point.

    Returns ``X`` (n, d) and ``start`` with ``weights``, ``means`` and ``covariances``
    (full): the true means moved by half a standard deviation, inflated covariances,
    uniform weights, so EM has real work to do. ``X`` is
    :func:`daskgmm.datasets.make_mixture` drawn from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    X, _, _, means, cov = make_mixture(
        n, d, k, rng, separation=5.0, cov_scale=0.5 / np.sqrt(d), ridge=0.2, matmul=True
    )
    sd = np.sqrt(np.einsum("kii->ki", cov))
    start = {
        "weights": np.full(k, 1.0 / k),
        "means": means + 0.5 * sd * rng.standard_normal((k, d)),
        "covariances": 1.5 * cov,
    }
    return X, start


def init_kwargs(start: dict, covariance_type: str) -> dict:
    """``weights_init``/``means_init``/``precisions_init`` of one covariance type."""
    cov = start["covariances"]
    if covariance_type == "full":
        prec = np.linalg.inv(cov)
    elif covariance_type == "tied":
        prec = np.linalg.inv(cov.mean(axis=0))
    elif covariance_type == "diag":
        prec = 1.0 / np.einsum("kii->ki", cov)
    else:
        prec = 1.0 / np.einsum("kii->ki", cov).mean(axis=1)
    return {"weights_init": start["weights"], "means_init": start["means"], "precisions_init": prec}


def max_rel_diff(a, b) -> float:
    """Largest ``|a − b| / max|b|`` over weights, means and covariances."""
    out = 0.0
    for name in ("weights_", "means_", "covariances_"):
        x = np.asarray(getattr(a, name), dtype=np.float64)
        y = np.asarray(getattr(b, name), dtype=np.float64)
        out = max(out, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)))
    return out


# --------------------------------------------------------------------------
# timing one library
# --------------------------------------------------------------------------
def time_sklearn_best(X: np.ndarray, k: int, covariance_type: str, init: dict, n_iter: int):
    """:func:`time_sklearn` with one BLAS thread and with BLAS's default threads: the faster
    run's seconds, memory and model, and ``{"1": s, "default": s}``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        one = time_sklearn(X, k, covariance_type, init, n_iter)
    default = time_sklearn(X, k, covariance_type, init, n_iter)
    best = min(one, default, key=lambda r: r[0])
    return (*best, {"1": one[0], "default": default[0]})


def time_sklearn(X: np.ndarray, k: int, covariance_type: str, init: dict, n_iter: int):
    """scikit-learn's seconds per iteration, its peak extra memory (MiB) and the fitted model."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    model = SkGMM(n_components=k, covariance_type=covariance_type, max_iter=n_iter, tol=0.0, **init)
    with memory_watch() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(X)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.score_samples(X)
        t_final = time.perf_counter() - t0
    return max(t_fit - t_final, 0.0) / n_iter, mem["peak_mib"], model


def time_daskgmm(
    X, k: int, covariance_type: str, init: dict, n_iter: int, chunk_size: int | None = None, repeats: int = 2
):
    """daskgmm's seconds per iteration (the mean of ``history_``, the best of ``repeats`` fits),
    peak extra memory (MiB), the model, chunks."""
    from daskgmm import GaussianMixture

    def make(max_iter):
        return GaussianMixture(
            n_components=k,
            covariance_type=covariance_type,
            max_iter=max_iter,
            tol=0.0,
            chunk_size=chunk_size,
            **init,
        )

    with warnings.catch_warnings():
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        with memory_watch() as mem:  # the first fit in this process also measures memory
            make(1).fit(X)  # warm-up: thread pool, BLAS, allocator
        seconds = np.inf
        for _ in range(repeats):
            model = make(n_iter)
            model.fit(X)
            seconds = min(seconds, float(np.mean([h["seconds"] for h in model.history_])))
    from daskgmm._input import to_dask

    n_chunks = len(to_dask(X, chunk_rows=chunk_size).data.chunks[0])
    return seconds, mem["peak_mib"], model, n_chunks


def sparse_block_share(X, model) -> float | None:
    """The share of the compiled kernel's blocks of ``X`` that take the sparse moments at
    ``model``'s fitted parameters (:func:`daskgmm._compiled.sparse_moments`: most
    responsibilities exactly 0); None where the compiled kernel does not run."""
    from daskgmm import _compiled
    from daskgmm._gaussian import EStepParams
    from daskgmm._placement import kernel_setting

    if kernel_setting() == "numpy" or not _compiled.available():
        return None
    p = EStepParams(model.weights_, model.means_, model.precisions_cholesky_, model.covariance_type, X.dtype)
    if p.covariance_type not in _compiled.SUPPORTED:
        return None
    before = _compiled.sparse_blocks
    _compiled.chunk_moments(X, p)
    return (_compiled.sparse_blocks - before) / -(-len(X) // _compiled.rows_per_block(p))


def full_flops(n: int, d: int, k: int) -> float:
    """Flops counted per full-covariance EM iteration: 4·N·K·D² (E-step and M-step)."""
    return 4.0 * n * k * d * d


def _row(case, n, d, k, ct, dtype, chunks, sk=None, dg=None, peak=None, diff=None, sk_mem=None, dg_mem=None):
    row = {
        "case": case,
        "n": n,
        "d": d,
        "k": k,
        "covariance_type": ct,
        "dtype": dtype,
        "chunks": chunks,
        "sklearn_s": sk,
        "daskgmm_s": dg,
        "speedup": (sk / dg) if (sk is not None and dg) else None,
        "gflops": None,
        "pct_peak": None,
        "sklearn_mib": sk_mem,
        "daskgmm_mib": dg_mem,
        "max_rel_diff": diff,
    }
    if ct == "full" and dg:
        row["gflops"] = full_flops(n, d, k) / dg / 1e9
        if peak:
            row["pct_peak"] = 100.0 * row["gflops"] / peak
    return row


# --------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------
def run_benchmark(
    shapes: Sequence[tuple[int, int, int]] = QUICK_SHAPES,
    n_iter: int = 3,
    chunk_counts: Sequence[int] = CHUNK_COUNTS,
    sklearn_shapes: Sequence[int] | None = None,
    other_types: bool = True,
    float32: bool = True,
    seed: int = 0,
    gemm_n: int = 2048,
    progress: Callable[[str], None] | None = None,
    exp_size: int = 1 << 20,
) -> dict:
    """Run the benchmark; returns ``{"machine", "gemm_peak_gflops", "rows", "chunk_overhead", "seconds"}``.

    Parameters
    ----------
    shapes : sequence of (N, D, K)
        Full-covariance float64 cases, each followed by its float32 row. The first one also
        gets the other covariance types and the chunk-overhead rows.
    n_iter : int
        EM iterations timed per case.
    chunk_counts : sequence of int
        Numbers of chunks for the overhead rows (empty: none).
    sklearn_shapes : sequence of int or None
        Indices into ``shapes`` where scikit-learn also runs (None: all).
    other_types, float32 : bool
        Add the tied/diag/spherical rows and the float32 rows.
    seed : int
        Seed of the generated data.
    gemm_n : int
        Size of the matrix products that measure the GEMM rates.
    progress : callable or None
        Called with a line of text before each case.
    exp_size : int
        Values per thread of the ``np.exp`` that measures the exp rate.
    """
    say = progress or (lambda msg: logger.info(msg))
    t_start = time.perf_counter()
    info = machine_info()
    from daskgmm import _compiled
    from daskgmm._placement import kernel_setting

    # the compiled kernel's first call (compile, or load from numba's disk cache) before any
    # timing or memory watch: a fit's iterations never pay it again in this process
    first_call = _compiled.warm() if kernel_setting() != "numpy" and _compiled.available() else None
    say(f"GEMM and exp rates: {gemm_n}x{gemm_n} matmul, np.exp of {exp_size} values per core ...")
    rates_start = measure_rates(info["cores"], gemm_n, exp_size)
    peak = rates_start["float64"]["gemm_flops"] / 1e9
    rates_between = rates_start
    rows: list[dict] = []
    overhead: dict = {}
    sk_idx = set(range(len(shapes))) if sklearn_shapes is None else set(sklearn_shapes)
    for i, (n, d, k) in enumerate(shapes):
        X, start = make_data(n, d, k, seed=seed + i)
        types = ("full", "tied", "diag", "spherical") if (i == 0 and other_types) else ("full",)
        full_model = None
        for ct in types:
            init = init_kwargs(start, ct)
            say(f"N={n} D={d} K={k} {ct} float64 ...")
            dg_s, dg_mem, dg_model, nchunks = time_daskgmm(X, k, ct, init, n_iter)
            sk_s = sk_mem = diff = None
            if i in sk_idx:
                sk_s, sk_mem, sk_model, sk_by = time_sklearn_best(X, k, ct, init, n_iter)
                diff = max_rel_diff(dg_model, sk_model)
            rows.append(
                _row(f"{ct}", n, d, k, ct, "float64", nchunks, sk_s, dg_s, peak, diff, sk_mem, dg_mem)
            )
            if sk_s is not None:
                rows[-1]["sklearn_s_by_blas"] = sk_by
            if ct == "full":
                full_model = (dg_s, dg_model, sk_s, nchunks)
                rows[-1]["sparse_share"] = sparse_block_share(X, dg_model)
        if float32:  # every shape: the kernel's limit is asked in both dtypes
            say(f"N={n} D={d} K={k} full float32 ...")
            init = init_kwargs(start, "full")
            X32 = X.astype(np.float32)
            s32, m32, model32, nchunks = time_daskgmm(X32, k, "full", init, n_iter)
            # the float64/float32 speed-up pairs runs taken back to back and keeps each dtype's
            # faster run, so that the load drifting on a shared machine between the first
            # float64 case and this row does not decide the ratio
            s64_again = time_daskgmm(X, k, "full", init, n_iter)[0]
            share32 = sparse_block_share(X32, model32)
            del X32
            row = _row(
                "float32",
                n,
                d,
                k,
                "full",
                "float32",
                nchunks,
                full_model[2],
                s32,
                peak,
                max_rel_diff(model32, full_model[1]),
                None,
                m32,
            )
            row["speedup_vs_float64"] = min(full_model[0], s64_again) / s32
            row["sparse_share"] = share32
            rows.append(row)
        if i == 0 and chunk_counts:
            init = init_kwargs(start, "full")
            times = {}
            for c in chunk_counts:
                say(f"N={n} D={d} K={k} full float64, {c} chunks ...")
                size = -(-n // c)
                # one task per chunk (no coarse tasks): these rows measure the fixed cost of a chunk
                with dask.config.set({"daskgmm.chunks_per_task": 1}):
                    s, mem, _, nchunks = time_daskgmm(X, k, "full", init, n_iter, chunk_size=size)
                times[nchunks] = s
                rows.append(
                    _row(
                        f"{c} chunks",
                        n,
                        d,
                        k,
                        "full",
                        "float64",
                        nchunks,
                        full_model[2],
                        s,
                        peak,
                        None,
                        None,
                        mem,
                    )
                )
            counts = sorted(times)
            if len(counts) >= 2:
                a, b = counts[-2], counts[-1]
                per_chunk = max((times[b] - times[a]) / (b - a), 0.0)
                default_chunks = full_model[3]
                overhead = {
                    "n": n,
                    "seconds_by_chunks": {str(c): times[c] for c in counts},
                    "per_chunk_seconds": per_chunk,
                    "default_chunks": default_chunks,
                    "default_overhead_fraction": default_chunks * per_chunk / full_model[0],
                }
        del X
        if i + 1 < len(shapes):  # between the shapes too: more chances of a quiet moment
            rates_between = best_rates(rates_between, measure_rates(info["cores"], gemm_n, exp_size))
    # the rates again at the end: the best of all, so that a busy moment at the start does
    # not inflate % peak and % limit (the first and last peaks are kept in the result)
    say("GEMM and exp rates again ...")
    rates_end = measure_rates(info["cores"], gemm_n, exp_size)
    rates = best_rates(rates_between, rates_end)
    peak_start, peak_end = peak, rates_end["float64"]["gemm_flops"] / 1e9
    peak = rates["float64"]["gemm_flops"] / 1e9
    for row in rows:
        if row["gflops"] is not None:
            row["pct_peak"] = 100.0 * row["gflops"] / peak
        add_limit(row, rates)
    return {
        "machine": info,
        "gemm_peak_gflops": peak,
        "gemm_peak_start_end_gflops": (peak_start, peak_end),
        "rates": rates,
        "load_end": tuple(round(v, 2) for v in os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
        "chunk_overhead": overhead,
        "n_iter": n_iter,
        "kernel_first_call_seconds": first_call,
        "seconds": time.perf_counter() - t_start,
    }


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def _fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key in ("sklearn_s", "daskgmm_s", "limit_s"):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if key == "speedup":
        return f"{v:.1f}x"
    if key in ("gflops", "pct_peak", "pct_limit"):
        return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
    if key in ("sklearn_mib", "daskgmm_mib"):
        return f"{v:.0f}" if np.isfinite(v) else "—"
    if key == "max_rel_diff":
        return f"{v:.0e}"
    if key == "n":
        return f"{v:,}"
    return str(v)


def format_table(result: dict) -> str:
    """The rows as a markdown table."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = (
        "|"
        + "|".join(
            "---" if key in ("case", "covariance_type", "dtype", "target") else "--:" for key, _ in COLUMNS
        )
        + "|"
    )
    lines = [head, sep]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_fmt(key, row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def rates_line(result: dict) -> str:
    """The measured rates behind "limit s/iter" (one line)."""
    parts = []
    for dt, r in result["rates"].items():
        parts.append(
            f"{dt}: GEMM {r['gemm_flops'] / 1e9:.0f} GFLOP/s, exp {r['exp_per_s'] / 1e9:.2f} G/s "
            f"({r['exp_per_s_one_core'] / 1e9:.2f} G/s on one core)"
        )
    return "Rates on all cores, measured in the same run (the limit's): " + "; ".join(parts) + "."


def format_report(result: dict, command: str = "daskgmm bench") -> str:
    """README-ready markdown: the machine, the table, the derived figures, how to reproduce."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; numpy {m['numpy']} with "
        f"{m['blas']}; Python {m['python']}, scikit-learn {m['scikit-learn']}, dask {m['dask']}, "
        f"daskgmm {m['daskgmm']}; per-chunk kernel: {m.get('kernel', 'numpy')}. Load average (1 min) at the start: {m['load'][0]}, at the end: "
        f"{(result.get('load_end') or ('?',))[0]}. float64 GEMM peak "
        f"measured in the same run: {result['gemm_peak_gflops']:.0f} GFLOP/s. "
        f"{result['n_iter']} EM iterations per case, default (threaded) scheduler.",
        "",
        rates_line(result),
        "",
        format_table(result),
        "",
    ]
    for row in result["rows"]:
        if "speedup_vs_float64" in row:
            lines.append(
                f"- float32 is {row['speedup_vs_float64']:.2f}x faster than float64 on N={row['n']:,}, "
                f"D={row['d']}, K={row['k']}; its parameters are within {row['max_rel_diff']:.0e} "
                "(relative) of the float64 fit (statistics accumulate in float64)."
            )
    shares = [
        f"{r['dtype']} {r['n']:,}×{r['d']} K={r['k']}: {100 * r['sparse_share']:.0f}%"
        for r in result["rows"]
        if r.get("sparse_share") is not None and r["case"] in ("full", "float32")
    ]
    if shares:
        lines.append(
            "- Blocks that take the sparse moments at the fitted parameters (most responsibilities "
            "exactly 0: the M-step adds each row to its components' buckets instead of the dense "
            f"product): {'; '.join(shares)}."
        )
    oh = result.get("chunk_overhead") or {}
    if oh:
        lines.append(
            f"- Fixed cost per chunk: {1e3 * oh['per_chunk_seconds']:.2f} ms per iteration; the default "
            f"chunking ({oh['default_chunks']} chunks for N={oh['n']:,}) loses "
            f"{100 * oh['default_overhead_fraction']:.1f}% of an iteration to it."
        )
    if result.get("kernel_first_call_seconds") is not None:
        lines.append(
            f"- The compiled kernel's first call in this process took {result['kernel_first_call_seconds']:.2f} s "
            "(numba compiles it, or loads it from its disk cache), before any timing."
        )
    lines.append(f"- Reproduce: `{command}` ({result['seconds']:.0f} s for this run).")
    return "\n".join(lines)
