"""The cost model of one EM iteration on a cluster (``daskgmm plan``).

One iteration is one graph: one task per group of chunks (:mod:`daskgmm._graph`: a task reads
its group's chunks, consecutive reads merged into one read of their span, and runs the kernel
ONCE on the group's rows), a tree reduction, a gather, and the M-step on the driver. Its time is
modelled as ::

    t_iter = t_fixed + max(busy · t_task + waves · c_wave, tasks · c_sched) + levels · c_level + t_mstep
    t_task = rows_per_task · c_row + c_task + bytes_per_task / read_rate
    busy   = max(waves / sharing, tasks / slots)
    waves  = ceil(tasks / slots),  slots = workers · threads
    levels = ceil(log_split_every(tasks))

The busiest thread runs ``waves`` tasks one after the other, each followed by the worker's
hand-over to the next (``c_wave``). ``t_task`` is measured with every thread busy; where the
threads share cores (``sharing`` > 1) a thread runs faster while others are idle (the last,
partial wave), but the pass never takes less than an even share of all the tasks
(``tasks / slots`` task-times): ``busy`` is that number of task-times. Without shared cores
(``sharing`` = 1) ``busy = waves``. The scheduler bounds the pass instead when it cannot hand
out tasks that fast (``tasks · c_sched``, many tiny tasks). The constants are measured on the
user's cluster by :func:`measure_constants`:

* ``c_row``: kernel seconds per row on one thread of a worker, for the K, D, covariance
  type and dtype asked, measured with *every* thread of every worker running the kernel at
  once (so cores shared between threads, or with other jobs, show in it); with ``--data``,
  measured on the rows the fit's own tasks have just read (below);
* ``sharing``: the kernel's cost per row with every thread busy against one thread while
  every other thread is idle (1 where each thread has a core of its own);
* ``c_task``: the kernel's fixed cost per call (a 64-row block minus 64 rows' worth): one per
  task, whatever the number of storage chunks the task reads (their per-chunk cost is a
  reading cost, in ``read_rate``);
* ``read_rate``: bytes per second one thread reads from the store (``--data``): the fit's own
  tasks (spans of ``read_span`` chunks, read with the fit's read nodes on the data opened as a
  fit opens it), run on every thread at once after a warm-up round, each task timing its read
  and then its kernel; the per-chunk cost of a store (many tiny chunks) is in it; in-memory
  data has no read term;
* ``c_wave`` and ``t_fixed``: a pass-shaped graph (tasks on the shared parameters, the tree
  reduction) of a few waves of tasks that keep a thread busy for a known time ``s``: ``c_wave``
  is the mean gap between consecutive tasks of one thread in the cluster's task stream (the
  worker hands over the next task, reports the last), and ``t_fixed`` the graph's wall time
  less ``waves · (s + c_wave) + levels · c_level`` (submitting the graph, the parameters
  reaching every worker, the first tasks' start, gathering the result);
* ``c_sched``: scheduler seconds per task: the slope of the wall time of a pass-shaped graph
  of no-op tasks between two task counts (the scheduler's throughput);
* ``c_level``: the latency of one level of the reduction: a chain of dependent no-op tasks;
* ``t_mstep``: the driver's share: M-step, precisions, the next iteration's prepared
  parameters and their token.

The terms add (``scheduler`` is the part of ``tasks · c_sched`` the threads' time does not
cover). :func:`predict` returns every term, the dominant one, what to change, and the chunks
per task that minimise the prediction.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from daskgmm.benchmarks.scale_data import cluster_shape, measure_data

#: terms of the model, in the order they are printed
TERMS = ("kernel", "read", "dispatch", "scheduler", "reduction", "m-step", "fixed")

ADVICE = {
    "kernel": "the computation itself: more cores (workers x threads), float32 data (about 2x), or a "
    "cheaper covariance type (diag) for large D",
    "read": "reading the data: more workers (each reads its share), faster storage or a closer region, "
    "or hold the data in memory (persist=True) when the cluster's memory allows",
    "dispatch": "the hand-over between consecutive tasks of a thread: fewer, larger tasks (more storage "
    "chunks per task: daskgmm.chunks_per_task / --chunks-per-task), or more threads (fewer waves)",
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
    c_task: float
    read_rate: float | None
    c_sched: float
    c_wave: float
    c_level: float
    t_fixed: float
    t_mstep: float
    workers: int
    threads: int
    split_every: int = 16
    read_span: int = 1
    #: how much slower the kernel runs with every thread busy than on one thread alone (>= 1:
    #: the threads share cores, with each other or with other jobs)
    sharing: float = 1.0
    #: measured on a distributed cluster: data held there runs about one task per thread
    #: (:func:`daskgmm._graph.leaves_per_task`)
    distributed: bool = False

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


def estep_params(k, d, covariance_type, dtype):
    """E-step parameters of a synthetic mixture, set to run the kernel a fit would run now
    (the dask config ``daskgmm.kernel``), and its means."""
    from daskgmm._gaussian import EStepParams
    from daskgmm._placement import kernel_setting

    w, m, _, pc = synthetic_params(k, d, covariance_type)
    p = EStepParams(w, m, pc, covariance_type, np.dtype(dtype))
    p.kernel = kernel_setting()
    return p, m


# --------------------------------------------------------------------------
# the measurements (functions that run on a worker are plain module functions)
# --------------------------------------------------------------------------
def time_kernel(k: int, d: int, covariance_type: str, dtype: str, rows: int) -> tuple[float, float]:
    """On this process, one core: (seconds per row, fixed seconds per call) of the kernel."""
    from daskgmm._kernels import multi_chunk_stats

    p, means = estep_params(k, d, covariance_type, dtype)
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


def _noop(*args):
    return 0


def _busy(seconds, *args):
    """Keep this thread busy for ``seconds`` of wall time, as a kernel does: in BLAS products
    (one BLAS thread, the GIL released), not in Python code holding the GIL."""
    from daskgmm._kernels import single_threaded_blas

    a = np.ones((128, 128))
    with single_threaded_blas():
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            a.dot(a)
    return 0


def _sum(parts):
    return 0


def _pass_graph(n_tasks: int, params, split_every: int, seconds: float = 0.0):
    """A graph shaped like a statistics pass: n tasks on the parameters (no-ops, or busy for
    ``seconds``), a tree of sums."""
    from daskgmm._graph import map_reduce, shared

    p = shared(params, name=f"gmm-plan-params-{n_tasks}-{time.perf_counter_ns()}")
    if seconds:
        args = [(seconds, p, i) for i in range(n_tasks)]
        func = _busy
    else:
        args, func = [(p, i) for i in range(n_tasks)], _noop
    return map_reduce(func, args, f"gmm-plan-{time.perf_counter_ns()}", split_every, _sum)


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


def _levels(tasks: int, split_every: int) -> int:
    return math.ceil(math.log(tasks, split_every) - 1e-12) if tasks > 1 else 0


def time_waves(
    client, params, slots: int, split_every: int, c_level: float, seconds: float = 0.03, waves: int = 4
) -> tuple[float, float]:
    """``(c_wave, t_fixed)`` from a pass-shaped graph (tasks on the shared parameters, the tree
    reduction) of ``waves · slots`` tasks that keep a thread busy for ``seconds``, as a kernel
    does. ``c_wave``: the mean gap between consecutive tasks of one thread, from the cluster's
    task stream (none on the threaded scheduler: its threads take the next task at once).
    ``t_fixed``: the graph's wall time less what the model's other terms give it,
    ``waves · (seconds + c_wave) + levels · c_level`` (threads that start late take fewer
    tasks, as in a pass, so the spread of the first tasks' starts is not all in it)."""
    import contextlib

    stream = contextlib.nullcontext()
    if client is not None:
        from distributed import get_task_stream

        stream = get_task_stream(client)
    n = waves * slots
    with stream as ts:
        wall = _best_wall(lambda: _pass_graph(n, params, split_every, seconds), repeats=2)
    runs: dict = {}
    for t in ts.data if ts is not None else ():
        key = t.get("key")
        name = str(key[0] if isinstance(key, tuple) else key)
        if not name.startswith("gmm-plan-") or "combine" in name or "params" in name:
            continue
        for s in t.get("startstops", ()):
            if s.get("action") == "compute":
                runs.setdefault((name, t.get("worker"), t.get("thread")), []).append((s["start"], s["stop"]))
    gaps = [b[0] - a[1] for v in runs.values() for a, b in zip(sorted(v), sorted(v)[1:])]
    c_wave = max(float(np.mean(gaps)), 0.0) if gaps else 0.0
    t_fixed = max(wall - waves * (seconds + c_wave) - _levels(n, split_every) * c_level, 0.0)
    return c_wave, t_fixed


def time_mstep(k: int, d: int, covariance_type: str, dtype: str) -> float:
    """Driver seconds per iteration: M-step, precisions, prepared parameters and their token."""
    from dask.base import tokenize

    from daskgmm._gaussian import EStepParams, compute_precision_cholesky, m_step
    from daskgmm._kernels import chunk_stats

    p, means = estep_params(k, d, covariance_type, dtype)
    X = synthetic_rows(max(4 * k, 2000), means, dtype=dtype)
    stats = chunk_stats(X, p)
    out = math.inf
    for _ in range(5):  # the best of 5: a shared driver's one-off stalls are not the M-step's
        t = time.perf_counter()
        nk, mu, cov = m_step(stats, p.stat_centers, 1e-6, covariance_type, np.dtype(dtype))
        pc = compute_precision_cholesky(cov, covariance_type)
        q = EStepParams(nk / nk.sum(), mu, pc, covariance_type, np.dtype(dtype))
        tokenize(nk, mu, pc)
        out = min(out, time.perf_counter() - t)
    del q
    return out


def measure_constants(
    client,
    n_components: int,
    n_features: int,
    covariance_type: str = "full",
    dtype: str = "float64",
    data=None,
    array: str | None = None,
    split_every: int = 16,
    kernel_rows: int | None = None,
    read_span: int = 1,
) -> Constants:
    """Measure the model's constants on ``client``'s cluster (None: the local threaded scheduler).

    ``data``: a Zarr path (``array``: a member of the group there), a Zarr array or a dask array,
    read as a fit reads it in tasks of ``read_span`` chunks (with the kernel on the rows read:
    :func:`measure_data`); None for data held in memory (no read term).
    """
    k, d = n_components, n_features
    w, t = cluster_shape(client)
    if kernel_rows is None:  # about 0.1 s of kernel at ~20 GFLOP/s
        m = d * (d + 1) // 2 + d + 1 if covariance_type in ("full", "tied") else 2 * d + 1
        kernel_rows = int(min(200_000, max(2_000, 0.1 * 2e10 / (4 * k * m + 1))))
    t_mstep0 = time_mstep(k, d, covariance_type, dtype)
    timings = _on_every_thread(client, time_kernel, k, d, covariance_type, dtype, kernel_rows)
    c_row, c_task = (float(v) for v in np.mean(timings, axis=0))
    alone = _on_one_thread(client, time_kernel, k, d, covariance_type, dtype, kernel_rows)[0]
    sharing = max(c_row / max(alone, 1e-12), 1.0)
    params, _ = estep_params(k, d, covariance_type, dtype)
    read_rate = None
    if data is not None:
        read_rate, c_row = measure_data(client, data, array, read_span, params, c_row, c_task)
    n1, n2 = 16, 16 + 64 * max(w * t, 1)
    t1 = _best_wall(lambda: _pass_graph(n1, params, split_every), repeats=2)
    t2 = _best_wall(lambda: _pass_graph(n2, params, split_every), repeats=2)
    c_sched = max((t2 - t1) / (n2 - n1), 0.0)
    t_one = _best_wall(lambda: _pass_graph(1, params, split_every), repeats=5)
    chain = 30
    c_level = max((_best_wall(lambda: _chain(chain), repeats=2) - t_one) / (chain - 1), 0.0)
    c_wave, t_fixed = time_waves(client, params, max(w * t, 1), split_every, c_level)
    # the best of two moments (before the cluster's graphs and after): under other jobs' load the
    # driver was seen stalling ~0.1 s through a whole batch of repeats, which the fits did not show
    t_mstep = min(t_mstep0, time_mstep(k, d, covariance_type, dtype))
    return Constants(
        k,
        d,
        covariance_type,
        str(dtype),
        c_row,
        c_task,
        read_rate,
        c_sched,
        c_wave,
        c_level,
        t_fixed,
        t_mstep,
        w,
        t,
        split_every,
        read_span,
        sharing,
        client is not None,
    )


def _on_one_thread(client, fn, *args):
    """``fn(*args)`` on one thread of one worker, every other thread idle (this thread without a client)."""
    if client is None:
        return fn(*args)
    addr = next(iter(client.scheduler_info(n_workers=-1)["workers"]))
    return client.submit(fn, *args, pure=False, workers=[addr], allow_other_workers=False).result()


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
    from daskgmm._graph import fold_levels, leaves_per_task

    leaves = -(-n_chunks // per)  # the pass's groups of chunks
    bundle = 1  # leaves per task: held on a cluster, about one task per thread
    if c.read_rate is None and c.distributed:
        bundle = leaves_per_task(leaves, slots, per * chunk_rows * c.n_features * itemsize, c.split_every)
    tasks = -(-leaves // bundle)
    rows_per_task = min(per * bundle * chunk_rows, rows)
    waves = -(-tasks // slots)
    levels = max(_levels(leaves, c.split_every) - fold_levels(bundle, c.split_every), 0)
    bytes_per_task = rows_per_task * c.n_features * itemsize
    # task-times (at the speed of every thread busy) the busiest thread computes: its ``waves``
    # tasks, faster when fewer threads run (sharing > 1), but not less than an even share
    busy = max(waves / c.sharing, tasks / slots)
    kernel = busy * (rows_per_task * c.c_row + bundle * c.c_task)  # the kernel runs once per leaf
    read = busy * bytes_per_task / c.read_rate if c.read_rate else 0.0
    dispatch = waves * c.c_wave
    terms = {
        "kernel": kernel,
        "read": read,
        "dispatch": dispatch,
        # the scheduler's throughput bounds the pass only where the threads' time does not cover it
        "scheduler": max(tasks * c.c_sched - (kernel + read + dispatch), 0.0),
        "reduction": levels * c.c_level,
        "m-step": c.t_mstep,
        "fixed": c.t_fixed,
    }
    return {
        "seconds": sum(terms.values()),
        "terms": terms,
        "dominant": max(terms, key=terms.get),
        "chunks_per_task": per,
        "leaves_per_task": bundle,
        "tasks": tasks,
        "waves": waves,
        "busy_tasks": busy,
        "levels": levels,
        "rows_per_task": rows_per_task,
    }


def format_prediction(c: Constants, pred: dict) -> str:
    """The human-readable report of one prediction."""
    lines = [
        f"constants (measured on {c.workers} worker(s) x {c.threads} thread(s); K={c.n_components}, "
        f"D={c.n_features}, {c.covariance_type}, {c.dtype}):",
        f"  c_row     {c.c_row * 1e9:12.1f} ns per row per thread, all threads busy (kernel)",
        f"  c_task    {c.c_task * 1e6:12.1f} us per task (kernel's fixed cost, once per task)",
        f"  sharing   {c.sharing:12.2f} x  (kernel with every thread busy against one thread alone)",
        "  read_rate "
        + (
            f"{c.read_rate / 1e6:12.1f} MB/s per thread, tasks of {c.read_span} chunk(s), all threads reading"
            if c.read_rate
            else "           - (data in memory)"
        ),
        f"  c_wave    {c.c_wave * 1e3:12.2f} ms per wave (hand-over between consecutive tasks of a thread)",
        f"  c_sched   {c.c_sched * 1e6:12.1f} us per task (scheduler throughput)",
        f"  c_level   {c.c_level * 1e3:12.2f} ms per reduction level",
        f"  t_fixed   {c.t_fixed * 1e3:12.2f} ms per iteration (submit, first tasks' start, gather)",
        f"  t_mstep   {c.t_mstep * 1e3:12.2f} ms per iteration (driver)",
        f"prediction for {pred['rows']:,} rows in {pred['chunks']:,} chunks of {pred['chunk_rows']:,} rows, "
        f"{pred['chunks_per_task']} chunk(s) per task"
        + (f" held {pred['leaves_per_task']} groups to a task" if pred.get("leaves_per_task", 1) > 1 else "")
        + f" = {pred['tasks']:,} tasks on {pred['workers']} worker(s) x "
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
