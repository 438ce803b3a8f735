"""The cost model of one EM iteration on a cluster (``daskgmm plan``).

One iteration is one graph: one task per group of chunks (:mod:`daskgmm._graph`), a
tree reduction, a gather, and the M-step on the driver. Its time is modelled as ::

    t_iter = t_fixed + waves · t_task + tasks · c_sched + levels · c_level + t_mstep
    t_task = rows_per_task · c_row + chunks_per_task · c_chunk + bytes_per_task / read_rate
    waves  = ceil(tasks / slots),  slots = workers · threads
    levels = ceil(log_split_every(tasks))

with the constants measured on the user's cluster by :func:`measure_constants`:

* ``c_row``: kernel seconds per row on one thread of a worker, for the K, D, covariance
  type and dtype asked, measured with *every* thread of every worker running the kernel at
  once (so cores shared between threads, or with other jobs, show in it);
* ``c_chunk``: the kernel's fixed cost per chunk (a 64-row chunk minus 64 rows' worth);
* ``read_rate``: bytes per second one thread reads from the store (``--data``) in spans of
  ``read_span`` chunks (a task reads its chunks as one span), all threads reading at once;
  in-memory data has no read term;
* ``c_sched``: scheduler seconds per task: the slope of the wall time of a pass-shaped graph
  of no-op tasks (tree reduction included) between two task counts;
* ``c_level``: the latency of one level of the reduction: a chain of dependent no-op tasks;
* ``t_fixed``: submitting a one-task graph that depends on the parameters and gathering its
  result (the parameters sent to a worker included);
* ``t_mstep``: the driver's share: M-step, precisions, the next iteration's prepared
  parameters and their token.

The terms add: on a cluster the scheduler and the reduction overlap the compute only in
part, and on a small machine they share its cores. :func:`predict` returns every term,
the dominant one, what to change, and the chunks per task that minimise the prediction.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

#: terms of the model, in the order they are printed
TERMS = ("kernel", "read", "scheduler", "reduction", "m-step", "fixed")

ADVICE = {
    "kernel": "the computation itself: more cores (workers x threads), float32 data (about 2x), or a "
    "cheaper covariance type (diag) for large D",
    "read": "reading the data: more workers (each reads its share), faster storage or a closer region, "
    "or hold the data in memory (persist=True) when the cluster's memory allows",
    "scheduler": "per-task scheduler cost: more storage chunks per task (daskgmm.chunks_per_task / "
    "--chunks-per-task) or larger chunks",
    "reduction": "the reduction tree's depth: a larger split_every (fewer levels)",
    "m-step": "the M-step on the driver (grows as K·D³ for full covariances): fewer components, "
    "diag covariances, or a faster driver machine",
    "fixed": "the fixed cost of submitting an iteration: more rows per iteration amortise it",
}


@dataclass
class Constants:
    """The model's constants, measured on one cluster for one (K, D, covariance type, dtype)."""

    n_components: int
    n_features: int
    covariance_type: str
    dtype: str
    c_row: float
    c_chunk: float
    read_rate: float | None
    c_sched: float
    c_level: float
    t_fixed: float
    t_mstep: float
    workers: int
    threads: int
    split_every: int = 16
    read_span: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------
