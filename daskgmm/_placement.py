"""Where the data lives during a fit: held in (cluster) memory or streamed every pass.

:func:`plan_data` applies ``persist=`` against the memory budget of the active
scheduler and logs its choice on the ``daskgmm`` logger.
"""

from __future__ import annotations

import logging
import warnings

import dask

logger = logging.getLogger("daskgmm")


#: ``persist="auto"`` holds the data in memory when it takes at most this share of it
PERSIST_FRACTION = 0.5


def active_client():
    """The ``distributed.Client`` that ``dask.compute`` uses now, or None (local scheduler)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    try:
        uses_client = dask.base.get_scheduler() == client.get
    except Exception:  # pragma: no cover - defensive
        uses_client = False
    return client if uses_client else None


def cluster_threads(client) -> int:
    """The threads of the cluster's workers, added up (0 while it has no workers), asked of the
    scheduler now: ``Client.scheduler_info()`` answers from the client's copy, refreshed every
    few seconds, which the validation benchmark once found empty on a running cluster."""
    return sum(client.nthreads().values())


def total_threads(client=None) -> int:
    """Threads that run tasks: the cluster's total, or the local scheduler's."""
    if client is not None:
        try:
            return max(1, cluster_threads(client))
        except Exception:  # pragma: no cover - defensive
            return 1
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT)


def chunks_per_task_setting():
    """The dask config ``daskgmm.chunks_per_task``: ``"auto"`` (default) or an int >= 1."""
    return dask.config.get("daskgmm.chunks_per_task", "auto")


#: dask's housekeeping intervals for a cluster whose scheduler, nannies and workers share one
#: machine's cores (the local clusters daskgmm starts), against distributed's defaults of 20 ms,
#: 500 ms and 10 ms. Measured on 2 cores, an idle 2-worker ``LocalCluster`` took 12.5-15.9% of
#: one core with the defaults (mostly the event-loop health check in the driver's scheduler and
#: nannies, and the workers' profiler) and 2.6-3.5% with these; a distributed EM iteration
#: there shares those cores with it (README, "How it scales"). The
#: health check still warns of a blocked event loop (after ``distributed.admin.tick.limit``), the
#: dashboard's profile still fills (10 samples a second per thread), its system plots update
#: every 2 s.
HOUSEKEEPING = {
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.interval": "100ms",
}


def housekeeping_config() -> dict:
    """The :data:`HOUSEKEEPING` settings that this process's dask config leaves at distributed's
    defaults (a value the user set wins), or none when the dask config ``daskgmm.housekeeping`` is
    false. For ``dask.config.set`` around the start of a local cluster: its scheduler and nannies
    read them when they start, and each nanny hands them to its worker process."""
    import copy

    import distributed  # noqa: F401 - registers distributed's defaults

    if not dask.config.get("daskgmm.housekeeping", True):
        return {}
    defaults: dict = {}
    for d in dask.config.defaults:
        dask.config.update(defaults, copy.deepcopy(d))
    return {
        key: value
        for key, value in HOUSEKEEPING.items()
        if dask.config.get(key, None) == dask.config.get(key, None, config=defaults)
    }


def housekeeping_environ(config: dict) -> dict:
    """``config`` as the environment variables that ``dask scheduler`` / ``dask worker`` read."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(v) for key, v in config.items()}


#: values of the dask config ``daskgmm.kernel`` (:func:`kernel_setting`)
KERNELS = ("auto", "numba", "numpy")


def kernel_setting() -> str:
    """The dask config ``daskgmm.kernel``: which kernel computes a chunk's statistics.

    ``"auto"`` (default): the compiled kernel (:mod:`daskgmm._compiled`) where numba imports, the
    numpy kernel elsewhere; ``"numba"``: the same, but an error where numba cannot import;
    ``"numpy"``: always the numpy kernel. Read on the driver; the parameters of every pass carry it.
    """
    from daskgmm import _compiled

    value = dask.config.get("daskgmm.kernel", "auto")
    if value not in KERNELS:
        raise ValueError(
            f"daskgmm.kernel must be one of {', '.join(map(repr, KERNELS))}, got {value!r}: for example "
            "dask.config.set({'daskgmm.kernel': 'numpy'}), or DASK_DASKGMM__KERNEL=numpy in the environment."
        )
    if value == "numba" and not _compiled.available():
        raise _compiled.unavailable_error()
    return value


