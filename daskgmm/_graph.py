"""The per-iteration graph: one task per chunk and a fixed-order tree reduction.

:func:`shared` makes one graph key of a small driver-side object (the parameters)
that every chunk task depends on; :func:`map_reduce` writes the graph of one pass
directly (one dict, one layer), with the keys named by phase for the dashboard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dask
from dask.base import is_dask_collection, tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from daskgmm._kernels import combine, combine_lists


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


def statistics_pass(
    kernel: Callable,
    blocks: Sequence,
    weight_blocks: Sequence | None,
    ps: Sequence,
    token: str,
    split_every: int = 16,
    chunks: Sequence[int] | None = None,
) -> list:
    """One pass over the data for every parameter set in ``ps`` (one ``compute``).

    ``kernel(block, ps, weights)`` returns one statistics dict per parameter set.
    With ``chunks=None`` every chunk is read and the per-chunk lists are summed by a
    fixed-order tree (keys ``gmm-em-stats-<token>``): the result is one dict per
    parameter set. With ``chunks`` given (incremental EM), only those chunks are read
    and the per-chunk lists come back unreduced, in the order of ``chunks``.
    """
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
