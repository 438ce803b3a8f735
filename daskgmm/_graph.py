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
runs the kernel once on its rows (concatenated), so a grouping gives the result of the
data chunked by groups; the automatic grouping depends on the data's chunks only, so the
result does not depend on the cluster (another grouping changes only the rounding). Data held on
a cluster is one task per thread: each holds several groups (*leaves*), runs the kernel leaf by
leaf and sums only the whole subtrees of the fixed tree inside it (:func:`leaves_per_task`), so
its numbers are those of one task per leaf.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass

import dask
import numpy as np
from dask._task_spec import DataNode, GraphNode, List, Task, TaskRef, convert_legacy_graph
from dask.base import is_dask_collection, tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from daskgmm._kernels import combine, combine_lists

logger = logging.getLogger("daskgmm")


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
    (root,) = tree_reduce(dsk, keys, name, split_every, lambda key, kids: (combine_func, kids))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[a for _, a in deps.values()])
    return Delayed(root, graph, layer=name)


def tree_reduce(dsk: dict, keys: list, name: str, split_every: int, node: Callable, top: int = 1) -> list:
    """Add a fixed-order tree over ``keys`` to ``dsk``, down to at most ``top`` keys, and return
    those: ``node(key, child_keys)`` is the task of each inner node, keyed
    ``(f"{name}-combine{level}", j)``."""
    if not keys:
        raise ValueError("The data has no chunks: nothing to fit.")
    level = 0
    while len(keys) > top:
        parent = []
        for j, i in enumerate(range(0, len(keys), split_every)):
            key = (f"{name}-combine{level}", j)
            dsk[key] = node(key, keys[i : i + split_every])
            parent.append(key)
        keys = parent
        level += 1
    return keys


def _chunk_task(kernel: Callable, block, ps, w=None) -> list:
    return kernel(block, ps, w)


#: automatic grouping: a task reads at least this many bytes of data ...
TASK_BYTES = 16 * 2**20
#: ... unless that leaves fewer than this many tasks (so that every thread of a small cluster works)
MIN_TASKS = 16


