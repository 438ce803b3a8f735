"""Where the data lives during a fit: held in (cluster) memory or streamed every pass.

:func:`plan_data` applies ``persist=`` against the memory budget of the active
scheduler and logs its choice on the ``daskgmm`` logger.
"""

from __future__ import annotations

import logging

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


def total_threads(client=None) -> int:
    """Threads that run tasks: the cluster's total, or the local scheduler's."""
    if client is not None:
        try:
            return max(
                1, sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
            )
        except Exception:  # pragma: no cover - defensive
            return 1
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT)


def chunks_per_task_setting():
    """The dask config ``daskgmm.chunks_per_task``: ``"auto"`` (default) or an int >= 1."""
    return dask.config.get("daskgmm.chunks_per_task", "auto")


def merge_for_cluster(X):
    """``X`` with consecutive chunks merged, as the statistics pass groups them, before it is
    held on a cluster.

    Held chunks stay where they were computed, so a task that read several of them would move
    data between workers every iteration; instead each held chunk is one task's group of storage
    chunks (:func:`daskgmm._graph.chunks_per_task`, the dask config ``daskgmm.chunks_per_task``).
    The spans are those the pass groups on a local scheduler, so the result is the same.
    """
    from daskgmm._graph import chunks_per_task

    rows = X.chunks[0]
    per = chunks_per_task(chunks_per_task_setting(), rows, X.shape[1] * X.dtype.itemsize)
    if per <= 1:
        return X
    merged = tuple(sum(rows[i : i + per]) for i in range(0, len(rows), per))
    logger.info("holding the data in %d chunks of %d storage chunks each", len(merged), per)
    return X.rechunk({0: merged})


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


def plan_data(X, persist, in_memory: bool, merge: bool = True):
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
        Persisted or as given.
    bytes_per_pass : int
        Bytes read from storage by one pass: ``X.nbytes`` when streamed, else 0.
    """
    client = active_client()
    nbytes = int(X.nbytes)
    if in_memory:
        if client is None:
            logger.info("in-memory input (%s): computed in this process, nothing to persist", _gb(nbytes))
            return X, 0
        if persist is False:
            logger.info(
                "persist=False: the in-memory input (%s) is sent to the cluster with every iteration",
                _gb(nbytes),
            )
            return X, 0
        logger.info(
            "in-memory input (%s): sent to the workers once and held there across iterations", _gb(nbytes)
        )
        return (merge_for_cluster(X) if merge else X).persist(), 0
    budget, where = memory_budget(client)
    if persist == "auto" and client is None:
        # the local scheduler: persisting would cost a pass of its own, and the
        # operating system's page cache already keeps recently read chunks
        logger.info(
            "persist='auto' without a distributed scheduler: reading the data's chunks (%s) in every "
            "iteration (persist=True loads them into this process's memory instead)",
            _gb(nbytes),
        )
        return X, nbytes
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
        return (merge_for_cluster(X) if merge and client is not None else X).persist(), 0
    return X, nbytes
