"""daskgmm follows scikit-learn's EM step for step.

Reference: ``sklearn.mixture.GaussianMixture`` on the same data with the same
initial parameters (or the same ``random_state`` on data within the init sample).
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.datasets import load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGMM

from daskgmm import GaussianMixture
from tests.conftest import make_mixture

COVARIANCE_TYPE = ("full", "tied", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
RTOL = 1e-6


def _datasets():
    X_syn, *_ = make_mixture(n_samples=700, n_features=4, n_components=3, seed=1)
    X_iris = load_iris().data
    X_wine = load_wine().data
    X_wine = (X_wine - X_wine.mean(0)) / X_wine.std(0)
    return {"synthetic": (X_syn, 3), "iris": (X_iris, 3), "wine": (X_wine, 3)}


DATASETS = _datasets()


def uneven_dask(X):
    """Uneven row chunks with an empty chunk in the middle."""
    n = X.shape[0]
    a, b = n // 7, n // 2
    chunks = (a, 0, b - a, n - b)
    return da.from_array(X, chunks=(chunks, X.shape[1]))


def initial_params(X, k, covariance_type, seed=0):
    """Initial parameters from a 1-iteration scikit-learn fit (a realistic start)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGMM(k, covariance_type=covariance_type, max_iter=1, random_state=seed).fit(X)
    return dict(weights_init=ref.weights_, means_init=ref.means_, precisions_init=ref.precisions_)


def fit_both(X_ref, X_ours, k, covariance_type, max_iter=8, **init):
    kw = dict(covariance_type=covariance_type, max_iter=max_iter, tol=0.0, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGMM(k, **kw).fit(X_ref)
        ours = GaussianMixture(k, **kw).fit(X_ours)
    return ref, ours


def assert_same_params(ref, ours, rtol=RTOL, lb_tol=1e-8):
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=rtol)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.precisions_, ref.precisions_, rtol=rtol, atol=1e-10)
    assert abs(ours.lower_bound_ - ref.lower_bound_) < lb_tol
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-9)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
@pytest.mark.parametrize("kind", ["numpy", "dask-uneven"])
def test_given_init_matches_sklearn(dataset, covariance_type, kind):
    X, k = DATASETS[dataset]
    init = initial_params(X, k, covariance_type)
    Xo = X if kind == "numpy" else uneven_dask(X)
    ref, ours = fit_both(X, Xo, k, covariance_type, **init)
    assert_same_params(ref, ours)

    # predictions agree too (and keep the input's kind)
    labels = ours.predict(Xo)
    scores = ours.score_samples(Xo)
    proba = ours.predict_proba(Xo)
    if kind != "numpy":
        assert isinstance(labels, da.Array) and labels.chunks[0] == Xo.chunks[0]
        assert proba.chunks == (Xo.chunks[0], (k,))
        labels, scores, proba = da.compute(labels, scores, proba)
    else:
        assert isinstance(labels, np.ndarray)
    np.testing.assert_array_equal(labels, ref.predict(X))
    np.testing.assert_allclose(scores, ref.score_samples(X), rtol=1e-9)
    np.testing.assert_allclose(proba, ref.predict_proba(X), atol=1e-9)
    np.testing.assert_allclose(ours.score(Xo), ref.score(X), rtol=1e-10)
    np.testing.assert_allclose(ours.bic(Xo), ref.bic(X), rtol=1e-10)
    np.testing.assert_allclose(ours.aic(Xo), ref.aic(X), rtol=1e-10)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_the_numpy_kernel_matches_sklearn_as_the_compiled_one_does(dataset, covariance_type):
    # the default (daskgmm.kernel = "auto") runs the compiled kernel (the test above); "numpy"
    # runs the numpy kernel, the fallback where numba cannot be imported
    import dask

    X, k = DATASETS[dataset]
    init = initial_params(X, k, covariance_type)
    with dask.config.set({"daskgmm.kernel": "numpy"}):
        ref, ours = fit_both(X, uneven_dask(X), k, covariance_type, **init)
    assert_same_params(ref, ours)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
