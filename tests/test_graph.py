"""The shape of one EM iteration's graph (dask's reduction tests are the model).

One fused task per chunk, a fixed-order tree of bounded fan-in, one key for the
parameters, deterministic keys, and a graph that grows with the number of chunks
but not with K or D.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from sklearn.exceptions import ConvergenceWarning

from daskgmm import GaussianMixture
from daskgmm._gaussian import EStepParams
from daskgmm._graph import map_reduce, shared
from daskgmm._kernels import chunk_stats, combine
from tests.conftest import make_mixture


def _params(k, d):
    rng = np.random.RandomState(0)
    return EStepParams(np.full(k, 1 / k), rng.randn(k, d), np.stack([np.eye(d)] * k), "full", np.float64)


def _iteration_graph(n_chunks, k=3, d=2, split_every=4):
    X = da.random.RandomState(0).normal(size=(n_chunks * 10, d), chunks=(10, d))
    blocks = X.to_delayed(optimize_graph=False).ravel()
    ps = shared(_params(k, d), name="gmm-params-test")
    g = map_reduce(chunk_stats, [(b, ps) for b in blocks], "gmm-em-stats-test", split_every)
    return g, dict(g.__dask_graph__())


def _layer_counts(graph):
    counts = {}
    for key in graph:
        name = key[0] if isinstance(key, tuple) else key
        prefix = name.split("-test")[0] + ("-test" + name.split("-test")[1] if "-test" in name else "")
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


@pytest.mark.parametrize("n_chunks, split_every", [(1, 4), (7, 4), (64, 4), (100, 16)])
def test_one_task_per_chunk_and_a_bounded_tree(n_chunks, split_every):
    g, graph = _iteration_graph(n_chunks, split_every=split_every)
    stats_keys = [k for k in graph if isinstance(k, tuple) and k[0] == "gmm-em-stats-test"]
    assert len(stats_keys) == n_chunks
    params_keys = [k for k in graph if "gmm-params-test" in str(k)]
    assert len(params_keys) == 1
    combine_keys = [k for k in graph if isinstance(k, tuple) and "combine" in k[0]]
    # a full tree of fan-in split_every: ceil(n/s) + ceil(n/s^2) + ... nodes
    expected, m = 0, n_chunks
    while m > 1:
        m = -(-m // split_every)
        expected += m
    assert len(combine_keys) == expected
    depth = len({k[0] for k in combine_keys})
    assert depth == (0 if n_chunks == 1 else int(np.ceil(np.log(n_chunks) / np.log(split_every) - 1e-9)))


def test_graph_size_does_not_grow_with_k_or_d():
    _, small = _iteration_graph(12, k=2, d=2)
    _, large = _iteration_graph(12, k=20, d=30)
    assert len(small) == len(large)


def test_reduction_equals_the_sum_of_chunk_statistics():
    g, graph = _iteration_graph(9, split_every=2)
    (stats,) = dask.compute(g)
    X = da.random.RandomState(0).normal(size=(90, 2), chunks=(10, 2)).compute()
    direct = chunk_stats(X, _params(3, 2))
    for key in ("n", "loglik"):
        assert stats[key] == pytest.approx(direct[key], rel=1e-12)
    for key in ("nk", "u", "s2"):
        np.testing.assert_allclose(stats[key], direct[key], rtol=1e-12)
    assert combine([direct])["nk"] is not direct["nk"]  # combine never aliases its inputs


class KeyRecorder(Callback):
    def __init__(self):
        super().__init__()
        self.keys = []

    def _start(self, dsk):
        # dask names its own final gathering task with a random uuid: not ours
        self.keys.append(sorted(str(k) for k in dsk if not str(k).startswith("finalize-")))


def test_keys_are_deterministic_and_named_by_phase():
    X = make_mixture(n_samples=400, n_features=2, n_components=2, seed=3)[0]
    Xd = da.from_array(X, chunks=(100, 2))
    runs = []
    for _ in range(2):
        with KeyRecorder() as rec, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            GaussianMixture(2, random_state=0, max_iter=3, tol=0).fit(Xd)
        runs.append(rec.keys)
    assert runs[0] == runs[1]
    names = " ".join(k for graph in runs[0] for k in graph)
    assert "gmm-init" in names and "gmm-em-stats" in names


class RawKeyRecorder(Callback):
    def __init__(self):
        super().__init__()
        self.keys = set()

    def _start(self, dsk):
        self.keys.update(dsk)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++"])
def test_every_key_of_the_init_and_em_passes_is_named_gmm(init_params):
    # the dashboard groups tasks by key prefix: no 'ndarray' or 'EStepParams' of unnamed driver objects
    X = make_mixture(n_samples=400, n_features=2, n_components=2, seed=3)[0]
    Xd = da.from_array(X, chunks=(100, 2))
    with RawKeyRecorder() as rec, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(2, random_state=0, max_iter=2, tol=0, init_params=init_params).fit(Xd)
    data = set(Xd.__dask_graph__())
    prefixes = {dask.base.key_split(k) for k in rec.keys - data if not str(k).startswith("finalize-")}
    assert prefixes and all(p.startswith("gmm-") for p in prefixes), prefixes
    assert "gmm-em-stats" in prefixes


def test_unnamed_shared_objects_and_container_arguments_get_gmm_keys():
    p = _params(2, 2)
    assert dask.base.key_split(shared(p).key) == "gmm-shared"
    assert shared(p).key == shared(_params(2, 2)).key  # deterministic
    blocks = da.ones((20, 2), chunks=(10, 2)).to_delayed(optimize_graph=False).ravel()
    g = map_reduce(chunk_stats, [(b, [p]) for b in blocks], "gmm-em-stats-test", 4)
    own = set(g.__dask_graph__()) - set(da.ones((20, 2), chunks=(10, 2)).__dask_graph__())
    assert all(dask.base.key_split(k).startswith("gmm-") for k in own), own


def test_a_local_pass_runs_on_the_configured_scheduler_and_only_what_it_needs(capsys):
    """``Passes.compute`` without a client calls the local scheduler dask would pick (the config's
    ``scheduler``) on the pass's graph culled to its outputs: the same values as ``dask.compute``;
    a key nothing asks for is not run; dask's bar only under ``daskgmm.progress``."""
    import threading
    import time

    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    from daskgmm._graph import Passes

    ran = []

    def where(x):
        ran.append(threading.get_ident())
        time.sleep(0.3)
        return x * 2

    def never():
        raise AssertionError("a key no output needs was run")

    dsk = {("w", i): (where, i) for i in range(4)}
    dsk["unused"] = (never,)
    graph = HighLevelGraph.from_collections("w", dsk)
    outs = [Delayed(("w", i), graph, layer="w") for i in range(4)]
    expected = list(dask.compute(*outs))
    ran.clear()
    main = threading.get_ident()
    with dask.config.set(scheduler="sync"):
        assert Passes().compute(outs) == expected == [0, 2, 4, 6]
    assert ran == [main] * 4
    ran.clear()
    with dask.config.set(scheduler="threads"):
        assert Passes(progress=True).compute(outs) == expected
    assert len(ran) == 4 and main not in ran
    assert capsys.readouterr().err == ""  # progress asked for by the pass, not by the config
    with dask.config.set({"scheduler": "threads", "daskgmm.progress": True}):
        assert Passes(progress=True).compute(outs) == expected
        assert Passes().compute(outs) == expected
    assert capsys.readouterr().err.count("100% Completed") == 1
