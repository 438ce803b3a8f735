"""BayesianGaussianMixture (issue 18): the same numbers as scikit-learn's, on the one engine.

Every fit here is checked against :class:`sklearn.mixture.BayesianGaussianMixture` fitted from
the same start (the same ``random_state`` gives the same initial responsibilities), or against
the true parameters of generated data. scikit-learn's own tests for the class run against
daskgmm's in tests/test_sklearn_suite.py.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SkBGM

from daskgmm import BayesianGaussianMixture, load
from daskgmm.checkpoint import read_checkpoint
from tests.conftest import make_mixture

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]
ATTRIBUTES = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_",
    "precisions_cholesky_",
    "mean_precision_",
    "degrees_of_freedom_",
    "mean_prior_",
    "covariance_prior_",
    "degrees_of_freedom_prior_",
    "weight_concentration_prior_",
    "mean_precision_prior_",
)
#: uneven row chunks of the 300 rows of ``X``
CHUNKS = ((41, 97, 12, 150), (3,))


@pytest.fixture(scope="module")
def X():
    # three groups far from the origin, fitted with twice as many components as needed
    return make_mixture(n_samples=300, n_features=3, n_components=3, seed=11)[0] + 20.0


@pytest.fixture(autouse=True)
def threads():
    with dask.config.set(scheduler="threads"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def assert_same_as_sklearn(ours, ref, rtol=1e-6):
    for name in ATTRIBUTES:
        np.testing.assert_allclose(
            np.asarray(getattr(ours, name)), np.asarray(getattr(ref, name)), rtol=rtol, atol=0, err_msg=name
        )
    np.testing.assert_allclose(
        np.asarray(ours.weight_concentration_), np.asarray(ref.weight_concentration_), rtol=rtol
    )
    # the lower bound is a total (scikit-learn's tied one is a 1-element array)
    assert ours.lower_bound_ == pytest.approx(float(np.ravel(ref.lower_bound_)[0]), rel=1e-8, abs=0)
    assert len(ours.lower_bounds_) == len(ref.lower_bounds_) == ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.lower_bounds_, np.ravel(ref.lower_bounds_), rtol=1e-8)
    assert ours.converged_ == ref.converged_


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind, init", [("numpy", "kmeans"), ("dask", "random_from_data")])
def test_parity_with_sklearn(X, covariance_type, prior_type, kind, init):
    params = dict(
        n_components=6,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        init_params=init,
        random_state=3,
        max_iter=30,
        tol=1e-6,
    )
    ref = SkBGM(**params).fit(X)
    data = X if kind == "numpy" else da.from_array(X, chunks=CHUNKS)
    ours = BayesianGaussianMixture(**params).fit(data)
    assert_same_as_sklearn(ours, ref)
    # predictions use the variational log-weights, as scikit-learn's _estimate_weighted_log_prob
    proba = np.asarray(ours.predict_proba(data))
    np.testing.assert_allclose(proba, ref.predict_proba(X), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ours.score_samples(data)), ref.score_samples(X), rtol=1e-8)
    np.testing.assert_array_equal(np.asarray(ours.predict(data)), ref.predict(X))


def test_it_switches_off_the_components_the_data_does_not_need():
    means = np.array([[-6.0, 0.0], [0.0, 5.0], [6.0, -1.0]])
    X, _, weights, means, _ = make_mixture(n_samples=1500, n_features=2, n_components=3, seed=2, means=means)
    gm = BayesianGaussianMixture(n_components=8, random_state=0, max_iter=300, tol=0.05).fit(X)
    kept = gm.weights_ > 1e-2
    assert kept.sum() == 3
    order = np.argsort(gm.means_[kept][:, 0])
    true = np.argsort(means[:, 0])
    np.testing.assert_allclose(gm.means_[kept][order], means[true], atol=0.1)
    np.testing.assert_allclose(gm.weights_[kept][order], weights[true], atol=0.03)


def test_n_init_keeps_the_best_lower_bound_like_sklearn(X):
    params = dict(n_components=5, n_init=3, init_params="random_from_data", random_state=0, max_iter=8)
    ref = SkBGM(**params).fit(X)
    ours = BayesianGaussianMixture(**params).fit(X)
    assert_same_as_sklearn(ours, ref)


def test_warm_start_continues_like_sklearn(X):
    params = dict(n_components=4, warm_start=True, max_iter=2, random_state=1, covariance_type="diag")
    ours, ref = BayesianGaussianMixture(**params), SkBGM(**params)
    for _ in range(3):
        ours.fit(X)
        ref.fit(X)
    assert_same_as_sklearn(ours, ref)


def test_sample_weight_counts_a_row_that_many_times():
    X, _, _, _, _ = make_mixture(n_samples=200, n_features=2, n_components=2, seed=5)
    w = np.random.RandomState(0).randint(1, 4, size=len(X))
    params = dict(n_components=2, covariance_type="full", random_state=0, max_iter=50)
    ref = SkBGM(**params).fit(np.repeat(X, w, axis=0))  # scikit-learn has no weights: repeat the rows
    ours = BayesianGaussianMixture(**params).fit(da.from_array(X, chunks=64), sample_weight=w)
    order = np.argsort(ours.means_[:, 0]), np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(ours.means_[order[0]], ref.means_[order[1]], rtol=1e-6)
    np.testing.assert_allclose(ours.covariance_prior_, ref.covariance_prior_, rtol=1e-10)
    np.testing.assert_allclose(ours.mean_prior_, ref.mean_prior_, rtol=1e-12)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-8)


def test_sample_weight_on_a_cluster_with_held_chunks_grouped_into_tasks(client):
    """Held data on a cluster is merged into coarse-task groups; the weights must be held
    chunked the same way (they were not, on the Bayesian path only)."""
    X, _, _, _, _ = make_mixture(n_samples=200, n_features=2, n_components=2, seed=5)
    w = np.random.RandomState(0).randint(1, 4, size=len(X))
    params = dict(n_components=2, covariance_type="full", random_state=0, max_iter=50)
    ref = SkBGM(**params).fit(np.repeat(X, w, axis=0))
    with dask.config.set({"daskgmm.chunks_per_task": 3}):
        ours = BayesianGaussianMixture(chunk_size=20, persist=True, **params).fit(X, sample_weight=w)
    order = np.argsort(ours.means_[:, 0]), np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(ours.means_[order[0]], ref.means_[order[1]], rtol=1e-6)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-8)


def test_given_priors_and_nan_policy_omit_equal_sklearn_on_the_complete_rows(X):
    holes = X.copy()
    holes[::7, 1] = np.nan
    complete = X[~np.isnan(holes).any(axis=1)]
    params = dict(
        n_components=4,
        covariance_type="tied",
        random_state=0,
        weight_concentration_prior=0.5,
        mean_precision_prior=0.3,
        mean_prior=np.full(3, 20.0),
        degrees_of_freedom_prior=4.5,
        covariance_prior=2.0 * np.eye(3),
    )
    ref = SkBGM(**params).fit(complete)
    ours = BayesianGaussianMixture(nan_policy="omit", **params).fit(da.from_array(holes, chunks=CHUNKS))
    assert_same_as_sklearn(ours, ref)
    labels = np.asarray(ours.predict(holes))
    assert (labels[::7] == -1).all()
    np.testing.assert_array_equal(labels[~np.isnan(holes).any(axis=1)], ref.predict(complete))


def test_marginalize_and_bad_priors_are_refused_with_clear_errors(X):
    with pytest.raises(ValueError, match="supports nan_policy 'raise' and 'omit', not 'marginalize'"):
        BayesianGaussianMixture(nan_policy="marginalize").fit(X)
    with pytest.raises(
        ValueError, match="'degrees_of_freedom_prior' should be greater than 2, but got 2.000"
    ):
        BayesianGaussianMixture(degrees_of_freedom_prior=2.0).fit(X)
    with pytest.raises(ValueError, match=r"'means' should have the shape of \(3,\), but got \(2,\)"):
        BayesianGaussianMixture(mean_prior=[0.0, 1.0]).fit(X)
    with pytest.raises(ValueError, match="'full precision' should be symmetric, positive-definite"):
        BayesianGaussianMixture(covariance_prior=-np.eye(3)).fit(X)
    with pytest.raises(ValueError, match="'diag precision' should be positive"):
        BayesianGaussianMixture(covariance_type="diag", covariance_prior=[1.0, 0.0, 1.0]).fit(X)
    with pytest.raises(ValueError, match=r"'mean_precision_prior' parameter .* range \(0.0, inf\)"):
        BayesianGaussianMixture(mean_precision_prior=0.0).fit(X)
    with pytest.raises(ValueError, match="'weight_concentration_prior_type' parameter"):
        BayesianGaussianMixture(weight_concentration_prior_type="dirichlet").fit(X)


def test_model_file_and_sklearn_interop_round_trip(X, tmp_path):
    ours = BayesianGaussianMixture(n_components=4, random_state=0, max_iter=20).fit(X)
    path = tmp_path / "bgm.npz"
    ours.save(path)
    back = load(path)
    assert type(back) is BayesianGaussianMixture
    for name in (*ATTRIBUTES, "lower_bound_", "n_iter_"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(ours, name)))
    np.testing.assert_array_equal(np.stack(back.weight_concentration_), np.stack(ours.weight_concentration_))
    np.testing.assert_array_equal(back.predict_proba(X), ours.predict_proba(X))
    sk = ours.to_sklearn()
    assert type(sk) is SkBGM
    # scikit-learn's own predictions from the copied posterior equal daskgmm's
    np.testing.assert_allclose(sk.predict_proba(X), ours.predict_proba(X), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(sk.score_samples(X), ours.score_samples(X), rtol=1e-12)
    ref = SkBGM(n_components=3, covariance_type="spherical", random_state=1).fit(X)
    theirs = BayesianGaussianMixture.from_sklearn(ref)
    np.testing.assert_allclose(theirs.score_samples(X), ref.score_samples(X), rtol=1e-12)
    with pytest.raises(TypeError, match="BayesianGaussianMixture, got GaussianMixture"):
        from sklearn.mixture import GaussianMixture as SkGMM

        BayesianGaussianMixture.from_sklearn(SkGMM(2).fit(X))


class Interrupt(Exception):
    pass


def test_checkpoint_resume_gives_the_uninterrupted_result(X, tmp_path):
    params = dict(n_components=5, n_init=2, max_iter=6, tol=0.0, random_state=4, covariance_type="full")
    data = da.from_array(X, chunks=CHUNKS)
    ref = BayesianGaussianMixture(**params).fit(data)
    ckpt = tmp_path / "c.npz"

    def stop(state, record):
        if (state.start, record["iteration"]) == (1, 3):
            raise Interrupt

    with pytest.raises(Interrupt):
        BayesianGaussianMixture(checkpoint=ckpt, **params).fit(data, callback=stop)
    meta, _ = read_checkpoint(ckpt)
    assert [s["n_iter"] for s in meta["states"]] == [3, 3]
    resumed = BayesianGaussianMixture(checkpoint=ckpt, **params).fit(data, resume=True)
    for name in (*ATTRIBUTES, "lower_bound_", "lower_bounds_"):
        np.testing.assert_array_equal(np.asarray(getattr(resumed, name)), np.asarray(getattr(ref, name)))
    with pytest.raises(ValueError, match="weight_concentration_prior"):
        BayesianGaussianMixture(checkpoint=ckpt, weight_concentration_prior=2.0, **params).fit(
            data, resume=True
        )


def test_zarr_and_xarray_input_stream_one_pass_per_iteration(X, tmp_path):
    xr = pytest.importorskip("xarray")
    path = str(tmp_path / "x.zarr")
    z = zarr.open(path, mode="w", shape=X.shape, chunks=(64, 3), dtype="f8")
    z[:] = X
    params = dict(n_components=4, random_state=0, covariance_type="diag", max_iter=10)
    ref = SkBGM(**params).fit(X)
    streamed = BayesianGaussianMixture(persist=False, **params).fit(path)
    assert_same_as_sklearn(streamed, ref)
    assert [r["bytes_read"] for r in streamed.history_] == [X.nbytes] * streamed.n_iter_
    arr = xr.DataArray(X, dims=("sample", "band"), coords={"sample": np.arange(len(X)) * 2})
    labels = BayesianGaussianMixture(**params).fit(arr).predict(arr)
    assert labels.name == "labels" and labels.dims == ("sample",)
    np.testing.assert_array_equal(labels.values, ref.predict(X))


def test_fit_predict_is_fit_then_predict_and_sample_draws_from_the_fit(X):
    gm = BayesianGaussianMixture(n_components=4, random_state=0, max_iter=3)
    labels = gm.fit_predict(X)
    np.testing.assert_array_equal(labels, gm.predict(X))
    Xs, ys = gm.sample(20_000)
    big = gm.weights_ > 0.2
    for k in np.flatnonzero(big):
        np.testing.assert_allclose(Xs[ys == k].mean(axis=0), gm.means_[k], atol=0.1)


@pytest.mark.slow
def test_streamed_fit_of_a_store_larger_than_worker_memory(tmp_path):
    """448 MB of float64 on one worker limited to 400 MiB (as tests/test_out_of_core.py does for
    GaussianMixture): the priors' pass, the initialisation and every iteration stream the store;
    the worker is neither paused nor restarted; the generating means are recovered."""
    from distributed import Client, LocalCluster

    from daskgmm.benchmarks.ooc import MemoryWatch, write_mixture_zarr

    n, d, k = 3_500_000, 16, 3
    path = str(tmp_path / "big.zarr")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="400MiB", processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
        client.as_current(),
    ):
        true_means = write_mixture_zarr(path, n, d, k, chunk_rows=125_000, seed=1)
        gm = BayesianGaussianMixture(
            n_components=k,
            covariance_type="diag",
            max_iter=3,
            tol=0.0,
            random_state=0,
            init_sample_size=20_000,
        )
        with MemoryWatch(client) as watch:
            gm.fit(path)
    data_bytes = n * d * 8
    assert [r["bytes_read"] for r in gm.history_] == [data_bytes] * 3
    assert not watch.paused and not watch.restarted
    assert 0 < watch.peak_worker < 400 * 2**20
    assert watch.peak_driver - watch.start_driver < data_bytes / 5
    kept = gm.means_[gm.weights_ > 0.05]
    err = np.linalg.norm(kept[:, None, :] - true_means[None], axis=2).min(axis=0)
    assert err.max() < 0.05