def chunks_per_task(setting, chunk_rows: Sequence[int], row_bytes: int) -> int:
    """Storage chunks per task: ``setting`` when an int, else automatic (``"auto"``/None).

    Automatic: consecutive chunks up to about :data:`TASK_BYTES` of data per task (16 MiB:
    ~130,000 rows at D=16 float64, tens of milliseconds of kernel at K=16), keeping at least
    :data:`MIN_TASKS` tasks. It depends on the data's chunks only, never on the cluster or the
    parameters, so a fit's summation order, hence its exact result, is the same on 1 or 100
    workers, for one start or many, and after a resume.
    """
    n = len(chunk_rows)
    if setting not in (None, "auto"):
        value = int(setting) if not isinstance(setting, bool) and str(setting).isdigit() else 0
        if value < 1:
            raise ValueError(
                f"daskgmm.chunks_per_task must be 'auto' or an int >= 1, got {setting!r}: "
                'set it with dask.config.set({"daskgmm.chunks_per_task": 8}) or --chunks-per-task 8.'
            )
        return min(value, max(n, 1))
    if n <= 1:
        return 1
    mean_bytes = max(sum(chunk_rows) / n * max(int(row_bytes), 1), 1.0)
    want = math.ceil(TASK_BYTES / mean_bytes)
    return int(max(1, min(want, n // MIN_TASKS)))


#: a chunk held on a cluster that bundles several leaves is at most this large
HELD_CHUNK_BYTES = 256 * 2**20


def leaves_per_task(n_leaves: int, slots: int, leaf_bytes: float, split_every: int) -> int:
    """Leaves per task for data held on a cluster of ``slots`` threads.

    A *leaf* is one automatic group of storage chunks (:func:`chunks_per_task`). The fixed tree of
    a pass sums the leaves. This picks the power of two that ends a pass in the fewest rounds of
    leaves per thread (ties: the fewest tasks), at most :data:`HELD_CHUNK_BYTES` per task.

    A power of two aligns every task with that tree (``split_every`` a power of two). So a task sums
    its own whole subtrees and hands the rest on (:func:`fold_leaves`), and a pass's numbers do not
    depend on the cluster. On 2 one-thread workers, 16 leaves make 2 tasks, not 16: each task costs
    the scheduler a round of messages. The result is 1 when ``split_every`` is not a power of two.
    """
    if n_leaves <= 1 or slots < 1 or split_every < 2 or split_every & (split_every - 1):
        return 1
    cap = max(1, int(HELD_CHUNK_BYTES // max(leaf_bytes, 1.0)))
    best, best_key = 1, None
    t = 1
    while t <= cap and t < 2 * n_leaves:
        tasks = -(-n_leaves // t)
        key = (-(-tasks // slots) * t, tasks)  # leaves on the busiest thread, then fewest tasks
        if best_key is None or key < best_key:
            best, best_key = t, key
        t *= 2
    return best


def fold_levels(per_task: int, split_every: int) -> int:
    """How many levels of the leaves' tree lie wholly inside a task of ``per_task`` leaves."""
    levels, span = 0, split_every
    while per_task > 1 and span <= per_task:
        levels, span = levels + 1, span * split_every
    return levels


def fold_leaves(outs: list, levels: int, split_every: int) -> list:
    """``levels`` levels of the fixed tree over consecutive ``outs`` (the sums a tree node of
    :func:`tree_reduce` would make, in the same order): the task's *bundle* of partial sums."""
    for _ in range(levels):
        outs = [combine_lists(outs[i : i + split_every]) for i in range(0, len(outs), split_every)]
    return outs


def fold_bundles(bundles: list) -> list:
    """One tree node over consecutive bundles: their partial sums added in order."""
    return combine_lists([item for bundle in bundles for item in bundle])


def task_groups(n_chunks: int, per_task: int) -> list[range]:
    """Consecutive chunk indices, ``per_task`` to a task (the last group may be shorter)."""
    per_task = max(int(per_task), 1)
    return [range(i, min(i + per_task, n_chunks)) for i in range(0, n_chunks, per_task)]


@dataclass
class TaskSources:
    """What each coarse task reads: graph nodes of its chunks (and of their weights)."""

    x: list  # per task: a list of graph nodes
    w: list | None
    graph: dict  # what those nodes depend on (culled once: an iteration's graph has only its tasks)
    groups: list
    #: per task, the rows of each leaf in it (held chunks bundling leaves), else None
    leaves: list | None = None
    #: leaves per task (all but the last) and the tree levels each task sums itself
    per_task: int = 1
    levels: int = 0

    def __len__(self) -> int:
        return len(self.x)


def _node(block, cache: dict) -> GraphNode:
    """The graph node of one chunk: its task inlined, or a reference to data already there."""
    graph = block.dask
    key = id(graph)
    if key not in cache:  # legacy tuples and aliases become task-spec nodes, so their dependencies show
        cache[key] = (graph, convert_legacy_graph(dict(graph)))
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


def _deps(node) -> frozenset:
    if isinstance(node, TaskRef):
        return frozenset([node.key])
    return node.dependencies if isinstance(node, GraphNode) else frozenset()


def task_sources(blocks: Sequence, weight_blocks: Sequence | None, groups: Sequence[range]) -> TaskSources:
    """Per group, the nodes of its chunks (computed once per fit, not once per iteration)."""
    cache: dict = {}
    x = [_merge_reads([_node(blocks[i], cache) for i in g]) for g in groups]
    w = None if weight_blocks is None else [[_node(weight_blocks[i], cache) for i in g] for g in groups]
    full: dict = {}
    for _, materialized in cache.values():
        full.update(materialized)
    needed: dict = {}
    stack = [k for nodes in x + (w or []) for n in nodes for k in _deps(n)]
    while stack:
        k = stack.pop()
        if k in needed or k not in full:
            continue
        needed[k] = full[k]
        stack.extend(_deps(full[k]))
    return TaskSources(x, w, needed, list(groups))


def held_on_cluster(block) -> bool:
    """Whether a chunk is held on a cluster (persisted: a future in its graph)."""
    node = type(dict(block.dask).get(block.key))
    return node.__name__ == "Future" and node.__module__.startswith("distributed")


def pass_sources(
    X,
    blocks: Sequence,
    weight_blocks: Sequence | None,
    setting,
    leaf_rows: Sequence[Sequence[int]] | None = None,
    split_every: int = 16,
) -> TaskSources:
    """The groups of a pass over ``X`` (its chunks ``blocks``): ``setting`` chunks per task
    (:func:`chunks_per_task`), one per task where the chunks are held on a cluster (they were
    merged into those groups when persisted) or their sizes are unknown.

    ``leaf_rows``: per held chunk, the rows of each leaf in it when the held chunks bundle
    several leaves (:func:`daskgmm._placement.merge_for_cluster`); each task then works leaf by
    leaf."""
    rows = X.chunks[0]
    per = 1
    if len(blocks) and not held_on_cluster(blocks[0]) and not any(math.isnan(r) for r in rows):
        per = chunks_per_task(setting, rows, X.shape[1] * X.dtype.itemsize)
    sources = task_sources(blocks, weight_blocks, task_groups(len(blocks), per))
    if leaf_rows is not None and per == 1:
        if [sum(leaves) for leaves in leaf_rows] != list(rows):
            raise RuntimeError(f"held chunks of {tuple(rows)} rows do not bundle the leaves {leaf_rows}")
        sources.leaves = [tuple(leaves) for leaves in leaf_rows]
        sources.per_task = len(sources.leaves[0])
        sources.levels = fold_levels(sources.per_task, split_every)
    return sources


def group_stats(
    kernel: Callable,
    ps,
    xs: list,
    ws: list | None = None,
    leaves: tuple | None = None,
    levels: int = 0,
    split_every: int = 16,
) -> list:
    """The statistics of one coarse task: the kernel on its chunks as one block of rows.

    The chunks are concatenated (or were read as one span), so a group's arithmetic is that of
    one chunk of its rows: the same whether the rows were grouped here, read as one span, or
    merged into one chunk held on a cluster (:func:`daskgmm._placement.merge_for_cluster`).
    With ``leaves`` (a held chunk bundling several leaves), the kernel runs on each leaf's rows
    and the task returns its bundle (:func:`fold_leaves`): the numbers of one task per leaf.
    """
    X = xs[0] if len(xs) == 1 else np.concatenate([np.asarray(x) for x in xs])
    w = None
    if ws is not None:
        w = ws[0] if len(ws) == 1 else np.concatenate([np.asarray(v) for v in ws])
    if leaves is None:
        return kernel(X, ps, w)
    outs, start = [], 0
    for n in leaves:
        outs.append(kernel(X[start : start + n], ps, None if w is None else w[start : start + n]))
        start += n
    return fold_leaves(outs, levels, split_every)


def _grouped_graph(
    kernel, sources: TaskSources, ps, name: str, split_every: int
) -> tuple[list[Delayed], bool]:
    """The pass's outputs: one task per group, and a fixed-order tree on the workers down to at
    most ``split_every`` partial sums, which the driver adds (:class:`Passes`). The flag: whether
    those outputs are bundles (lists of partial sums, :func:`fold_leaves`) to be flattened first."""
    deps: dict = {}
    pnode = ps if isinstance(ps, DataNode) else TaskRef(_task_arg(ps, deps))  # inline, or a key
    dsk: dict = dict(sources.graph)
    keys = []
    bundled = sources.leaves is not None
    for i, xs in enumerate(sources.x):
        key = (name, i)
        args = [kernel, pnode, List(*xs)]
        if sources.w is not None or bundled:
            args.append(None if sources.w is None else List(*sources.w[i]))
        if bundled:
            args += [sources.leaves[i], sources.levels, split_every]
        dsk[key] = Task(key, group_stats, *args)
        keys.append(key)
    if bundled:
        span = split_every**sources.levels  # leaves in one partial sum of a bundle
        items = sum(-(-len(leaves) // span) for leaves in sources.leaves)
        if items <= split_every:  # the driver adds them all
            graph = HighLevelGraph.from_collections(name, dsk, dependencies=[a for _, a in deps.values()])
            return [Delayed(k, graph, layer=name) for k in keys], True
        # the next tree level: each node takes the bundles holding its split_every partial sums
        per_node = split_every // -(-sources.per_task // span)
        level = []
        for j, i in enumerate(range(0, len(keys), per_node)):
            key = (f"{name}-combine-bundles", j)
            dsk[key] = Task(key, fold_bundles, List(*map(TaskRef, keys[i : i + per_node])))
            level.append(key)
        keys = level
    keys = tree_reduce(  # the tree's last level runs on the driver
        dsk,
        keys,
        name,
        split_every,
        lambda key, kids: Task(key, combine_lists, List(*map(TaskRef, kids))),
        split_every,
    )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[a for _, a in deps.values()])
    return [Delayed(k, graph, layer=name) for k in keys], False


#: parameters go inside each task of a pass on a cluster when their pickled size times the tasks
#: is at most this (:class:`Passes`)
INLINE_PARAMS_BYTES = 2**20


class Passes:
    """Submits the statistics passes of one fit.

    On the local schedulers a pass is one ``dask.compute``. On a distributed client, where an
    iteration's fixed cost is a chain of messages (measured on a 2-worker ``LocalCluster``, 500,000
    rows in 8 tasks: 20-25 ms from submitting to the first statistics task, 15-20 ms from the last
    one to the result), three links of that chain are cut, none changing a number:

    * the parameters travel *inside each task* when the pass has few tasks (their pickled size
      times the tasks at most :data:`INLINE_PARAMS_BYTES`, as with data held in one chunk per
      thread): measured 8-11 ms from an iteration's start to its first task against 16-19 ms when
      scattered (2 tasks on a 2-worker ``LocalCluster``, 500,000×16, K=16). Otherwise they are
      *scattered* to every worker before the graph is sent (one message per worker per
      iteration), so the statistics tasks can start as soon as the graph arrives instead of after
      a parameters task has run on one worker, been reported, and been fetched by the others;
    * the previous pass's results are released only after the next graph is sent: the client
      batches its messages to the scheduler 10 ms apart, and the release sent just before the
      graph held the graph back;
    * the tree's last level (at most ``split_every`` partial sums, in the same fixed order) is
      added on the driver after one gather, instead of one more task, transfer and report.
    """

    def __init__(self, client=None, progress: bool = False):
        self.client = client
        self.progress = progress  # dask's own bar (:func:`daskgmm._progress.compute`) on the local schedulers
        self._held: list = []

    def params(self, ps: list, token: str, scatter: bool = True, tasks: int = 1):
        """The pass's parameters as one graph key, ``gmm-params-<token>``: on a distributed client
        the parameters themselves (a data node in each of the pass's ``tasks``) when they are
        small enough, else scattered; without a client (or with ``scatter=False``) a task of the
        pass's graph."""
        name = f"gmm-params-{token}"
        if self.client is None:
            return shared(ps, name=name)
        if scatter and tasks * len(pickle.dumps(ps, protocol=5)) <= INLINE_PARAMS_BYTES:
            return DataNode(None, ps)
        if scatter:
            try:
                fut = self.client.scatter({name: ps}, broadcast=True)[name]
            except (
                OSError,
                TimeoutError,
            ) as e:  # a worker lost while sending (CommClosedError is an OSError)
                logger.info("parameters not scattered (%s): sent as a task of this pass's graph", e)
            else:
                self._held.append(fut)
                return Delayed(name, {name: fut})
        return shared(ps, name=f"{name}-task")  # not the name a part-done or lost scatter may have left

    def compute(self, outs: list[Delayed]) -> list:
        """The values of ``outs`` (one compute)."""
        if self.client is None:
            return _local_compute(outs, self.progress and dask.config.get("daskgmm.progress", False))
        futures = self.client.compute(outs)
        held, self._held = self._held, list(futures)  # released after the graph went out
        del held
        return self.client.gather(futures)

    def close(self) -> None:
        """Release what the last pass kept on the cluster."""
        self._held = []


def _local_compute(outs: list[Delayed], progress: bool) -> list:
    """``dask.compute(*outs)`` on the local scheduler it would use, called with the pass's one
    graph culled to ``outs``, as ``Delayed``'s own optimisation does. ``dask.compute`` also
    wraps the collections as expressions first: 3.5-6 ms of an iteration's 100-120 ms (measured,
    500,000×16, K=16, float32, 2 threads), with the scheduler's threads idle. dask's progress
    bar (``progress``: the config key ``daskgmm.progress``) is the same callback either way."""
    graph = outs[0].dask
    if any(o.dask is not graph for o in outs):
        graph = HighLevelGraph.merge(*(o.dask for o in outs))
    keys = [o.key for o in outs]
    schedule = dask.base.get_scheduler(collections=outs)
    dsk = Delayed.__dask_optimize__(graph, keys)
    from daskgmm._progress import local_bar

    with local_bar(progress):
        return list(schedule(dsk, keys))


def statistics_pass(
    kernel: Callable,
    blocks: Sequence,
    weight_blocks: Sequence | None,
    ps: Sequence,
    token: str,
    split_every: int = 16,
    chunks: Sequence[int] | None = None,
    sources: TaskSources | None = None,
    passes: Passes | None = None,
    name: str = "gmm-em-stats",
) -> list:
    """One pass over the data for every parameter set in ``ps`` (one ``compute``).

    ``kernel(block, ps, weights)`` returns one statistics dict per parameter set.
    With ``chunks=None`` every chunk is read and the per-chunk lists are summed by a
    fixed-order tree (keys ``gmm-em-stats-<token>``): the result is one dict per
    parameter set. With ``chunks`` given (incremental EM), only those chunks are read
    and the per-chunk lists come back unreduced, in the order of ``chunks``. With
    ``sources`` (:func:`task_sources`) and no ``chunks``, one task per group of chunks,
    submitted by ``passes`` (:class:`Passes`; by default a plain ``dask.compute``), its keys
    named ``<name>-<token>``.
    """
    if chunks is None and sources is not None:
        passes = Passes() if passes is None else passes
        pkey = passes.params(list(ps), token, tasks=len(sources))
        try:
            outs, bundles = _grouped_graph(kernel, sources, pkey, f"{name}-{token}", split_every)
            parts = passes.compute(outs)
        except CancelledError as e:
            # Scattered parameters have no lineage: dask's broadcast scatter puts them on one
            # worker and has the others copy them, so a worker lost before the copies (a killed
            # worker, a preempted node) can take the only copy with it, and the scheduler cancels
            # the pass's graph for "lost dependencies". The pass runs again, the parameters a
            # task of its graph this time, which a lost worker cannot take away.
            if passes.client is None or "lost dependencies" not in str(e):
                raise
            logger.warning("pass %s: parameters lost with a worker (%s); running the pass again", token, e)
            pkey = passes.params(list(ps), token, scatter=False)
            outs, bundles = _grouped_graph(kernel, sources, pkey, f"{name}-{token}-again", split_every)
            parts = passes.compute(outs)
        if bundles:
            parts = [item for bundle in parts for item in bundle]
        return parts[0] if len(parts) == 1 else combine_lists(parts)
    ps = shared(list(ps), name=f"gmm-params-{token}")

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
