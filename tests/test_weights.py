"""``sample_weight``: a weight of 2 is a duplicated row, a weight of 0 a removed row.

Reference: the same estimator fitted on the data with the rows repeated (``np.repeat``)
or removed; with given initial parameters the EM sequence is the same up to rounding,
with the default k-means initialisation both fits reach the same optimum.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from daskgmm import GaussianMixture
from tests.conftest import make_mixture

COVARIANCE_TYPE = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def data():
    X, _, weights, means, covs = make_mixture(
        n_samples=300, n_features=2, n_components=3, seed=11, separation=6
    )
    counts = np.random.RandomState(0).randint(0, 4, size=X.shape[0])  # 0, 1, 2 or 3 copies
    return X, counts, weights, means, covs


def _given(covariance_type, weights, means, covs):
    prec = np.linalg.inv(covs)
    prec = {
        "full": prec,
        "tied": np.linalg.inv(covs.mean(0)),
        "diag": np.stack([np.diag(p) for p in prec]),
        "spherical": np.array([np.diag(p).mean() for p in prec]),
    }[covariance_type]
    return dict(weights_init=weights, means_init=means + 0.3, precisions_init=prec)


def _assert_same(a, b, rtol):
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.means_, b.means_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=rtol, atol=1e-12)


# a fixed number of iterations (tol=0) is the point of these comparisons
NOT_CONVERGED = pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")


@NOT_CONVERGED
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_integer_weights_equal_repeated_rows_given_init(covariance_type, kind, data):
    X, counts, weights, means, covs = data
    kw = dict(
        n_components=3,
        covariance_type=covariance_type,
        max_iter=8,
        tol=0.0,
        **_given(covariance_type, weights, means, covs),
    )
    dup = GaussianMixture(**kw).fit(np.repeat(X, counts, axis=0))
    if kind == "dask":
        Xw, w = da.from_array(X, chunks=70), da.from_array(counts, chunks=50)  # unaligned chunks
    else:
        Xw, w = X, counts
    weighted = GaussianMixture(**kw).fit(Xw, sample_weight=w)
    _assert_same(weighted, dup, 1e-10)
    assert weighted.lower_bounds_ == pytest.approx(dup.lower_bounds_, rel=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_weights_equal_repeated_rows_kmeans_init(kind, data):
    X, counts, *_ = data
    kw = dict(n_components=3, tol=1e-10, max_iter=500, random_state=0)
    dup = GaussianMixture(**kw).fit(np.repeat(X, counts, axis=0))
    Xw, w = (
        (da.from_array(X, chunks=100), da.from_array(counts, chunks=100)) if kind == "dask" else (X, counts)
    )
    weighted = GaussianMixture(**kw).fit(Xw, sample_weight=w)
    order_a, order_b = np.argsort(weighted.means_[:, 0]), np.argsort(dup.means_[:, 0])
    np.testing.assert_allclose(weighted.means_[order_a], dup.means_[order_b], rtol=1e-7)
    np.testing.assert_allclose(weighted.covariances_[order_a], dup.covariances_[order_b], rtol=1e-6)
    assert weighted.lower_bound_ == pytest.approx(dup.lower_bound_, rel=1e-9)


@NOT_CONVERGED
def test_zero_weight_equals_removed_row(data):
    X, counts, weights, means, covs = data
    far = np.full((20, 2), 1e3)  # outliers that would wreck the fit if they counted
    Xo = np.vstack([X, far])
    w = np.r_[np.ones(len(X)), np.zeros(len(far))]
    kw = dict(n_components=3, tol=1e-10, max_iter=500, random_state=0)
    ref = GaussianMixture(**kw).fit(X)
    for init in ("kmeans", "k-means++"):
        got = GaussianMixture(**{**kw, "init_params": init}).fit(
            da.from_array(Xo, chunks=64), sample_weight=w
        )
        a, b = np.argsort(got.means_[:, 0]), np.argsort(ref.means_[:, 0])
        np.testing.assert_allclose(got.means_[a], ref.means_[b], rtol=1e-7)
    given = dict(n_components=3, max_iter=5, tol=0.0, **_given("full", weights, means, covs))
    a = GaussianMixture(**given).fit(Xo, sample_weight=w)
    b = GaussianMixture(**given).fit(X)
    _assert_same(a, b, 1e-11)


@pytest.mark.parametrize("make", [np.asarray, lambda w: da.from_array(np.asarray(w), chunks=4)])
def test_bad_weights_are_refused(make):
    X = make_mixture(n_samples=10, n_features=2, n_components=2, seed=0)[0]
    gm = GaussianMixture(2)
    w = np.ones(10)
    for bad, msg in [
        (np.r_[w[:-1], -1.0], "Negative values in sample_weight"),
        (np.r_[w[:-1], np.nan], "sample_weight contains NaN or infinity"),
        (np.r_[w[:-1], np.inf], "sample_weight contains NaN or infinity"),
        (np.zeros(10), "sample_weight sums to zero"),
        (np.ones(7), r"sample_weight.shape == \(7,\), expected \(10,\)"),
    ]:
        with pytest.raises(ValueError, match=msg):
            gm.fit(X, sample_weight=make(bad))
