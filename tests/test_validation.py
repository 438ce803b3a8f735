"""Bad input gets a clear, early error that names the problem and the fix."""

from __future__ import annotations

import os
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.callbacks import Callback
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from daskgmm import GaussianMixture
from tests.conftest import make_mixture


@pytest.fixture
def X():
    return make_mixture(n_samples=300, n_features=3, n_components=2, seed=0)[0]


def given_init(X, k=2):
    """Initial parameters, so fit() makes no initialisation pass."""
    rng = np.random.RandomState(0)
    means = X[rng.choice(len(X), k, replace=False)]
    return dict(
        weights_init=np.full(k, 1 / k), means_init=means, precisions_init=np.stack([np.eye(X.shape[1])] * k)
    )


class CountComputes(Callback):
    """Counts graph executions (dask.compute calls) on the local schedulers."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


# ---------------------------------------------------------------------------
# values: NaN / inf found during the first pass, not by an extra one
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [(np.nan, "contains NaN"), (np.inf, "contains infinity")])
def test_non_finite_values_are_found_in_the_first_pass(X, bad, match):
    X = X.copy()
    X[217, 1] = bad
    Xd = da.from_array(X, chunks=(50, 3))
    with CountComputes() as counter, pytest.raises(ValueError, match=match):
        GaussianMixture(2, **given_init(X)).fit(Xd)
    assert counter.n == 1  # the error came from the first EM pass itself


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_values_at_predict(X, bad):
    gm = GaussianMixture(2, random_state=0).fit(X)
    Xb = X.copy()
    Xb[3, 0] = bad
    for method in (gm.predict, gm.predict_proba, gm.score_samples):
        with pytest.raises(ValueError, match="NaN|infinity"):
            method(Xb)
    # lazy input: the error surfaces when the result is computed
    with pytest.raises(ValueError, match="NaN|infinity"):
        gm.predict(da.from_array(Xb, chunks=(100, 3))).compute()


EXTREME = "holds the value -3.4e\\+38 \\(row 17 of its chunk, feature 1\\).*undeclared nodata value"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("init", ["given", "kmeans", "random"])
def test_finite_values_whose_squares_overflow_are_named_in_the_first_pass(X, init):
    """GDAL's float32 nodata (-3.4e38) is not silently modelled: the error names it."""
    X32 = X.astype(np.float32)
    X32[217, 1] = np.float32(-3.4e38)
    Xd = da.from_array(X32, chunks=(100, 3))
    kwargs = given_init(X32) if init == "given" else {"init_params": init, "random_state": 0}
    with CountComputes() as counter, pytest.raises(ValueError, match=EXTREME):
        GaussianMixture(2, **kwargs).fit(Xd)
    if init == "given":
        assert counter.n == 1  # the error came from the first EM pass itself


@pytest.mark.parametrize("fit_dtype", [np.float32, np.float64])
def test_finite_values_whose_squares_overflow_at_predict_and_segment(X, fit_dtype):
    import daskgmm

    gm = GaussianMixture(2, random_state=0).fit(X.astype(fit_dtype))
    Xb = X.astype(np.float32)
    Xb[17, 1] = np.float32(-3.4e38)
    for method in (gm.predict, gm.predict_proba, gm.score_samples):
        with pytest.raises(ValueError, match=EXTREME):
            method(Xb)
    with pytest.raises(ValueError, match=EXTREME):
        daskgmm.image.predict_image(gm, Xb.reshape(30, 10, 3)).labels.compute()


def test_nan_with_default_init_on_numpy(X):
    X = X.copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2, random_state=0).fit(X)


# ---------------------------------------------------------------------------
# metadata: dtype, ndim, sizes
# ---------------------------------------------------------------------------
def test_non_numeric_dtype_numpy():
    with pytest.raises(ValueError, match="could not convert|must be a string or a.* number"):
        GaussianMixture(2).fit(np.array([["a", "b"], ["c", "d"], ["e", "f"]], dtype=object))


def test_non_numeric_dtype_dask():
    Xs = da.from_array(np.array([["a", "b"], ["c", "d"], ["e", "f"]]), chunks=2)
    with pytest.raises(ValueError, match="not numeric.*astype"):
        GaussianMixture(2).fit(Xs)


def test_complex_dtype_dask():
    Xc = da.from_array(np.ones((5, 2), dtype=complex), chunks=2)
    with pytest.raises(ValueError, match="Complex data not supported"):
        GaussianMixture(2).fit(Xc)