# generated parameters and data
# --------------------------------------------------------------------------
def synthetic_params(k: int, d: int, covariance_type: str, seed: int = 0):
    """Weights, means, covariances and their Cholesky precisions of a K-component mixture."""
    from daskgmm._gaussian import compute_precision_cholesky

    rng = np.random.default_rng(seed)
    weights = np.full(k, 1.0 / k)
    means = rng.normal(scale=3.0, size=(k, d))
    cov = {
        "full": np.broadcast_to(np.eye(d), (k, d, d)).copy(),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[covariance_type]
    return weights, means, cov, compute_precision_cholesky(cov, covariance_type)


def synthetic_rows(n: int, means: np.ndarray, seed: int = 1, dtype="float64") -> np.ndarray:
    """``n`` rows drawn around ``means`` (unit variance), in ``dtype``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(means), size=n)
    return (means[labels] + rng.normal(size=(n, means.shape[1]))).astype(dtype)


def _estep(k, d, covariance_type, dtype):
    from daskgmm._gaussian import EStepParams

    w, m, _, pc = synthetic_params(k, d, covariance_type)
    return EStepParams(w, m, pc, covariance_type, np.dtype(dtype)), m


# --------------------------------------------------------------------------
# the measurements (functions that run on a worker are plain module functions)
# --------------------------------------------------------------------------
def time_kernel(k: int, d: int, covariance_type: str, dtype: str, rows: int) -> tuple[float, float]:
    """On this process, one core: (seconds per row, fixed seconds per chunk) of the kernel."""
    from daskgmm._kernels import multi_chunk_stats

    p, means = _estep(k, d, covariance_type, dtype)
    X = synthetic_rows(rows, means, dtype=dtype)

    def best(x, repeats):
        out = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            multi_chunk_stats(x, [p])
            out = min(out, time.perf_counter() - t)
        return out

    best(X[:256], 1)  # warm-up
    t = time.perf_counter()
    for _ in range(3):
        multi_chunk_stats(X, [p])
    c_row = (time.perf_counter() - t) / (3 * rows)
    small = best(X[:64], 20)
    return c_row, max(small - 64 * c_row, 0.0)


def read_chunks(path: str, array: str | None, first: int, count: int, span: int = 1) -> tuple[int, float]:
    """On a worker: read ``count`` spans of ``span`` consecutive row chunks of a Zarr array, one
    call per span (as a coarse task reads); (bytes, seconds)."""
    import zarr

    z = zarr.open_array(path, path=array, mode="r") if array else zarr.open_array(path, mode="r")
    rows = z.chunks[0]
    n_spans = max(1, -(-z.shape[0] // (rows * span)))
    nbytes = 0
    t = time.perf_counter()
    for j in range(count):
        i = (first + j) % n_spans
        nbytes += np.asarray(z[i * rows * span : (i + 1) * rows * span]).nbytes
    return nbytes, time.perf_counter() - t


def _noop(*args):
    return 0


def _sum(parts):
    return 0


def _pass_graph(n_tasks: int, params, split_every: int):
    """A graph shaped like a statistics pass: n no-op tasks on the parameters, a tree of sums."""
    from daskgmm._graph import map_reduce, shared

    p = shared(params, name=f"gmm-plan-params-{n_tasks}-{time.perf_counter_ns()}")
    return map_reduce(
        _noop, [(p, i) for i in range(n_tasks)], f"gmm-plan-{time.perf_counter_ns()}", split_every, _sum
    )


def _chain(n: int):
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    name = f"gmm-plan-chain-{time.perf_counter_ns()}"
    dsk = {(name, 0): (_noop, 0)}
    for i in range(1, n):
        dsk[(name, i)] = (_noop, (name, i - 1))
    return Delayed((name, n - 1), HighLevelGraph.from_collections(name, dsk, dependencies=[]), layer=name)


def _best_wall(make, repeats: int = 3) -> float:
    import dask

    out = math.inf
    for _ in range(repeats):
        g = make()
        t = time.perf_counter()
        dask.compute(g)
        out = min(out, time.perf_counter() - t)
    return out


def time_mstep(k: int, d: int, covariance_type: str, dtype: str) -> float:
    """Driver seconds per iteration: M-step, precisions, prepared parameters and their token."""
    from dask.base import tokenize

    from daskgmm._gaussian import EStepParams, compute_precision_cholesky, m_step
    from daskgmm._kernels import chunk_stats

    p, means = _estep(k, d, covariance_type, dtype)
    X = synthetic_rows(max(4 * k, 2000), means, dtype=dtype)
    stats = chunk_stats(X, p)
    out = math.inf
    for _ in range(3):
        t = time.perf_counter()
        nk, mu, cov = m_step(stats, p.stat_centers, 1e-6, covariance_type, np.dtype(dtype))
        pc = compute_precision_cholesky(cov, covariance_type)
        q = EStepParams(nk / nk.sum(), mu, pc, covariance_type, np.dtype(dtype))
        tokenize(nk, mu, pc)
        out = min(out, time.perf_counter() - t)
    del q
    return out


def cluster_shape(client) -> tuple[int, int]:
    """(workers, threads per worker) of a client's cluster (or of this machine without one)."""
    if client is None:
        from daskgmm._placement import total_threads

        return 1, total_threads(None)
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = [w.get("nthreads", 1) for w in workers.values()]
    return len(threads), max(threads, default=1)


def measure_constants(
    client,
    n_components: int,
    n_features: int,
    covariance_type: str = "full",
    dtype: str = "float64",
    data: str | None = None,
    array: str | None = None,
    split_every: int = 16,
    kernel_rows: int | None = None,
    read_span: int = 1,
) -> Constants:
    """Measure the model's constants on ``client``'s cluster (None: the local threaded scheduler)."""
    k, d = n_components, n_features
    w, t = cluster_shape(client)
    if kernel_rows is None:  # about 0.1 s of kernel at ~20 GFLOP/s
        m = d * (d + 1) // 2 + d + 1 if covariance_type in ("full", "tied") else 2 * d + 1
        kernel_rows = int(min(200_000, max(2_000, 0.1 * 2e10 / (4 * k * m + 1))))
    timings = _on_every_thread(client, time_kernel, k, d, covariance_type, dtype, kernel_rows)
    c_row, c_chunk = (float(v) for v in np.mean(timings, axis=0))
    read_rate = None
    if data is not None:
        read_rate = read_rate_per_thread(client, data, array, read_span)
    params, _ = _estep(k, d, covariance_type, dtype)
    n1, n2 = 16, 16 + 64 * max(w * t, 1)
    t1 = _best_wall(lambda: _pass_graph(n1, params, split_every), repeats=2)
    t2 = _best_wall(lambda: _pass_graph(n2, params, split_every), repeats=2)
    c_sched = max((t2 - t1) / (n2 - n1), 0.0)
    t_fixed = _best_wall(lambda: _pass_graph(1, params, split_every), repeats=5)
    chain = 30
    c_level = max((_best_wall(lambda: _chain(chain), repeats=2) - t_fixed) / (chain - 1), 0.0)
    t_mstep = time_mstep(k, d, covariance_type, dtype)
    return Constants(
        k,
        d,
        covariance_type,
        str(dtype),
        c_row,
        c_chunk,
        read_rate,
        c_sched,
        c_level,
        t_fixed,
        t_mstep,
        w,
        t,
        split_every,
        read_span,
    )


def _on_every_thread(client, fn, *args) -> list:
    """``fn(*args)`` on every thread of every worker at once (this process's threads without a client)."""
    if client is None:
        from concurrent.futures import ThreadPoolExecutor

        from daskgmm._placement import total_threads

        n = total_threads(None)
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda i: fn(*args), range(n)))
    workers = client.scheduler_info(n_workers=-1)["workers"]
    futs = [
        client.submit(fn, *args, pure=False, workers=[addr], allow_other_workers=False)
        for addr, info in workers.items()
        for _ in range(info.get("nthreads", 1))
    ]
    return client.gather(futs)