def merge_for_cluster(X, split_every: int = 16):
    """``X`` with consecutive chunks merged before it is held on a cluster, and the rows of the
    statistics pass's *leaves* in each of its chunks (None: each held chunk is one leaf).

    Held chunks stay where they were computed, so a task that read several of them would move
    data between workers every iteration; instead each held chunk is one task's rows. A leaf is
    one automatic group of storage chunks (:func:`daskgmm._graph.chunks_per_task`, the dask
    config ``daskgmm.chunks_per_task``), the spans the pass groups on a local scheduler. A held
    chunk bundles a power of two of leaves, about one chunk per thread of the cluster
    (:func:`daskgmm._graph.leaves_per_task`), and its task works leaf by leaf, so the result is
    the same as on a local scheduler or on any other cluster.
    """
    from daskgmm._graph import chunks_per_task, leaves_per_task

    rows = X.chunks[0]
    row_bytes = X.shape[1] * X.dtype.itemsize
    per = chunks_per_task(chunks_per_task_setting(), rows, row_bytes)
    leaves = tuple(sum(rows[i : i + per]) for i in range(0, len(rows), per))
    client = active_client()
    slots = 0 if client is None else cluster_threads(client)
    t = leaves_per_task(len(leaves), slots, X.nbytes / max(len(leaves), 1), split_every)
    bundles = tuple(leaves[i : i + t] for i in range(0, len(leaves), t))
    merged = tuple(map(sum, bundles))
    if t > 1:
        logger.info(
            "holding the data in %d chunks (one task per thread), each %d groups of %d storage chunk(s)",
            len(merged),
            t,
            per,
        )
    elif per > 1:
        logger.info("holding the data in %d chunks of %d storage chunks each", len(merged), per)
    out = X if merged == tuple(rows) else X.rechunk({0: merged})
    return out, (bundles if t > 1 else None)


def memory_budget(client) -> tuple[int, str]:
    """Bytes of memory the data could be held in, and where (for the log)."""
    import psutil

    if client is None:
        return int(psutil.virtual_memory().available), "available memory of this machine"
    workers = client.scheduler_info(n_workers=-1)["workers"]
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    if not limits:
        return 0, "workers' memory (no workers connected yet)"
    if any(lim <= 0 for lim in limits):
        total = int(psutil.virtual_memory().total)
        return total, f"memory of the machine ({len(limits)} workers without a memory limit)"
    return sum(limits), f"workers' memory limits ({len(limits)} workers)"