@pytest.mark.parametrize("shape", [(20,), (4, 5, 2)])
def test_wrong_ndim(shape):
    arr = np.random.RandomState(0).rand(*shape)
    with pytest.raises(ValueError, match="Expected 2D array|Found array with dim 3"):
        GaussianMixture(2).fit(arr)
    with pytest.raises(ValueError, match="Expected 2D array.*reshape"):
        GaussianMixture(2).fit(da.from_array(arr))


def test_no_samples():
    with pytest.raises(ValueError, match="0 sample"):
        GaussianMixture(1).fit(np.empty((0, 3)))
    with pytest.raises(ValueError, match="0 sample.*minimum of 2"):
        GaussianMixture(1).fit(da.zeros((0, 3), chunks=1))


def test_no_features():
    with pytest.raises(ValueError, match="0 feature"):
        GaussianMixture(1).fit(da.zeros((10, 0), chunks=5))


def test_more_components_than_samples(X):
    with pytest.raises(
        ValueError, match="Expected n_samples >= n_components but got n_components = 5, n_samples = 4"
    ):
        GaussianMixture(5).fit(X[:4])
    with pytest.raises(ValueError, match="n_components = 5, n_samples = 4"):
        GaussianMixture(5).fit(da.from_array(X[:4], chunks=2))


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_components=0), "'n_components' parameter .* int in the range \\[1, inf\\). Got 0"),
        (dict(n_components=1.5), "'n_components' parameter"),
        (dict(covariance_type="cholesky"), "'covariance_type' parameter .* among"),
        (dict(init_params="median"), "'init_params' parameter .* among"),
        (dict(tol=-1.0), "'tol' parameter .* float in the range \\[0.0, inf\\)"),
        (dict(reg_covar=-1e-6), "'reg_covar' parameter"),
        (dict(max_iter=-1), "'max_iter' parameter .* \\[0, inf\\)"),
        (dict(n_init=0), "'n_init' parameter .* \\[1, inf\\)"),
        (dict(verbose_interval=0), "'verbose_interval' parameter"),
        (dict(chunk_size=0), "'chunk_size' parameter"),
        (dict(split_every=1), "'split_every' parameter .* \\[2, inf\\)"),
    ],
)
def test_invalid_parameters(X, params, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**params).fit(X)


def test_init_arrays_of_the_wrong_shape(X):
    good = given_init(X)
    with pytest.raises(ValueError, match="'weights' should have the shape of \\(2,\\), but got \\(3,\\)"):
        GaussianMixture(2, weights_init=np.full(3, 1 / 3)).fit(X)
    with pytest.raises(ValueError, match="'means' should have the shape of \\(2, 3\\)"):
        GaussianMixture(2, means_init=good["means_init"][:, :2]).fit(X)
    with pytest.raises(ValueError, match="'full precision' should have the shape of \\(2, 3, 3\\)"):
        GaussianMixture(2, precisions_init=np.eye(3)).fit(X)
    with pytest.raises(ValueError, match="'diag precision' should have the shape of \\(2, 3\\)"):
        GaussianMixture(2, covariance_type="diag", precisions_init=np.ones(2)).fit(X)


def test_init_weights_must_be_normalised_and_in_range(X):
    with pytest.raises(
        ValueError, match="'weights' should be normalized, but got sum\\(weights\\) = 0.80000"
    ):
        GaussianMixture(2, weights_init=[0.4, 0.4]).fit(X)
    with pytest.raises(ValueError, match="'weights' should be in the range \\[0, 1\\]"):
        GaussianMixture(2, weights_init=[1.5, -0.5]).fit(X)


def test_float32_weights_are_checked_with_the_float32_tolerance(X):
    """scikit-learn sums float32 weights in float32 and allows 1e-6 (1e-8 for float64)."""
    w32 = np.full(3, 1 / 3, dtype=np.float32)  # 1 in float32, 1 - 3e-8 in float64
    assert abs(1.0 - w32.astype(np.float64).sum()) > 1e-8
    GaussianMixture(3, weights_init=w32, max_iter=0).fit(X)
    with pytest.raises(ValueError, match="'weights' should be normalized"):
        GaussianMixture(3, weights_init=w32.astype(np.float64)).fit(X)
    with pytest.raises(ValueError, match="'weights' should be normalized"):
        GaussianMixture(2, weights_init=np.array([0.5, 0.500002], dtype=np.float32)).fit(X)
    with pytest.raises(ValueError, match="'weights' should be normalized"):
        GaussianMixture(2, weights_init=np.array([0.5, 0.5 + 1e-7])).fit(X)


