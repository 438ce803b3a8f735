"""The per-chunk hot path against an independent reference (scipy's multivariate
normal densities and plain numpy sums), across block boundaries, for every
covariance type, in float64 and float32; and the BLAS thread limit inside tasks."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from threadpoolctl import threadpool_info, threadpool_limits

from daskgmm._gaussian import EStepParams, compute_precision_cholesky, log_resp_and_norm, weighted_log_prob
from daskgmm._graph import map_reduce, shared
from daskgmm._kernels import (
    block_rows,
    chunk_stats,
    predict_block,
    predict_output,
    single_threaded_blas,
    use_compiled,
)
from tests.conftest import make_mixture

TYPES = ("full", "tied", "diag", "spherical")
#: the per-chunk kernels (``daskgmm.kernel``): numba's compiled one and the numpy one
KERNELS = ("numba", "numpy")


def _params(weights, means, prec_chol, covariance_type, dtype, kernel):
    p = EStepParams(weights, means, prec_chol, covariance_type, dtype)
    p.kernel = kernel
    assert use_compiled(p) == (kernel == "numba")
    return p


def _covariances(cov_full, covariance_type):
    if covariance_type == "full":
        return cov_full
    if covariance_type == "tied":
        return cov_full.mean(axis=0)
    diag = np.einsum("kii->ki", cov_full)
    return diag if covariance_type == "diag" else diag.mean(axis=1)


def _as_full(cov, covariance_type, k, d):
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(d) * c for c in cov])


def _case(covariance_type, n=None, seed=0):
    k, d = 3, 4
    n = n or block_rows(k, d, covariance_type) * 2 + 123  # two full blocks and a partial one
    X, _, weights, means, cov = make_mixture(n_samples=n, n_features=d, n_components=k, seed=seed)
    X = X + 40.0  # far from the origin: the kernel must centre
    means = means + 40.0 + 0.3  # not the data's means
    cov = _covariances(cov * 1.3, covariance_type)
    prec_chol = compute_precision_cholesky(cov, covariance_type)
    return X, weights, means, _as_full(cov, covariance_type, k, d), prec_chol


def _reference(X, weights, means, cov_full, w=None):
    wlp = np.stack(
        [
            np.log(weights[j]) + np.atleast_1d(multivariate_normal(means[j], cov_full[j]).logpdf(X))
            for j in range(len(weights))
        ],
        axis=1,
    )
    log_norm = logsumexp(wlp, axis=1)
    resp = np.exp(wlp - log_norm[:, None])
    if w is not None:
        resp = resp * w[:, None]
    return wlp, resp, log_norm


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("covariance_type", TYPES)
def test_chunk_stats_equal_direct_sums_across_blocks(covariance_type, kernel):
    X, weights, means, cov_full, prec_chol = _case(covariance_type)
    w = np.random.RandomState(1).uniform(0.5, 2.0, size=len(X))
    p = _params(weights, means, prec_chol, covariance_type, np.float64, kernel)
    stats = chunk_stats(X, p, w)
    _, resp, log_norm = _reference(X, weights, means, cov_full, w)
    c = p.stat_centers
    nk = resp.sum(axis=0)
    np.testing.assert_allclose(stats["nk"], nk, rtol=1e-10)
    np.testing.assert_allclose(stats["u"], resp.T @ X - nk[:, None] * c, rtol=1e-9, atol=1e-8 * len(X))
    diff = X[None] - c[:, None]  # (K, n, D) about each component's centre
    s2_full = np.einsum("nk,kni,knj->kij", resp, diff, diff)
    expected = {
        "full": s2_full,
        "tied": np.einsum("n,ni,nj->ij", w, X - c[0], X - c[0]),
        "diag": np.einsum("kii->ki", s2_full),
        "spherical": np.einsum("kii->ki", s2_full),
    }[covariance_type]
    np.testing.assert_allclose(stats["s2"], expected, rtol=1e-9)
    assert stats["n"] == pytest.approx(w.sum())
    assert stats["loglik"] == pytest.approx(np.dot(w, log_norm), rel=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("covariance_type", TYPES)
def test_float32_compute_accumulates_in_float64(covariance_type, kernel):
    X, weights, means, _, prec_chol = _case(covariance_type)
    s64 = chunk_stats(X, _params(weights, means, prec_chol, covariance_type, np.float64, kernel))
    s32 = chunk_stats(
        X.astype(np.float32), _params(weights, means, prec_chol, covariance_type, np.float32, kernel)
    )
    for key in ("nk", "u", "s2"):
        assert s32[key].dtype == np.float64
        scale = np.abs(s64[key]).max()
        np.testing.assert_allclose(s32[key], s64[key], atol=2e-5 * scale)
    assert s32["loglik"] == pytest.approx(s64["loglik"], rel=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("covariance_type", TYPES)
def test_predictions_equal_scipy(covariance_type, kernel):
    X, weights, means, cov_full, prec_chol = _case(covariance_type, n=5000, seed=2)
    p = _params(weights, means, prec_chol, covariance_type, np.float64, kernel)
    wlp, resp, log_norm = _reference(X, weights, means, cov_full)
    got = predict_block(X, p, ("labels", "probabilities", "log_density", "confidence"))
    np.testing.assert_allclose(got["log_density"], log_norm, rtol=1e-11)
    np.testing.assert_allclose(got["probabilities"], resp, atol=1e-11)
    np.testing.assert_array_equal(got["labels"], wlp.argmax(axis=1))
    np.testing.assert_allclose(got["confidence"], resp.max(axis=1), atol=1e-11)
    Xc = X - p.center
    np.testing.assert_allclose(weighted_log_prob(Xc, p), wlp, rtol=1e-11)
    r, ln = log_resp_and_norm(weighted_log_prob(Xc, p))
    np.testing.assert_allclose(r, resp, atol=1e-11)
    np.testing.assert_allclose(ln, log_norm, rtol=1e-11)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
def test_compiled_kernel_equals_direct_sums_for_any_number_of_rows(n, dtype):
    # the compiled kernel runs blocks of 256 rows and a shorter last block: a chunk of one
    # row, of one block less one, of exactly one block, and of several blocks and a remainder
    X, weights, means, cov_full, prec_chol = _case("full", n=max(n, 4), seed=3)
    X = X[:n]
    p = _params(weights, means, prec_chol, "full", dtype, "numba")
    stats = chunk_stats(X.astype(dtype), p)
    _, resp, log_norm = _reference(X, weights, means, cov_full)
    diff = X[None] - p.stat_centers[:, None]
    tol = 1e-9 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(stats["nk"], resp.sum(axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(
        stats["s2"], np.einsum("nk,kni,knj->kij", resp, diff, diff), rtol=tol, atol=tol * n
    )
    assert stats["n"] == n
    assert stats["loglik"] == pytest.approx(log_norm.sum(), rel=tol)


@pytest.mark.parametrize(("covariance_type", "d"), [("full", 8), ("diag", 16), ("spherical", 17)])
@pytest.mark.parametrize("n", [1, 255, 257, 1000])
@pytest.mark.parametrize("k", [3, 33])
def test_float32_kernel_equals_scipy(k, covariance_type, d, n):
    # float32 with more than 32 design rows, 3 components (one tile of the product, part empty)
    # and 33 (nine tiles, the last with one component): weighted sums, a partial last block,
    # a component of zero weight (exactly zero responsibility), against scipy in float64
    from daskgmm import _compiled

    if not _compiled.available():
        pytest.skip("numba is not installed")
    X, _, _, means, cov = make_mixture(n_samples=max(n, 4), n_features=d, n_components=k, seed=7)
    X = X[:n] + 10.0
    means = means + 10.3
    weights = np.full(k, 0.4 / (k - 2))
    weights[0], weights[1] = 0.6, 0.0
    cov = _covariances(cov * 1.3, covariance_type)
    prec_chol = compute_precision_cholesky(cov, covariance_type)
    p = _params(weights, means, prec_chol, covariance_type, np.float32, "numba")
    assert p.n_design > 32
    w = np.random.RandomState(2).uniform(0.5, 2.0, size=n)
    stats = chunk_stats(X.astype(np.float32), p, w)
    with np.errstate(divide="ignore"):
        _, resp, log_norm = _reference(X, weights, means, _as_full(cov, covariance_type, k, d), w)
    assert stats["nk"][1] == 0.0 and not stats["u"][1].any() and not stats["s2"][1].any()
    tol = 2e-4
    np.testing.assert_allclose(stats["nk"], resp.sum(axis=0), rtol=tol, atol=tol)
    c = p.stat_centers
    np.testing.assert_allclose(stats["u"], resp.T @ X - resp.sum(axis=0)[:, None] * c, rtol=tol, atol=tol * n)
    diff = X[None] - c[:, None]
    s2 = np.einsum("nk,kni,knj->kij", resp, diff, diff)
    s2 = s2 if covariance_type == "full" else np.einsum("kii->ki", s2)
    np.testing.assert_allclose(stats["s2"], s2, rtol=tol, atol=tol * n)
    assert stats["loglik"] == pytest.approx(np.dot(w, log_norm), rel=tol)
    X32 = X.astype(np.float32)
    X32[n // 2, 1] = -3.4e38  # its square overflows float32: the rows' maxima are not finite
    with pytest.raises(ValueError, match="so large that its square overflows"):
        chunk_stats(X32, p)


@pytest.mark.parametrize(("dtype", "spread"), [(np.float32, 12.0), (np.float64, 60.0)])
@pytest.mark.parametrize("n", [1, 255, 257, 3000])
def test_sparse_moments_equal_scipy(n, dtype, spread):
    # well-separated components: most rows have one nonzero responsibility (float32's exp is 0
    # below -87, float64's below -708), so every block takes the sparse moments
    # (daskgmm._compiled.sparse_moments): buckets filled and added mid-chunk (3,000 rows), the
    # rest added at the chunk's end, a partial last block, weights with zeros, a component of
    # zero weight, and rows halfway between two means (two nonzero responsibilities)
    from daskgmm import _compiled

    if not _compiled.available():
        pytest.skip("numba is not installed")
    k, d = 8, 16
    X, labels, _, means, cov = make_mixture(
        n_samples=max(n, 4), n_features=d, n_components=k, seed=11, separation=spread, ridge=0.5
    )
    X = X[:n] + 20.0
    cov[1] = cov[0]
    X[: min(n, 5)] = (means[0] + means[1]) / 2 + 20.0  # as likely under component 0 as under 1
    means = means + 20.0
    weights = np.array([0.2, 0.2, 0.0, 0.1, 0.1, 0.2, 0.1, 0.1])
    prec_chol = compute_precision_cholesky(cov * 1.1, "full")
    p = _params(weights, means, prec_chol, "full", dtype, "numba")
    assert _compiled.sparse_moments(p)[1] > 0
    w = np.random.RandomState(3).uniform(0.5, 2.0, size=n)
    w[3::7] = 0.0
    before = _compiled.sparse_blocks
    stats = chunk_stats(X.astype(dtype), p, w)
    blocks = -(-n // _compiled.rows_per_block(p))
    assert _compiled.sparse_blocks - before == blocks
    with np.errstate(divide="ignore"):
        _, resp, log_norm = _reference(X, weights, means, cov * 1.1, w)
    if n > 1:
        np.testing.assert_allclose(resp[1:5, :2], np.repeat(w[1:5, None] / 2, 2, axis=1))
    assert stats["nk"][2] == 0.0 and not stats["u"][2].any() and not stats["s2"][2].any()
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(stats["nk"], resp.sum(axis=0), rtol=tol, atol=tol)
    c = p.stat_centers
    np.testing.assert_allclose(stats["u"], resp.T @ X - resp.sum(axis=0)[:, None] * c, rtol=tol, atol=tol * n)
    diff = X[None] - c[:, None]
    s2 = np.einsum("nk,kni,knj->kij", resp, diff, diff)
    np.testing.assert_allclose(stats["s2"], s2, rtol=tol, atol=tol * n)
    assert stats["loglik"] == pytest.approx(np.dot(w, log_norm), rel=tol)
    Xb = X.astype(dtype)
    Xb[n // 2, 1] = np.finfo(dtype).min  # its square overflows: the rows' maxima are not finite
    with pytest.raises(ValueError, match="so large that its square overflows"):
        chunk_stats(Xb, p)


@pytest.mark.parametrize(
    ("dtype", "rtol", "zero"), [(np.float64, 2.5e-16, -708.0), (np.float32, 2e-7, -87.0)]
)
def test_compiled_exponential_equals_numpy_exp(dtype, rtol, zero):
    """The compiled kernel's own exp (2**n from the rounding shifter's bits) against ``np.exp`` in
    float64 of the same inputs, on the log-sum-exp's range: 0, tiny, the ties of the rounding
    (k·ln(2)/2), down to where it returns exactly 0."""
    from daskgmm import _compiled, _numba

    if not _compiled.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            -np.abs(rng.normal(size=700)) * 10.0 ** rng.uniform(-3, 2.5, size=700),
            [0.0, -1e-300, -np.log(2) / 2, -3 * np.log(2) / 2, zero + 0.5, zero - 0.5, zero - 50.0],
        ]
    ).reshape(7, 101)
    W = x.astype(dtype)
    ref = np.exp(W.astype(np.float64))
    live = W.astype(np.float64) > zero
    f = _numba._exp64 if dtype == np.float64 else _numba._exp32
    f(W, W.shape[1], np.empty(W.shape[1], dtype))
    np.testing.assert_allclose(W[live], ref[live], rtol=rtol, atol=0)
    assert np.all(W[~live] == 0) and (~live).sum() >= 2  # below the cut-off: exactly 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("k", "p"), [(1, 1), (3, 10), (5, 153), (16, 257), (6, 600)])
def test_tiled_product_equals_numpy(k, p, dtype):
    """The compiled kernel's product ``coef @ F`` (tiles of 4 components × 2 vectors of rows,
    256 design rows per pass) against numpy's in float64: components not a multiple of the
    tile's, one and several passes, and rows that fill no tile, one, or end mid-tile; the columns
    past ``b`` and the rows past K stay untouched."""
    from daskgmm import _compiled, _numba

    if not _compiled.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(k * 1000 + p)
    coef = rng.standard_normal((k, p)).astype(dtype)
    F = rng.standard_normal((p, 64)).astype(dtype)
    panels = _numba._panels(coef)
    assert panels.shape == (-(-k // _numba.TILE_COMPONENTS), p, _numba.TILE_COMPONENTS)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for b in (1, 15, 16, 17, 33, 64):
        memory = np.full((k + 1, 64), 7.0, dtype)  # W and the row after it
        W = memory[:k]
        _numba._product(panels, F, W, b)
        ref = coef.astype(np.float64) @ F[:, :b].astype(np.float64)
        np.testing.assert_allclose(W[:, :b], ref, rtol=tol, atol=tol * np.sqrt(p))
        assert np.all(W[:, b:] == 7.0) and np.all(memory[k] == 7.0)
    for shapes in [((k, 64), (p, 65), 65), ((k, 64), (p + 1, 64), 64), ((k + 4, 64), (p, 64), 64)]:
        with pytest.raises(ValueError, match="shapes"):  # the tiles' memory access is unchecked
            _numba._product(panels, np.zeros(shapes[1], dtype), np.zeros(shapes[0], dtype), shapes[2])


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_component_of_zero_weight_gets_exactly_zero_responsibility(kernel):
    # log(0) = -inf: its responsibilities are exp(-inf) = 0, as scikit-learn's, not a tiny number
    X, weights, means, cov_full, prec_chol = _case("full", n=700, seed=4)
    weights = np.array([0.5, 0.0, 0.5])
    p = _params(weights, means, prec_chol, "full", np.float64, kernel)
    stats = chunk_stats(X, p)
    assert stats["nk"][1] == 0.0 and not stats["u"][1].any() and not stats["s2"][1].any()
    with np.errstate(divide="ignore"):
        _, resp, log_norm = _reference(X, weights, means, cov_full)
    np.testing.assert_allclose(stats["nk"], resp.sum(axis=0), rtol=1e-10)
    assert stats["loglik"] == pytest.approx(log_norm.sum(), rel=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bad_values_in_a_chunk_are_named_by_either_kernel(kernel):
    X, weights, means, _, prec_chol = _case("full", n=700, seed=5)
    X = X.copy()
    X[600, 2] = np.nan  # in the last, partial block
    p = _params(weights, means, prec_chol, "full", np.float64, kernel)
    with pytest.raises(ValueError, match="contains NaN"):
        chunk_stats(X, p)
    X32 = X.astype(np.float32)
    X32[600, 2] = -3.4e38  # GDAL's float32 nodata: its square overflows float32
    p32 = _params(weights, means, prec_chol, "full", np.float32, kernel)
    with pytest.raises(ValueError, match="so large that its square overflows"):
        chunk_stats(X32, p32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_each_prediction_output_alone_and_nodata_rows(kernel, dtype):
    # every output on its own (the compiled kernel skips the exponentials for labels alone),
    # rows around the block size, nodata rows left out and marked, a NaN row named
    X, weights, means, cov_full, prec_chol = _case("full", n=1300, seed=6)
    X = X.copy()
    X[[3, 700, 1299]] = -9999.0  # nodata rows
    p = _params(weights, means, prec_chol, "full", dtype, kernel)
    ok = np.ones(len(X), bool)
    ok[[3, 700, 1299]] = False
    wlp, resp, log_norm = _reference(X[ok], weights, means, cov_full)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)
    expected = {
        "labels": wlp.argmax(axis=1),
        "probabilities": resp,
        "log_density": log_norm,
        "confidence": resp.max(axis=1),
    }
    for name, want in expected.items():
        got = predict_block(X.astype(dtype), p, (name,), nodata=-9999.0)[name]
        if name == "labels":
            np.testing.assert_array_equal(got[ok], want)
            assert (got[~ok] == -1).all()
        else:
            np.testing.assert_allclose(got[ok], want, **tol)
            assert np.isnan(got[~ok]).all()
    X[10, 1] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        predict_block(X.astype(dtype), p, ("labels",))


def test_the_kernel_setting_is_checked_and_carried_by_every_pass():
    import dask.array as da

    from daskgmm._engine import DataPlan
    from daskgmm._gaussian import Params
    from daskgmm._placement import kernel_setting

    X, weights, means, cov_full, prec_chol = _case("full", n=600)
    params = Params(weights, means, cov_full, prec_chol)
    assert kernel_setting() == "auto"
    for choice in ("numpy", "numba"):
        with dask.config.set({"daskgmm.kernel": choice}):
            data = DataPlan(da.from_array(X, chunks=300))
        # read on the driver when the fit starts, then carried by the parameters to the workers
        assert data.prepare(params, "full", np.float64).kernel == choice
    with dask.config.set({"daskgmm.kernel": "fortran"}):
        with pytest.raises(ValueError, match="daskgmm.kernel must be one of 'auto', 'numba', 'numpy'"):
            kernel_setting()


def test_empty_chunk_gives_zero_statistics():
    X, weights, means, _, prec_chol = _case("full", n=50)
    stats = chunk_stats(X[:0], EStepParams(weights, means, prec_chol, "full", np.float64))
    assert stats["n"] == 0 and stats["loglik"] == 0 and not stats["s2"].any()
    assert predict_output(
        X[:0], EStepParams(weights, means, prec_chol, "full", np.float64), "labels"
    ).shape == (0,)


def _blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_uses_one_thread_inside_tasks_and_is_restored():
    before = _blas_threads()
    if not before:
        pytest.skip("threadpoolctl sees no BLAS library in this process")
    X, weights, means, _, prec_chol = _case("full", n=4000)
    p = EStepParams(weights, means, prec_chol, "full", np.float64)
    graph = map_reduce(
        chunk_stats,
        [(X[i : i + 1000], shared(p, "gmm-params-kt")) for i in range(0, 4000, 1000)],
        "gmm-em-stats-kt",
        2,
    )
    for _ in range(2):
        # tasks on pool threads change BLAS first; those threads stay alive afterwards
        (stats,) = dask.compute(graph, scheduler="threads", num_workers=2)
        assert _blas_threads() == before
        assert stats["n"] == 4000
        with single_threaded_blas():  # from this thread, after them
            assert set(_blas_threads()) == {1}
            with single_threaded_blas():  # nested (a task calling a task function)
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before
    # the user's own limits from the main thread still work afterwards
    with threadpool_limits(1, user_api="blas"):
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_blas_stays_single_threaded_between_the_passes_of_a_fit():
    # restoring the BLAS threads after each pass and taking them again cost 1.4x per
    # iteration: the engine holds one thread for the whole fit, and gives it back after
    before = _blas_threads()
    if not before:
        pytest.skip("threadpoolctl sees no BLAS library in this process")
    from daskgmm import GaussianMixture

    X, *_ = _case("full", n=600)
    seen = []
    GaussianMixture(2, max_iter=3, tol=0, random_state=0).fit(
        X, callback=lambda state, record: seen.append(_blas_threads())
    )
    assert len(seen) == 3 and all(set(s) == {1} for s in seen), seen
    assert _blas_threads() == before


def test_map_reduce_keeps_container_arguments_literal():
    X, weights, means, _, prec_chol = _case("diag", n=600)
    p = EStepParams(weights, means, prec_chol, "diag", np.float64)
    graph = map_reduce(
        predict_output,
        [(X[:300], p, "labels"), (X[300:], p, "labels")],
        "kt-labels",
        2,
        combine_func=np.concatenate,
    )
    (labels,) = dask.compute(graph, scheduler="sync")
    np.testing.assert_array_equal(labels, predict_output(X, p, "labels"))
    with pytest.raises(ValueError, match="The data has no chunks: nothing to fit."):
        map_reduce(chunk_stats, [], "kt-empty")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_float32_fit_stays_close_for_well_separated_components():
    # components 30 standard deviations apart: moving moments from the mixture centre
    # to each component's centre amplifies float32 rounding by ~30², so partial sums
    # must go to float64 often (before that, this case was 1.2e-4 off)
    from daskgmm import GaussianMixture
    from daskgmm.benchmarks.kernel import max_rel_diff

    rng = np.random.default_rng(0)
    k, d, n = 4, 3, 40_000
    means = rng.uniform(-30, 30, (k, d))
    X = means[rng.integers(0, k, n)] + rng.standard_normal((n, d))
    init = dict(
        weights_init=np.full(k, 1 / k), means_init=means + 0.3, precisions_init=np.stack([np.eye(d)] * k)
    )
    g64 = GaussianMixture(k, max_iter=5, tol=0, **init).fit(X)
    g32 = GaussianMixture(k, max_iter=5, tol=0, **init).fit(X.astype(np.float32))
    assert max_rel_diff(g32, g64) < 3e-5
