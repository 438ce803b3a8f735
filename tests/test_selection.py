"""Many models per data pass: ``select_model`` and ``n_init > 1``.

References: separate ``daskgmm.GaussianMixture`` fits per candidate (same numbers),
scikit-learn's sequential restarts for ``n_init`` (same random stream), and the
graph: one ``compute`` per iteration whatever the number of candidates.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGMM

from daskgmm import GaussianMixture, ModelSelection, select_model
from tests.conftest import make_mixture


@pytest.fixture(scope="module")
def data():
    X, *_ = make_mixture(n_samples=900, n_features=3, n_components=3, seed=3)
    return X


def test_select_model_equals_separate_fits(data):
    X = da.from_array(data, chunks=200)
    res = select_model(
        X, n_components=[1, 2, 3, 4], covariance_types=("full", "diag"), random_state=0, tol=1e-3
    )
    assert isinstance(res, ModelSelection)
    assert len(res.table) == 8 and len(res.estimators) == 8
    for est, row in zip(res.estimators, res.table):
        ref = GaussianMixture(
            row["n_components"], covariance_type=row["covariance_type"], random_state=0, tol=1e-3
        ).fit(X)
        np.testing.assert_allclose(est.means_, ref.means_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(est.covariances_, ref.covariances_, rtol=1e-9, atol=1e-12)
        assert est.n_iter_ == ref.n_iter_ and est.converged_ == ref.converged_
        assert row["bic"] == pytest.approx(ref.bic(X), rel=1e-10)
        assert row["aic"] == pytest.approx(ref.aic(X), rel=1e-10)
    # the true model (3 full components) wins on BIC
    assert (res.best_estimator.n_components, res.best_estimator.covariance_type) == (3, "full")
    assert res.table[res.best_index]["bic"] == min(r["bic"] for r in res.table)
    assert "<- best" in str(res)


def test_select_model_equals_separate_fits_on_a_sample(data):
    """k-means on a drawn sample (n > init_sample_size): the shared sample is the one each fit draws."""
    X = da.from_array(data, chunks=250)
    for init in ("kmeans", "k-means++"):
        kw = dict(random_state=3, init_sample_size=200, init_params=init, tol=1e-3)
        res = select_model(X, [2, 3], covariance_types=("full", "tied"), **kw)
        for est, row in zip(res.estimators, res.table):
            ref = GaussianMixture(row["n_components"], covariance_type=row["covariance_type"], **kw).fit(X)
            np.testing.assert_array_equal(est.means_, ref.means_)
            np.testing.assert_array_equal(est.covariances_, ref.covariances_)


def test_select_model_aic_and_scikit_learn(data):
    res = select_model(
        data, n_components=range(1, 4), covariance_types="spherical", criterion="aic", random_state=1
    )
    for row in res.table:
        sk = SkGMM(row["n_components"], covariance_type="spherical", random_state=1).fit(data)
        assert row["aic"] == pytest.approx(sk.aic(data), rel=1e-9)
    assert res.criterion == "aic"
    assert res.best_index == int(np.argmin([r["aic"] for r in res.table]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_one_pass_per_iteration_for_all_candidates(data, monkeypatch):
    """A sweep computes once per iteration of its slowest candidate (+ inits + the final pass)."""
    X = da.from_array(data, chunks=300)
    calls = []
    import daskgmm._graph as graph

    real = graph._local_compute  # what a pass on a local scheduler calls

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(graph, "_local_compute", counting)
    res = select_model(
        X, n_components=[2, 3, 4], random_state=0, max_iter=15, tol=1e-3, init_params="random_from_data"
    )
    slowest = max(r["n_iter"] for r in res.table)
    # EM passes + one final log-likelihood pass, all through the engine's statistics_pass
    assert len(calls) == slowest + 1


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_n_init_costs_one_pass_per_iteration(data, monkeypatch):
    import daskgmm._graph as graph

    calls = []
    real = graph._local_compute  # what a pass on a local scheduler calls
    monkeypatch.setattr(graph, "_local_compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    gm = GaussianMixture(3, n_init=4, max_iter=6, tol=0.0, init_params="random_from_data", random_state=0)
    gm.fit(da.from_array(data, chunks=300))
    assert gm.n_iter_ == 6 and len(calls) == 6  # not 4 x 6


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_n_init_matches_scikit_learn_restarts(covariance_type, data):
    kw = dict(
        n_components=3, covariance_type=covariance_type, n_init=3, random_state=2, tol=1e-3, max_iter=25
    )
    sk = SkGMM(**kw).fit(data)
    gm = GaussianMixture(**kw).fit(data)
    np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, sk.covariances_, rtol=1e-8, atol=1e-10)
    assert gm.n_iter_ == sk.n_iter_
    assert gm.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-10)


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_n_init_picks_best_start(data):
    """With random starts, the kept start has the largest lower bound of separate single-start fits."""
    rs = np.random.RandomState(5)
    gm = GaussianMixture(3, n_init=3, init_params="random", random_state=rs, max_iter=20).fit(data)
    rs = np.random.RandomState(5)
    bounds = [
        GaussianMixture(3, init_params="random", random_state=rs, max_iter=20).fit(data).lower_bound_
        for _ in range(3)
    ]
    assert len(set(bounds)) == 3  # the starts differ
    assert gm.lower_bound_ == pytest.approx(max(bounds), rel=1e-10)


def test_select_model_refuses_bad_arguments(data):
    with pytest.raises(ValueError, match="criterion must be 'bic' or 'aic'"):
        select_model(data, [1, 2], criterion="icl")
    with pytest.raises(ValueError, match="Unknown covariance type"):
        select_model(data, [1, 2], covariance_types=("full", "banana"))
    with pytest.raises(ValueError, match="does not take 'means_init'"):
        select_model(data, [1, 2], means_init=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        select_model(data[:3], [2, 5])


def test_bench_rows_run_small():
    """The ``daskgmm bench --beyond`` rows on tiny data: the sweep finds the same models and BIC."""
    from daskgmm.benchmarks.beyond import bench_beyond, format_beyond

    rows = bench_beyond(
        n=2000,
        d=2,
        k_true=2,
        candidates=2,
        incr_n=2000,
        incr_d=2,
        incr_k=2,
        incr_chunks=4,
        incr_refresh=2,
        max_iter=15,
    )
    assert rows[0]["same_models_and_bic"] is True
    assert rows[0]["sweep_em_passes"] < rows[0]["separate_em_passes"]
    assert rows[1]["incr_final_ll"] == pytest.approx(rows[1]["full_final_ll"], abs=0.05)
    assert "incremental EM" in format_beyond(rows)


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_on_a_real_cluster(client, data):
    """Worker processes run the multi-candidate and marginalising kernels (pickled, no driver state)."""
    X = da.from_array(data, chunks=300)
    Xm = data.copy()
    Xm[::7, 1] = np.nan
    Xm = da.from_array(Xm, chunks=300)
    kw = dict(random_state=0, max_iter=3, init_params="random_from_data")
    res = select_model(X, [2, 3], covariance_types="tied", **kw)
    gm = GaussianMixture(3, nan_policy="marginalize", **kw).fit(Xm)
    with dask.config.set(scheduler="sync"):
        ref = select_model(X, [2, 3], covariance_types="tied", **kw)
        gm_ref = GaussianMixture(3, nan_policy="marginalize", **kw).fit(Xm)
    for a, b in zip(res.table, ref.table):
        assert a["bic"] == pytest.approx(b["bic"], rel=1e-12)
    np.testing.assert_allclose(gm.means_, gm_ref.means_, rtol=1e-12)