def test_nan_tags_follow_nan_policy():
    assert not GaussianMixture().__sklearn_tags__().input_tags.allow_nan
    for policy in ("omit", "marginalize"):
        assert GaussianMixture(nan_policy=policy).__sklearn_tags__().input_tags.allow_nan


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "tied"])
def test_one_row_component_without_regularisation_carries_on(covariance_type):
    """scikit-learn's 10*eps term keeps a one-row component's variance positive (reg_covar=0)."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X = np.random.RandomState(0).uniform(size=(30, 3))
    precisions = np.array([1e6, 1e6, 553.8, 204.8, 15.9, 85.5])
    if covariance_type == "diag":
        precisions = np.repeat(precisions[:, None], 3, axis=1)
    elif covariance_type == "tied":
        precisions = np.eye(3) * 50.0
    init = dict(
        weights_init=np.array([1, 1, 2, 2, 21, 3]) / 30,
        means_init=X[[0, 5, 9, 13, 17, 21]],
        precisions_init=precisions,
    )
    kw = dict(n_components=6, covariance_type=covariance_type, reg_covar=0, max_iter=1, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(**kw).fit(X)
        ref = SkGaussianMixture(**kw).fit(X)
    assert np.all(np.isfinite(ours.precisions_cholesky_))
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-10)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-10)
    # a one-row variance is 10 eps x² in both, up to scikit-learn's own cancellation noise
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=0.5)


def test_array_api_inputs_are_converted_at_the_boundary(X, monkeypatch):
    """array-api-strict input (also on its second device, under array_api_dispatch) fits and
    predicts as the same data in NumPy; results are NumPy arrays."""
    import sklearn

    xp = pytest.importorskip("array_api_strict")
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")  # scikit-learn refuses dispatch without it
    X32 = X.astype(np.float32)
    kw = dict(init_params="random_from_data", random_state=0)
    ref = GaussianMixture(2, weights_init=np.array([0.5, 0.5], np.float32), **kw).fit(X32)
    for device in (xp.Device("CPU_DEVICE"), xp.Device("device1")):
        Xx = xp.asarray(X32, device=device)
        w = xp.asarray(np.array([0.5, 0.5], np.float32), device=device)
        with sklearn.config_context(array_api_dispatch=True):
            gm = GaussianMixture(2, weights_init=w, **kw).fit(Xx, sample_weight=xp.ones(300, device=device))
            proba = gm.predict_proba(Xx)
        assert isinstance(proba, np.ndarray) and proba.dtype == np.float32
        np.testing.assert_array_equal(gm.means_, ref.means_)
        np.testing.assert_array_equal(proba, ref.predict_proba(X32))
    np.testing.assert_array_equal(
        GaussianMixture(2, **kw).fit(xp.asarray(X)).means_, GaussianMixture(2, **kw).fit(X).means_
    )


def test_array_api_input_off_the_host_gets_a_clear_error():
    class DeviceArray:  # an array that cannot reach host memory (like a CUDA PyTorch tensor)
        device = "cuda:0"

        def __dlpack__(self, **kwargs):
            raise BufferError("device")

        def __array__(self, *args, **kwargs):
            raise TypeError("cannot convert")

    with pytest.raises(TypeError, match=r"computes with NumPy and Dask on the CPU.*X.cpu\(\).numpy\(\)"):
        GaussianMixture(2).fit(DeviceArray())


def test_init_precisions_must_be_positive_definite(X):
    bad = np.stack([np.eye(3), -np.eye(3)])
    with pytest.raises(ValueError, match="'full precision' should be symmetric, positive-definite"):
        GaussianMixture(2, precisions_init=bad).fit(X)
    with pytest.raises(ValueError, match="'spherical precision' should be positive"):
        GaussianMixture(2, covariance_type="spherical", precisions_init=[1.0, 0.0]).fit(X)


def test_collapsed_component_gets_sklearns_error():
    # three identical points and K=2, no regularisation: a singular covariance
    X = np.vstack([np.zeros((5, 2)), np.ones((5, 2))])
    init = dict(
        weights_init=[0.5, 0.5], means_init=[[0, 0], [1, 1]], precisions_init=np.stack([np.eye(2)] * 2)
    )
    with pytest.raises(
        ValueError, match="ill-defined empirical covariance.*increase reg_covar, or scale the input data"
    ):
        GaussianMixture(2, reg_covar=0.0, **init).fit(X)
    with pytest.raises(ValueError, match="passing float64 data instead of float32"):
        GaussianMixture(2, reg_covar=0.0, **init).fit(X.astype(np.float32))


# ---------------------------------------------------------------------------
# fitted-model use
# ---------------------------------------------------------------------------
def test_predict_before_fit(X):
    for method in ("predict", "predict_proba", "score_samples", "score", "bic", "aic"):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            getattr(GaussianMixture(2), method)(X)
    with pytest.raises(NotFittedError):
        GaussianMixture(2).sample(3)


def test_wrong_number_of_features_at_predict(X):
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(
        ValueError, match="X has 2 features, but GaussianMixture is expecting 3 features as input"
    ):
        gm.predict(X[:, :2])
    with pytest.raises(ValueError, match="X has 4 features, but GaussianMixture is expecting 3 features"):
        gm.score_samples(da.from_array(np.hstack([X, X[:, :1]]), chunks=(100, 2)))


def test_sample_needs_a_positive_count(X):
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="at least one sample"):
        gm.sample(0)


# ---------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------
def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="No Zarr array at .*does not exist"):
        GaussianMixture(2).fit(str(tmp_path / "missing.zarr"))


def test_path_to_a_group_names_its_arrays(tmp_path, X):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("pixels", shape=X.shape, dtype=X.dtype)
    with pytest.raises(ValueError, match="is a Zarr group; choose an array .*g.zarr/pixels"):
        GaussianMixture(2).fit(str(tmp_path / "g.zarr"))


def test_feature_axis_is_rechunked_for_the_user(X):
    Xd = da.from_array(X, chunks=(100, 1))
    gm = GaussianMixture(2, random_state=0).fit(Xd)
    labels = gm.predict(Xd)
    assert labels.chunks == ((100, 100, 100),)
    ref = GaussianMixture(2, random_state=0).fit(X)
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-10)


def test_one_compute_per_em_iteration(X):
    Xd = da.from_array(X, chunks=(60, 3))
    gm = GaussianMixture(2, max_iter=4, tol=0.0, **given_init(X))
    with dask.config.set(scheduler="threads"), CountComputes() as counter:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(Xd)
    assert gm.n_iter_ == 4
    assert counter.n == 4


def test_restarts_share_the_single_start_m_step():
    """n_init > 1 runs through the multi-candidate driver: same errors, same history."""
    X = np.vstack([np.zeros((5, 2)), np.ones((5, 2))]).astype(np.float32)
    with pytest.raises(ValueError, match="ill-defined empirical covariance.*float64 data instead of float32"):
        GaussianMixture(2, reg_covar=0.0, n_init=2, init_params="random_from_data", random_state=0).fit(X)
    Xg = make_mixture(n_samples=300, n_features=2, n_components=2, seed=1)[0]
    gm = GaussianMixture(2, n_init=2, random_state=0).fit(da.from_array(Xg, chunks=(100, 2)))
    assert gm.history_ and all(r["bytes_read"] == Xg.nbytes for r in gm.history_)


# ---------------------------------------------------------------------------
# missing Zarr chunks are not fill values (issue 14, case 6)
# ---------------------------------------------------------------------------
def _store_missing_a_chunk(tmp_path, X):
    path = str(tmp_path / "x.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(50, 3), dtype="f8")
    z[:] = X
    os.remove(os.path.join(path, "c", "2", "0"))  # rows 100-149: lost in a copy
    return path


def test_missing_zarr_chunks_are_refused_in_fit_select_model_and_segment(X, tmp_path, capsys):
    import daskgmm
    from daskgmm.cli import main

    path = _store_missing_a_chunk(tmp_path, X)
    match = r"has 1 of its 6 chunks missing from its store; Zarr would read them as the fill value 0.0"
    with CountComputes() as counter:
        with pytest.raises(ValueError, match=match):
            GaussianMixture(2, random_state=0).fit(path)
        with pytest.raises(ValueError, match=match):
            daskgmm.select_model(zarr.open_array(path, mode="r"), [1, 2], random_state=0)
        with pytest.raises(ValueError, match=match):
            daskgmm.segment(path, 2, random_state=0)
    assert counter.n == 0  # found at open, without a pass over the data
    with pytest.raises(SystemExit, match=match):
        main(["segment", path, str(tmp_path / "o.zarr"), "-k", "2", "--scheduler", "tcp://127.0.0.1:1"])
    # the user says the fill value is valid
    with dask.config.set({"daskgmm.allow_missing_chunks": True}):
        gm = GaussianMixture(2, random_state=0).fit(path)
    assert gm.n_features_in_ == 3