@pytest.mark.parametrize("init_params", INIT_PARAMS)
def test_same_random_state_matches_sklearn(covariance_type, init_params):
    """Data within init_sample_size: the initialisation draws scikit-learn's random stream."""
    X, k = DATASETS["synthetic"]
    kw = dict(covariance_type=covariance_type, init_params=init_params, random_state=3, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGMM(k, **kw).fit(X)
        ours = GaussianMixture(k, **kw).fit(X)
    assert_same_params(ref, ours)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_n_init_and_fit_predict_match_sklearn(covariance_type):
    """Restarts reach scikit-learn's best solution.

    Here several starts reach the same optimum with permuted labels; which of these
    exact ties wins depends on 1e-16 rounding in scikit-learn itself, so the solution
    is compared up to a permutation of the components.
    """
    X, k = DATASETS["iris"]
    kw = dict(covariance_type=covariance_type, n_init=3, random_state=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGMM(k, **kw)
        ref_labels = ref.fit_predict(X)
        ours = GaussianMixture(k, **kw)
        our_labels = ours.fit_predict(X)
    perm = [int(np.argmin(np.linalg.norm(ours.means_ - m, axis=1))) for m in ref.means_]
    assert sorted(perm) == list(range(k))
    np.testing.assert_allclose(ours.weights_[perm], ref.weights_, rtol=RTOL)
    np.testing.assert_allclose(ours.means_[perm], ref.means_, rtol=RTOL)
    if covariance_type != "tied":
        np.testing.assert_allclose(ours.covariances_[perm], ref.covariances_, rtol=RTOL)
    else:
        np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=RTOL)
    assert abs(ours.lower_bound_ - ref.lower_bound_) < 1e-8
    np.testing.assert_array_equal(np.asarray(perm)[ref_labels], our_labels)
    np.testing.assert_array_equal(our_labels, ours.predict(X))


def test_warm_start_matches_sklearn():
    X, k = DATASETS["synthetic"]
    kw = dict(warm_start=True, max_iter=2, random_state=0, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, ours = SkGMM(k, **kw), GaussianMixture(k, **kw)
        for _ in range(3):
            ref.fit(X)
            ours.fit(X)
    assert_same_params(ref, ours)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_sample_matches_sklearn(covariance_type):
    X, k = DATASETS["synthetic"]
    init = initial_params(X, k, covariance_type)
    ref, ours = fit_both(X, X, k, covariance_type, max_iter=3, **init)
    ref.random_state = ours.random_state = 7
    Xs_ref, ys_ref = ref.sample(500)
    Xs, ys = ours.sample(500)
    np.testing.assert_allclose(Xs, Xs_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ys, ys_ref)


def test_max_iter_zero_keeps_initial_parameters():
    X, k = DATASETS["iris"]
    kw = dict(max_iter=0, random_state=0)
    ref = SkGMM(k, **kw).fit(X)
    ours = GaussianMixture(k, **kw).fit(X)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=RTOL)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=RTOL)
    assert ours.n_iter_ == 0 and not ours.converged_


@pytest.mark.parametrize("kind", ["zarr-array", "zarr-path", "xarray", "xarray-dask", "int"])
def test_other_inputs_give_the_same_fit(kind, tmp_path):
    X, k = DATASETS["synthetic"]
    if kind == "int":
        X = np.round(X * 10).astype(np.int64)
    init = initial_params(X.astype(float), k, "full")
    if kind.startswith("zarr"):
        z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=X.shape, chunks=(128, 2), dtype=X.dtype)
        z[:] = X
        Xo = z if kind == "zarr-array" else str(tmp_path / "x.zarr")
    elif kind.startswith("xarray"):
        data = X if kind == "xarray" else da.from_array(X, chunks=(100, 4))
        Xo = xr.DataArray(
            data,
            dims=("sample", "feature"),
            coords={"sample": np.arange(X.shape[0]) * 10, "feature": list("abcd")},
        )
    else:
        Xo = X
    ref, ours = fit_both(X.astype(float), Xo, k, "full", **init)
    assert_same_params(ref, ours)
    labels = ours.predict(Xo)
    if kind.startswith("xarray"):
        assert isinstance(labels, xr.DataArray)
        assert labels.dims == ("sample",) and labels.name == "labels"
        np.testing.assert_array_equal(labels["sample"].values, np.arange(X.shape[0]) * 10)
        proba = ours.predict_proba(Xo)
        assert proba.dims == ("sample", "component") and proba.shape == (X.shape[0], k)
        assert proba.name == "probabilities" and ours.score_samples(Xo).name == "log_density"
        labels = labels.values
    elif kind.startswith("zarr"):
        assert isinstance(labels, da.Array) and labels.chunks[0] == (128,) * 5 + (60,)
        labels = labels.compute()
    np.testing.assert_array_equal(labels, ref.predict(X.astype(float)))


