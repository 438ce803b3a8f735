"""The cost model's measurements on the user's data (``daskgmm plan --data``): the fit's own
coarse tasks (their read nodes, then the kernel on the rows read) run on every thread of the
cluster at once and timed inside the tasks; see :mod:`daskgmm.benchmarks.scale`."""

from __future__ import annotations

import math
import os
import time

import numpy as np


def cluster_shape(client) -> tuple[int, int]:
    """(workers, threads per worker) of a client's cluster (or of this machine without one)."""
    if client is None:
        from daskgmm._placement import total_threads

        return 1, total_threads(None)
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = [w.get("nthreads", 1) for w in workers.values()]
    return len(threads), max(threads, default=1)


def _timed_task(nodes, keys, params, *values):
    """In a task: run the read nodes of one coarse task (as its task runs them), then the kernel
    on its rows; ``(bytes, read seconds, rows, kernel seconds)``."""
    from daskgmm._kernels import multi_chunk_stats

    deps = dict(zip(keys, values))
    t = time.perf_counter()
    parts = [np.asarray(node({k: deps[k] for k in node.dependencies})) for node in nodes]
    X = parts[0] if len(parts) == 1 else np.concatenate(parts)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    if params is not None:
        multi_chunk_stats(X, [params])
    return X.nbytes, t_read, len(X), time.perf_counter() - t


def _read_graph(sources, picks: list[int], params=None):
    """A graph of one task per picked coarse task: its reads (the same nodes, the same opened
    array as the fit's graph), timed inside the task, so the dispatch is not counted."""
    from dask._task_spec import DataNode, List, Task, TaskRef
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    from daskgmm._graph import _deps

    name = f"gmm-plan-read-{time.perf_counter_ns()}"
    dsk = dict(sources.graph)
    keys = []
    for j, i in enumerate(picks):
        nodes = list(sources.x[i])
        deps = sorted({k for n in nodes for k in _deps(n)}, key=str)
        key = (name, j)
        dsk[key] = Task(
            key,
            _timed_task,
            DataNode(None, nodes),
            DataNode(None, deps),
            DataNode(None, params),
            *map(TaskRef, deps),
        )
        keys.append(key)
    dsk[name] = Task(name, list, List(*map(TaskRef, keys)))
    return Delayed(name, HighLevelGraph.from_collections(name, dsk, dependencies=[]), layer=name)


def open_data_array(data, array: str | None = None):
    """The dask array a fit reads from ``data``: a dask array as it is, a Zarr array as a fit
    wraps it (``da.from_zarr``), a path (member ``array`` of a group there) opened as a fit opens it."""
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    if isinstance(data, (str, os.PathLike)):
        from daskgmm._storage import open_zarr_array

        data = open_zarr_array(os.fspath(data), array)[0]
    return da.from_zarr(data)


def time_tasks(
    client, data, array=None, span: int = 1, params=None, budget: float = 2.0, rounds: int = 5
) -> dict:
    """Run the fit's own coarse tasks on ``data`` (a dask array or a Zarr path): every thread at
    once, each task reading its ``span`` chunks with the fit's read nodes (the data opened as a
    fit's graph opens it, consecutive reads merged into one read of their span), then, with
    ``params`` (:class:`~daskgmm._gaussian.EStepParams`), running the kernel on its rows, each
    part timed inside the task (the dispatch is not counted). A first round, one task per
    thread, warms the workers up (imports, the opened array, the page cache) and sizes the
    rounds: tasks spread evenly over the pass, about ``budget`` seconds per thread, the whole
    pass at most. That round runs once untimed, then ``rounds`` times timed: the steady state of
    a fit's iterations after its first (measured here: the first round over the same tasks was
    10-25% slower than the next ones); each rate is the median over the timed rounds, as a fit's
    seconds per iteration are a median, so one round slowed by another job does not set it
    (measured: a one-round read rate taken while another job started over-predicted two
    read-bound cells of the validation grid by a third). Returns ``read_rate`` (bytes per second
    per thread) and, with ``params``, ``kernel_per_row`` (kernel seconds per row, its fixed cost
    per call included) and ``rows``."""
    import dask

    from daskgmm._graph import task_groups, task_sources

    X = open_data_array(data, array)
    blocks = X.to_delayed(optimize_graph=False).ravel()
    sources = task_sources(blocks, None, task_groups(len(blocks), span))
    n = len(sources)
    slots = max(1, math.prod(cluster_shape(client)))

    def spread(count):
        count = max(1, min(count, n))
        return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})

    def run(picks):
        g = _read_graph(sources, picks, params)
        if client is None:
            return dask.compute(g, scheduler="threads", num_workers=slots)[0]
        return client.compute(g, sync=True)

    warm = run(spread(slots)[::-1])
    per_task = max(float(np.median([r + k for _, r, _, k in warm])), 1e-6)
    picks = spread(slots * max(1, int(budget / per_task)))
    run(picks)  # the first round over the picks is still ~20% slower than the next ones
    rates, per_row = [], []
    for _ in range(rounds):
        timed = run(picks)
        nbytes, t_read, rows, t_kernel = (float(sum(t[i] for t in timed)) for i in range(4))
        rates.append(nbytes / max(t_read, 1e-9))
        per_row.append(t_kernel / max(rows, 1))
    out = {"read_rate": float(np.median(rates)), "tasks": len(timed), "rows": int(rows)}
    if params is not None:
        out["kernel_per_row"] = float(np.median(per_row))
    return out


def read_rate_per_thread(client, data, array=None, span: int = 1) -> float:
    """Bytes per second one thread reads ``data`` as a fit's tasks read it (:func:`time_tasks`)."""
    return time_tasks(client, data, array, span)["read_rate"]


def measure_data(client, data, array, span: int, params, c_row: float, c_task: float) -> tuple[float, float]:
    """``(read_rate, c_row)`` from the fit's own tasks on ``data`` (:func:`time_tasks`): the read
    rate, and the kernel's cost per row on rows just read, with every thread reading or computing
    as in a pass (``c_row`` as given where the sample has fewer rows than one task per thread
    of 1,000 rows)."""
    out = time_tasks(client, data, array, span, params)
    if out["rows"] >= 1_000 * out["tasks"]:
        c_row = max(out["kernel_per_row"] - c_task * out["tasks"] / out["rows"], 0.0)
    return out["read_rate"], c_row


__all__ = ["cluster_shape", "measure_data", "open_data_array", "read_rate_per_thread", "time_tasks"]