def _gb(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def plan_data(X, persist, in_memory: bool, merge: bool = True, split_every: int = 16):
    """Decide whether the data is held in (cluster) memory across iterations.

    Parameters
    ----------
    X : dask.array.Array
        The data, chunked by rows.
    persist : {"auto", True, False}
        ``"auto"`` holds the data on a distributed cluster when it takes at most
        :data:`PERSIST_FRACTION` of the workers' memory limits and streams it from
        storage in every iteration otherwise; without a distributed scheduler it
        streams (``True`` loads the data into this process's memory). In-memory (numpy) input on a distributed cluster is always sent
        to the workers once (persisted), never with every iteration's graph.
    in_memory : bool
        Whether ``X`` wraps an in-memory (numpy) array.
    merge : bool
        Merge consecutive chunks into the statistics pass's groups before holding the data on a
        cluster (:func:`merge_for_cluster`); False keeps the storage chunks (incremental EM).

    Returns
    -------
    X : dask.array.Array
        As given, or merged for holding on a cluster (:func:`merge_for_cluster`).
    bytes_per_pass : int
        Bytes read from storage by one pass: ``X.nbytes`` when streamed, else 0.
    to_hold : bool
        Whether the caller holds ``X`` in memory (:func:`hold`, with its weights).
    leaf_rows : tuple of tuples of int, or None
        Per held chunk, the rows of each leaf of the statistics pass in it when the held chunks
        bundle several (:func:`merge_for_cluster`), else None.
    """
    client = active_client()
    nbytes = int(X.nbytes)
    if in_memory:
        if client is None:
            logger.info("in-memory input (%s): computed in this process, nothing to persist", _gb(nbytes))
            return X, 0, False, None
        if persist is False:
            logger.info(
                "persist=False: the in-memory input (%s) is sent to the cluster with every iteration",
                _gb(nbytes),
            )
            return X, 0, False, None
        logger.info(
            "in-memory input (%s): sent to the workers once and held there across iterations", _gb(nbytes)
        )
        X, leaf_rows = merge_for_cluster(X, split_every) if merge else (X, None)
        return X, 0, True, leaf_rows
    budget, where = memory_budget(client)
    if persist == "auto" and client is None:
        # the local scheduler: persisting would cost a pass of its own, and the
        # operating system's page cache already keeps recently read chunks
        logger.info(
            "persist='auto' without a distributed scheduler: reading the data's chunks (%s) in every "
            "iteration (persist=True loads them into this process's memory instead)",
            _gb(nbytes),
        )
        return X, nbytes, False, None
    if persist == "auto":
        do = nbytes <= PERSIST_FRACTION * budget
        if do:
            logger.info(
                "persist='auto': the data (%s) fits comfortably in the %s (%s): holding it in memory "
                "across iterations",
                _gb(nbytes),
                where,
                _gb(budget),
            )
        else:
            logger.info(
                "persist='auto': the data (%s) is more than %d%% of the %s (%s): streaming its chunks from "
                "storage in every iteration (persist=True holds it anyway)",
                _gb(nbytes),
                int(PERSIST_FRACTION * 100),
                where,
                _gb(budget),
            )
    else:
        do = bool(persist)
        logger.info(
            "persist=%s: %s the data (%s; %s: %s)",
            do,
            "holding in memory" if do else "streaming from storage in every iteration",
            _gb(nbytes),
            where,
            _gb(budget),
        )
    if do:
        if merge and client is not None:
            X, leaf_rows = merge_for_cluster(X, split_every)
            return X, 0, True, leaf_rows
        return X, 0, True, None
    return X, nbytes, False, None


def _owners(n: int, threads: dict) -> list:
    """The worker of each of ``n`` chunks: round robin over the workers' threads, so each worker
    holds chunks in proportion to its threads and a pass's tasks (in chunk order) reach the
    workers in turn (runs of consecutive chunks made the scheduler send some tasks, in order,
    to the worker not holding their chunk, to even out the workers' queues)."""
    names = sorted(threads)
    slots = [w for r in range(max(threads.values(), default=1)) for w in names if threads[w] > r]
    return [slots[i % len(slots)] for i in range(n)]


def hold(*arrays):
    """Hold ``arrays`` (chunked alike by rows; None skipped) in memory: on a distributed cluster,
    chunk ``i`` of every array on one worker, the chunks spread over the workers in proportion to
    their threads (:func:`_owners`); without one, persisted in this process.

    A plain ``persist`` puts chunks where workers happen to be free (measured: 8 chunks on two
    one-thread workers were held 4/4, 3/5 or 2/6 from run to run), and every pass then waits for
    the worker holding the most. Here each worker's chunks are computed with that worker as their
    (loose) restriction: the same tasks and keys as ``persist``, so a lost chunk is recomputed as
    before, elsewhere if its worker is gone. Weights held with the data stay next to their rows.
    """
    present = [a for a in arrays if a is not None]
    client = active_client()
    if client is None:
        return _rebuild(arrays, dask.persist(*present))
    threads = {w: i.get("nthreads", 1) for w, i in client.scheduler_info(n_workers=-1)["workers"].items()}
    if not threads or any(a.numblocks[1:] not in ((), (1,)) for a in present):
        # no worker yet (an adaptive cluster), or chunked across features: where dask places them
        return _rebuild(arrays, client.persist(present))
    chunks = [a.to_delayed().ravel() for a in present]
    owners = _owners(len(chunks[0]), threads)
    futures: list[dict] = [{} for _ in present]
    for w in sorted(threads):
        mine = [i for i, o in enumerate(owners) if o == w]
        if not mine:
            continue
        todo = [(j, c[i]) for j, c in enumerate(chunks) for i in mine]
        with warnings.catch_warnings():
            # data in this process's memory (numpy input) travels inside these graphs, once: the
            # chunks keep their lineage (a lost one is sent again), which a scatter would not,
            # and no pass sends it again, which is what distributed's warning is about
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            held = client.compute([c for _, c in todo], workers=[w], allow_other_workers=True)
        for (j, c), f in zip(todo, held):
            futures[j][c.key] = f
    logger.info("holding %d chunks on %d workers", len(owners), len(threads))
    return _rebuild(arrays, [_from_futures(a, fs) for a, fs in zip(present, futures)])


def _from_futures(a, futs: dict):
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    return da.Array(HighLevelGraph.from_collections(a.name, futs), a.name, a.chunks, meta=a._meta)


def _rebuild(arrays, held):
    it = iter(held)
    return tuple(None if a is None else next(it) for a in arrays)