def test_unknown_chunk_sizes_give_the_same_fit():
    X, k = DATASETS["synthetic"]
    init = initial_params(X, k, "diag")
    Xd = da.from_array(X, chunks=(100, 4))
    Xd = Xd[Xd[:, 0] > -np.inf]  # boolean indexing: chunk sizes become unknown (nan)
    assert any(np.isnan(c) for c in Xd.chunks[0])
    ref, ours = fit_both(X, Xd, k, "diag", **init)
    assert_same_params(ref, ours)


def test_float32_input_stays_float32_and_is_close_to_float64():
    X, k = DATASETS["synthetic"]
    init = initial_params(X, k, "full")
    X32 = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m64 = GaussianMixture(k, max_iter=10, tol=0, **init).fit(X)
        last = {}
        m32 = GaussianMixture(k, max_iter=10, tol=0, **init).fit(
            da.from_array(X32, chunks=(200, 4)),
            callback=lambda state, rec: last.__setitem__("p", state.params),
        )
    # statistics and M-step in float64; the attributes are that result rounded once to the
    # data's dtype, as scikit-learn returns them
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert getattr(m32, name).dtype == np.float32, name
    np.testing.assert_array_equal(m32.means_, last["p"].means.astype(np.float32))
    np.testing.assert_array_equal(m32.covariances_, last["p"].covariances.astype(np.float32))
    np.testing.assert_allclose(m32.means_, m64.means_, atol=1e-4)
    np.testing.assert_allclose(m32.covariances_, m64.covariances_, atol=1e-4)
    proba = m32.predict_proba(da.from_array(X32, chunks=(200, 4)))
    assert proba.dtype == np.float32


def test_data_far_from_origin_is_stable():
    """Moments about the current means: no cancellation for data offset by 1e6."""
    X, k = DATASETS["synthetic"]
    init = initial_params(X, k, "full")
    shifted = dict(init, means_init=init["means_init"] + 1e6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        base = GaussianMixture(k, max_iter=5, tol=0, **init).fit(X)
        far = GaussianMixture(k, max_iter=5, tol=0, **shifted).fit(X + 1e6)
    np.testing.assert_allclose(far.means_ - 1e6, base.means_, atol=1e-6)
    np.testing.assert_allclose(far.covariances_, base.covariances_, rtol=1e-6, atol=1e-8)


def test_recovers_true_parameters():
    X, _, weights, means, covariances = make_mixture(n_samples=20_000, n_features=2, n_components=3, seed=5)
    gm = GaussianMixture(3, random_state=0, tol=1e-6, max_iter=300).fit(da.from_array(X, chunks=(3_000, 2)))
    order = [int(np.argmin(np.linalg.norm(gm.means_ - m, axis=1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(gm.means_[order], means, atol=0.1)
    np.testing.assert_allclose(gm.weights_[order], weights, atol=0.02)
    np.testing.assert_allclose(gm.covariances_[order], covariances, atol=0.1)


def test_fit_on_a_multi_process_cluster_equals_threaded_fit(client):
    X, k = DATASETS["synthetic"]
    Xd = uneven_dask(X)
    init = initial_params(X, k, "full")
    ref, ours = fit_both(X, Xd, k, "full", **init)
    assert_same_params(ref, ours)
    # the `client` fixture makes its client the scheduler inside this test
    assert client.status == "running"
    labels = ours.predict(Xd).compute()
    np.testing.assert_array_equal(labels, ref.predict(X))
