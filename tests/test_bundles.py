"""Held chunks that bundle several leaves: fewer tasks on a cluster, the same numbers.

A *leaf* is one automatic group of storage chunks; a pass sums the leaves with a fixed tree
(groups of ``split_every``, level by level, until at most ``split_every`` partial sums remain,
which are added in order). References: that tree written out here with Python floats whose
order of addition shows in the result; the same fit streamed from Zarr (one task per leaf) on
the same cluster; scikit-learn from the same start.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

from daskgmm import GaussianMixture
from daskgmm._graph import leaves_per_task, pass_sources, statistics_pass


def _tree_sum(values: list[float], split_every: int) -> float:
    """The fixed tree: consecutive groups summed left to right, level by level, then the rest."""
    items = list(values)
    while len(items) > split_every:
        items = [_left(items[i : i + split_every]) for i in range(0, len(items), split_every)]
    return _left(items)


def _left(values: list[float]) -> float:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _first_row(X, ps, w=None):
    """A kernel whose statistic of a one-row leaf is that row's value."""
    return [{"s": np.array([X[:, 0].sum()])}]


def _values(n: int) -> np.ndarray:
    """Magnitudes from 1e-8 to 1e16 and both signs, so that most other orders of addition round
    differently (test_bundles_of_misaligned_sums_would_differ)."""
    rng = np.random.default_rng(n)
    return rng.normal(size=n) * 10.0 ** rng.integers(-8, 17, size=n)


@pytest.mark.parametrize("split_every", [4, 16])
@pytest.mark.parametrize("per_task", [2, 8, 16, 32, 512])
@pytest.mark.parametrize("n_leaves", [1, 7, 16, 17, 40, 300])
def test_bundled_tasks_sum_the_leaves_in_the_fixed_tree_order(n_leaves, per_task, split_every):
    values = _values(n_leaves)
    X = da.from_array(values[:, None], chunks=(per_task, 1))  # held chunks of per_task one-row leaves
    blocks = X.to_delayed().ravel()
    leaf_rows = tuple((1,) * n for n in X.chunks[0])
    sources = pass_sources(X, blocks, None, 1, leaf_rows, split_every)
    assert sources.per_task == min(per_task, n_leaves) and len(sources) == len(blocks)
    with dask.config.set(scheduler="sync"):
        (out,) = statistics_pass(_first_row, blocks, None, [None], "t", split_every, sources=sources)
    assert out["s"][0] == _tree_sum(list(values), split_every)


def test_bundles_of_misaligned_sums_would_differ():
    """The reference is sensitive to the order: tasks of 8 leaves that each summed their own
    leaves (not aligned with a tree of 16) give another number for these values."""
    values = list(_values(300))
    per_task = [_left(values[i : i + 8]) for i in range(0, 300, 8)]
    assert _tree_sum(per_task, 16) != _tree_sum(values, 16)


@pytest.mark.parametrize(
    ("n_leaves", "slots", "expected"),
    [
        (16, 2, 8),  # one task per thread
        (16, 4, 4),
        (16, 3, 2),  # 8 tasks: 3 rounds of 2 leaves (6) beat 4 tasks of 4 on 3 threads (8)
        (15, 2, 8),
        (16, 1, 16),
        (1, 8, 1),
        (40, 0, 1),  # no worker yet
    ],
)
def test_leaves_per_task_ends_a_pass_in_the_fewest_rounds(n_leaves, slots, expected):
    assert leaves_per_task(n_leaves, slots, 1e6, 16) == expected


def test_leaves_per_task_respects_the_held_chunk_size_and_the_tree():
    assert leaves_per_task(64, 2, 100 * 2**20, 16) == 2  # at most 256 MiB in one held chunk
    assert leaves_per_task(64, 2, 1e6, 10) == 1  # split_every not a power of two: no alignment


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(7)
    means = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    X = means[rng.integers(3, size=60_000)] + rng.normal(size=(60_000, 3))
    path = str(tmp_path_factory.mktemp("bundles") / "X.zarr")
    zarr.create_array(path, data=X, chunks=(4_000, 3))  # 15 chunks: 15 leaves
    return {"path": path, "X": X, "means": means}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_held_data_on_a_cluster_runs_one_task_per_thread_with_the_streamed_numbers(client, store):
    from distributed import get_task_stream
    from sklearn.mixture import GaussianMixture as SKGaussianMixture

    kw = dict(n_components=3, means_init=store["means"], max_iter=4, tol=0.0, random_state=0)
    X = da.from_zarr(store["path"])
    streamed = GaussianMixture(persist=False, **kw).fit(X)
    with get_task_stream(client) as ts:
        held = GaussianMixture(persist=True, **kw).fit(X)
    stats = [t["key"] for t in ts.data if isinstance(t["key"], tuple)]
    stats = [k for k in stats if k[0].startswith("gmm-em-stats-") and "combine" not in k[0]]
    passes = {k[0] for k in stats}
    assert len(passes) == held.n_iter_
    assert len(stats) == 2 * len(passes)  # 15 leaves held as 2 chunks of 8 and 7: one task per worker
    assert_array_equal(held.means_, streamed.means_)
    assert_array_equal(held.covariances_, streamed.covariances_)
    assert_array_equal(held.weights_, streamed.weights_)
    assert held.lower_bounds_ == streamed.lower_bounds_
    sk = SKGaussianMixture(**kw).fit(store["X"])
    assert_allclose(held.means_, sk.means_, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bayesian_mixture_held_in_bundles_has_the_streamed_numbers(client, store):
    """The priors' pass over the data (its moments) and the initialisation run leaf by leaf too."""
    from sklearn.mixture import BayesianGaussianMixture as SKBayesian

    from daskgmm import BayesianGaussianMixture

    kw = dict(n_components=3, max_iter=3, tol=0.0, random_state=0)
    X = da.from_zarr(store["path"])
    streamed = BayesianGaussianMixture(persist=False, **kw).fit(X)
    held = BayesianGaussianMixture(persist=True, **kw).fit(X)
    assert_array_equal(held.means_, streamed.means_)
    assert_array_equal(held.covariances_, streamed.covariances_)
    assert_array_equal(held.weight_concentration_[0], streamed.weight_concentration_[0])
    assert held.lower_bounds_ == streamed.lower_bounds_
    sk = SKBayesian(**kw).fit(store["X"])
    assert_allclose(np.sort(held.means_, axis=0), np.sort(sk.means_, axis=0), rtol=1e-6, atol=1e-6)


def test_parameters_travel_inside_a_few_tasks_and_are_scattered_for_many(client):
    """The rule of :class:`daskgmm._graph.Passes`: pickled size times tasks against 1 MiB."""
    import pickle

    from dask._task_spec import DataNode
    from dask.delayed import Delayed
    from distributed import Future

    from daskgmm._graph import INLINE_PARAMS_BYTES, Passes
    from daskgmm._init import _stats_params

    ps = [_stats_params(np.zeros((16, 16)), "full", np.float64)]
    size = len(pickle.dumps(ps, protocol=5))
    few = INLINE_PARAMS_BYTES // size
    passes = Passes(client)
    inline = passes.params(ps, "few", tasks=few)
    assert isinstance(inline, DataNode) and inline.value is ps
    scattered = passes.params(ps, "many", tasks=few + 1)
    assert isinstance(scattered, Delayed) and scattered.key == "gmm-params-many"
    assert isinstance(dict(scattered.dask)[scattered.key], Future)  # held on the workers
    assert isinstance(Passes(None).params(ps, "local", tasks=1), Delayed)  # the local schedulers: a key
    passes.close()
