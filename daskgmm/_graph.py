"""The per-iteration graph: one task per group of chunks and a fixed-order tree reduction.

:func:`shared` makes one graph key of a small driver-side object (the parameters)
that every chunk task depends on; :func:`map_reduce` writes the graph of one pass
directly (one dict, one layer), with the keys named by phase for the dashboard.

Coarse tasks: a statistics pass runs one task per *group* of consecutive storage
chunks (:func:`task_groups`, :func:`task_sources`), so a store of 40,000 chunks
is not 40,000 tasks per iteration. A chunk whose graph node is a task (a read from
Zarr, a slice of a file) is inlined into its group's task, so the read runs inside
it and costs the scheduler nothing; a chunk already in memory is referenced by key.
Consecutive reads of one array (``from_zarr``, ``from_array``) become one read of
their span, which Zarr serves with its chunks fetched concurrently. A group's task
sums its chunks' statistics in chunk order, so the result is deterministic for a
given grouping (another grouping changes only the rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask
import numpy as np
from dask._task_spec import DataNode, GraphNode, List, Task, TaskRef
from dask.base import is_dask_collection, tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from daskgmm._kernels import combine, combine_lists, in_task


def shared(obj, name: str | None = None):
    """Wrap a small driver-side object as one graph key that chunk tasks depend on.

    Without ``name`` the key is ``gmm-shared-<token>`` (never dask's default, the
    type's name, which reads ``ndarray`` or ``EStepParams`` on the dashboard).
    """
    if name is None:
        name = f"gmm-shared-{tokenize(obj)}"
    return dask.delayed(obj, name=name, pure=True, traverse=False)


def _task_arg(a, deps: dict):
    """The graph form of one task argument: a key for dask objects, the value otherwise."""
    if isinstance(a, Delayed):
        graph = a.dask  # kept alive in ``deps`` so that its id stays unique
        deps.setdefault(id(graph), (graph, a))
        return a.key
    if is_dask_collection(a) or isinstance(a, (tuple, list, dict, set)):
        # dask collections and containers (which a task tuple would traverse) get a key of their own
        return _task_arg(shared(a, name=f"gmm-arg-{tokenize(a)}"), deps)
    return a


def map_reduce(
    func: Callable,
    args_per_chunk: Sequence[tuple],
    name: str,
    split_every: int = 16,
    combine_func: Callable | None = None,
):
    """Build the graph: ``func(*args_i)`` per chunk, then a fixed-order tree sum.

    Arguments made with :func:`shared` enter the graph once (one key each) and every
    chunk task depends on them, so parameters are shipped to each worker once, not
    embedded in every task. Keys: ``(name, i)`` per chunk and
    ``(f"{name}-combine{level}", j)`` in the tree. The graph is written directly
    (one dict, one layer) rather than through ``dask.delayed`` calls, which cost
    about a millisecond per chunk per iteration to build.
    """
    combine_func = combine if combine_func is None else combine_func
    deps: dict = {}
    dsk: dict = {}
    keys = []
    for i, args in enumerate(args_per_chunk):
        key = (name, i)
        dsk[key] = (func, *(_task_arg(a, deps) for a in args))
        keys.append(key)
    if not keys:
        raise ValueError("The data has no chunks: nothing to fit.")
    level = 0
    while len(keys) > 1:
        parent = []
        for j, i in enumerate(range(0, len(keys), split_every)):
            key = (f"{name}-combine{level}", j)
            dsk[key] = (combine_func, keys[i : i + split_every])
            parent.append(key)
        keys = parent
        level += 1
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[a for _, a in deps.values()])
    return Delayed(keys[0], graph, layer=name)


def _chunk_task(kernel: Callable, block, ps, w=None) -> list:
    return kernel(block, ps, w)


#: a task should run at least this long (seconds) before grouping stops adding chunks to it
MIN_TASK_SECONDS = 0.08
#: ... and there should be at least this many tasks per thread (so every thread works)
TASKS_PER_THREAD = 4
#: effective floating-point rate of the kernel per core assumed by the automatic grouping
#: (the kernel measured 20-25 GFLOP/s per core at K=D=16 on the development machine)
ASSUMED_FLOPS = 2e10


def row_seconds(ps: Sequence) -> float:
    """Estimated kernel seconds per row for the parameter sets ``ps`` on one core.

    About ``4·K·m`` flops (two matrix products over the ``m`` design rows: D(D+1)/2+D+1
    for full and tied covariances, fewer for diag and spherical) plus ``K`` exponentials
    per parameter set, at :data:`ASSUMED_FLOPS`.
    """
    total = 1e-8
    for p in ps:
        k = int(getattr(p, "n_components", 0) or len(getattr(p, "weights", ())) or 1)
        d = int(getattr(p, "n_features", 0) or 1)
        m = int(getattr(p, "n_design", 0) or (d * (d + 1) // 2 + d + 1))
        total += 4.0 * k * m / ASSUMED_FLOPS + 4e-9 * k
    return total


def chunks_per_task(setting, chunk_rows: Sequence[int], seconds_per_row: float, threads: int) -> int:
    """Storage chunks per task: ``setting`` when an int, else automatic (``"auto"``/None).

    Automatic: enough chunks that a task runs about :data:`MIN_TASK_SECONDS` (from the
    estimated ``seconds_per_row``), but never so many that fewer than
    :data:`TASKS_PER_THREAD` tasks per thread remain.
    """
    n = len(chunk_rows)
    if setting not in (None, "auto"):
        value = int(setting)
        if value < 1 or value != setting:
            raise ValueError(
                f"daskgmm.chunks_per_task must be 'auto' or an int >= 1, got {setting!r}: "
                'set it with dask.config.set({"daskgmm.chunks_per_task": 8}) or --chunks-per-task 8.'
            )
        return min(value, max(n, 1))
    if n <= 1:
        return 1
    mean_rows = max(sum(chunk_rows) / n, 1.0)
    want = math.ceil(MIN_TASK_SECONDS / max(seconds_per_row, 1e-12) / mean_rows)
    most = max(1, n // (TASKS_PER_THREAD * max(int(threads), 1)))
    return int(max(1, min(want, most)))


def task_groups(n_chunks: int, per_task: int) -> list[range]:
    """Consecutive chunk indices, ``per_task`` to a task (the last group may be shorter)."""
    per_task = max(int(per_task), 1)
    return [range(i, min(i + per_task, n_chunks)) for i in range(0, n_chunks, per_task)]


@dataclass
class TaskSources:
    """What each coarse task reads: graph nodes of its chunks (and of their weights)."""

    x: list  # per task: a list of graph nodes
    w: list | None
    collections: list  # the graphs those nodes depend on
    groups: list

    def __len__(self) -> int:
        return len(self.x)


def _node(block, cache: dict) -> GraphNode:
    """The graph node of one chunk: its task inlined, or a reference to data already there."""
    graph = block.dask
    key = id(graph)
    if key not in cache:
        cache[key] = (graph, dict(graph))
    node = cache[key][1].get(block.key)
    if isinstance(node, Task):
        return node
    return TaskRef(block.key)


def _merge_reads(nodes: list) -> list:
    """Consecutive reads of one array (dask's ``getter`` tasks, as ``from_zarr``/``from_array``
    make) become one read of their span: a store then serves the group in one call (Zarr fetches
    its chunks concurrently) instead of one call per chunk. Anything else is left as it is."""
    from dask.array.core import getter, getter_inline, getter_nofancy

    if len(nodes) < 2 or not all(
        isinstance(n, Task) and n.func in (getter, getter_nofancy, getter_inline) for n in nodes
    ):
        return nodes
    first = nodes[0]
    spans = []
    for n in nodes:
        if len(n.args) != 2 or not isinstance(n.args[0], TaskRef) or n.args[0].key != first.args[0].key:
            return nodes
        if n.func is not first.func or n.kwargs != first.kwargs:
            return nodes
        index = getattr(n.args[1], "value", None)
        if not isinstance(index, tuple) or not index or not all(isinstance(i, slice) for i in index):
            return nodes
        spans.append(index)
    rest = spans[0][1:]
    for a, b in zip(spans, spans[1:]):
        if a[0].step not in (None, 1) or b[0].start != a[0].stop or b[1:] != rest:
            return nodes
    merged = (slice(spans[0][0].start, spans[-1][0].stop), *rest)
    return [Task(first.key, first.func, first.args[0], DataNode(None, merged), **first.kwargs)]


def task_sources(blocks: Sequence, weight_blocks: Sequence | None, groups: Sequence[range]) -> TaskSources:
    """Per group, the nodes of its chunks (computed once per fit, not once per iteration)."""
    cache: dict = {}
    x = [_merge_reads([_node(blocks[i], cache) for i in g]) for g in groups]
    w = None if weight_blocks is None else [[_node(weight_blocks[i], cache) for i in g] for g in groups]
    collections = [blocks[0]] + ([] if weight_blocks is None else [weight_blocks[0]])
    return TaskSources(x, w, collections, list(groups))


@in_task  # BLAS set to one thread once per task, not once per chunk
def group_stats(kernel: Callable, ps, xs: list, ws: list | None = None) -> list:
    """The statistics of one coarse task: the kernel per chunk, summed in chunk order."""
    if ws is not None and len(ws) != len(xs):  # the chunks were read as one block
        ws = [np.concatenate([np.asarray(w) for w in ws])]
    total = None
    for j, X in enumerate(xs):
        part = kernel(X, ps, None if ws is None else ws[j])
        total = part if total is None else combine_lists([total, part])
    return total


def _grouped_graph(kernel, sources: TaskSources, ps, name: str, split_every: int) -> Delayed:
    deps: dict = {}
    pkey = _task_arg(ps, deps)
    dsk: dict = {}
    keys = []
    for i, xs in enumerate(sources.x):
        key = (name, i)
        args = [kernel, TaskRef(pkey), List(*xs)]
        if sources.w is not None:
            args.append(List(*sources.w[i]))
        dsk[key] = Task(key, group_stats, *args)
        keys.append(key)
    if not keys:
        raise ValueError("The data has no chunks: nothing to fit.")
    level = 0
    while len(keys) > 1:
        parent = []
        for j, i in enumerate(range(0, len(keys), split_every)):
            key = (f"{name}-combine{level}", j)
            dsk[key] = Task(key, combine_lists, List(*(TaskRef(k) for k in keys[i : i + split_every])))
            parent.append(key)
        keys = parent
        level += 1
    graph = HighLevelGraph.from_collections(
        name, dsk, dependencies=[a for _, a in deps.values()] + list(sources.collections)
    )
    return Delayed(keys[0], graph, layer=name)


def statistics_pass(
    kernel: Callable,
    blocks: Sequence,
    weight_blocks: Sequence | None,
    ps: Sequence,
    token: str,
    split_every: int = 16,
    chunks: Sequence[int] | None = None,
    sources: TaskSources | None = None,
) -> list:
    """One pass over the data for every parameter set in ``ps`` (one ``compute``).

    ``kernel(block, ps, weights)`` returns one statistics dict per parameter set.
    With ``chunks=None`` every chunk is read and the per-chunk lists are summed by a
    fixed-order tree (keys ``gmm-em-stats-<token>``): the result is one dict per
    parameter set. With ``chunks`` given (incremental EM), only those chunks are read
    and the per-chunk lists come back unreduced, in the order of ``chunks``. With
    ``sources`` (:func:`task_sources`) and no ``chunks``, one task per group of chunks.
    """
    ps = shared(list(ps), name=f"gmm-params-{token}")
    if chunks is None and sources is not None:
        (stats,) = dask.compute(_grouped_graph(kernel, sources, ps, f"gmm-em-stats-{token}", split_every))
        return stats

    def args(i):
        return (blocks[i], ps) if weight_blocks is None else (blocks[i], ps, weight_blocks[i])

    if chunks is None:
        graph = map_reduce(
            kernel,
            [args(i) for i in range(len(blocks))],
            f"gmm-em-stats-{token}",
            split_every,
            combine_func=combine_lists,
        )
        (stats,) = dask.compute(graph)
        return stats
    f = dask.delayed(_chunk_task, pure=True)
    tasks = [f(kernel, *args(i), dask_key_name=(f"gmm-incr-stats-{token}", i)) for i in chunks]
    return list(dask.compute(*tasks))


def predict_rows(X, params, what: str, n_components: int, token: str, nodata=None):
    """Lazy ``what`` (one of the outputs in :mod:`daskgmm._typing`) for every row of ``X``:
    one :func:`~daskgmm._kernels.predict_output` task per chunk, the parameters one shared key.

    ``nodata=NaN`` is ``nan_policy="omit"`` (label -1, NaN scores for rows with NaN);
    marginal parameters (:mod:`daskgmm._missing`) integrate missing features out.
    """
    import dask.array as da
    import numpy as np

    from daskgmm._kernels import predict_output, predict_output_spec

    p = shared(params, name=f"gmm-predict-params-{token}")
    chunks, dtype = predict_output_spec((X.chunks[0],), what, n_components, X.dtype)
    return da.map_blocks(
        predict_output,
        X,
        p,
        what,
        nodata,
        chunks=chunks,
        drop_axis=None if what == "probabilities" else 1,
        dtype=dtype,
        name=f"gmm-predict-{what}-{dask.base.tokenize(X.name, token, what)}",
        meta=np.empty((0,) * len(chunks), dtype=dtype),
    )