def read_rate_per_thread(client, path: str, array: str | None, span: int = 1, count: int = 4) -> float:
    """Bytes per second one thread reads, in spans of ``span`` chunks, every thread reading at once."""
    if client is None:
        results = [read_chunks(path, array, 0, count, span)]
    else:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        slots = [addr for addr, info in workers.items() for _ in range(info.get("nthreads", 1))]
        futs = [
            client.submit(read_chunks, path, array, i * count, count, span, pure=False, workers=[addr])
            for i, addr in enumerate(slots)
        ]
        results = client.gather(futs)
    return float(np.mean([b / max(s, 1e-9) for b, s in results]))


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------
def auto_chunks_per_task(d: int, dtype, n_chunks: int, chunk_rows: int) -> int:
    """What a fit picks with ``daskgmm.chunks_per_task="auto"`` (see :mod:`daskgmm._graph`)."""
    from daskgmm._graph import chunks_per_task

    return chunks_per_task("auto", [chunk_rows] * n_chunks, d * np.dtype(dtype).itemsize)


def predict(
    c: Constants,
    rows: int,
    chunk_rows: int,
    workers: int | None = None,
    threads: int | None = None,
    chunks_per_task: int | None = None,
    cores: int | None = None,
) -> dict:
    """Predicted seconds per iteration, term by term, with the dominant term and advice."""
    workers = workers or c.workers
    threads = threads or c.threads
    itemsize = np.dtype(c.dtype).itemsize
    n_chunks = -(-rows // chunk_rows)
    slots = max(1, min(workers * threads, cores or workers * threads))
    per = chunks_per_task or auto_chunks_per_task(c.n_features, c.dtype, n_chunks, chunk_rows)
    per = max(1, min(per, n_chunks))
    out = _terms(c, rows, chunk_rows, n_chunks, per, slots, itemsize)
    # the chunking that minimises the prediction (powers of two, and the automatic one)
    options = {per} | {2**i for i in range(0, max(1, n_chunks).bit_length() + 1) if 2**i <= n_chunks}
    best = min(options, key=lambda q: _terms(c, rows, chunk_rows, n_chunks, q, slots, itemsize)["seconds"])
    out.update(
        rows=rows,
        chunk_rows=chunk_rows,
        chunks=n_chunks,
        workers=workers,
        threads=threads,
        slots=slots,
        best_chunks_per_task=best,
        best_seconds=_terms(c, rows, chunk_rows, n_chunks, best, slots, itemsize)["seconds"],
        advice=ADVICE[out["dominant"]],
    )
    return out


def _terms(c: Constants, rows, chunk_rows, n_chunks, per, slots, itemsize) -> dict:
    tasks = -(-n_chunks // per)
    rows_per_task = min(per * chunk_rows, rows)
    waves = -(-tasks // slots)
    levels = math.ceil(math.log(tasks, c.split_every) - 1e-12) if tasks > 1 else 0
    bytes_per_task = rows_per_task * c.n_features * itemsize
    terms = {
        "kernel": waves * (rows_per_task * c.c_row + per * c.c_chunk),
        "read": waves * bytes_per_task / c.read_rate if c.read_rate else 0.0,
        "scheduler": tasks * c.c_sched,
        "reduction": levels * c.c_level,
        "m-step": c.t_mstep,
        "fixed": c.t_fixed,
    }
    return {
        "seconds": sum(terms.values()),
        "terms": terms,
        "dominant": max(terms, key=terms.get),
        "chunks_per_task": per,
        "tasks": tasks,
        "waves": waves,
        "levels": levels,
        "rows_per_task": rows_per_task,
    }


def format_prediction(c: Constants, pred: dict) -> str:
    """The human-readable report of one prediction."""
    lines = [
        f"constants (measured on {c.workers} worker(s) x {c.threads} thread(s); K={c.n_components}, "
        f"D={c.n_features}, {c.covariance_type}, {c.dtype}):",
        f"  c_row     {c.c_row * 1e9:12.1f} ns per row per thread, all threads busy (kernel)",
        f"  c_chunk   {c.c_chunk * 1e6:12.1f} us per chunk (kernel's fixed cost)",
        "  read_rate "
        + (
            f"{c.read_rate / 1e6:12.1f} MB/s per thread, spans of {c.read_span} chunk(s)"
            if c.read_rate
            else "           - (data in memory)"
        ),
        f"  c_sched   {c.c_sched * 1e6:12.1f} us per task (scheduler)",
        f"  c_level   {c.c_level * 1e3:12.2f} ms per reduction level",
        f"  t_fixed   {c.t_fixed * 1e3:12.2f} ms per iteration (submit and gather)",
        f"  t_mstep   {c.t_mstep * 1e3:12.2f} ms per iteration (driver)",
        f"prediction for {pred['rows']:,} rows in {pred['chunks']:,} chunks of {pred['chunk_rows']:,} rows, "
        f"{pred['chunks_per_task']} chunk(s) per task = {pred['tasks']:,} tasks on {pred['workers']} worker(s) x "
        f"{pred['threads']} thread(s) ({pred['slots']} running at once, {pred['waves']} wave(s), "
        f"{pred['levels']} reduction level(s)):",
    ]
    for name in TERMS:
        v = pred["terms"][name]
        lines.append(f"  {name:<10}{v:12.4f} s  {100 * v / pred['seconds']:5.1f}%")
    lines += [
        f"  total     {pred['seconds']:12.4f} s per iteration",
        f"dominant term: {pred['dominant']} — {pred['advice']}",
        f"best chunks per task for this chunking: {pred['best_chunks_per_task']} "
        f"(predicted {pred['best_seconds']:.4f} s per iteration)",
    ]
    return "\n".join(lines)


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


__all__ = [
    "ADVICE",
    "TERMS",
    "Constants",
    "format_prediction",
    "machine_cores",
    "measure_constants",
    "predict",
]
