"""``to_sklearn`` / ``from_sklearn``: the same fitted model on both sides (reference: scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture as SkGMM

from daskgmm import GaussianMixture
from tests.conftest import make_mixture

COVARIANCE_TYPE = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def X():
    return make_mixture(n_samples=400, n_features=3, n_components=2, seed=7)[0]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_to_sklearn_predicts_like_daskgmm(covariance_type, X):
    gm = GaussianMixture(2, covariance_type=covariance_type, random_state=0, chunk_size=150).fit(X)
    sk = gm.to_sklearn()
    assert isinstance(sk, SkGMM)
    assert sk.get_params()["covariance_type"] == covariance_type and sk.n_components == 2
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(sk, name), getattr(gm, name))
    np.testing.assert_allclose(sk.score_samples(X), gm.score_samples(X), rtol=1e-12)
    np.testing.assert_array_equal(sk.predict(X), gm.predict(X))
    assert sk.bic(X) == pytest.approx(gm.bic(X), rel=1e-12)
    # the copy is independent of the daskgmm model
    sk.means_[0, 0] += 1.0
    assert sk.means_[0, 0] != gm.means_[0, 0]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_from_sklearn_round_trip(covariance_type, X):
    sk = SkGMM(2, covariance_type=covariance_type, random_state=0).fit(X)
    gm = GaussianMixture.from_sklearn(sk, chunk_size=100)
    assert gm.chunk_size == 100 and gm.covariance_type == covariance_type
    np.testing.assert_allclose(gm.predict_proba(X), sk.predict_proba(X), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gm.score_samples(X), sk.score_samples(X), rtol=1e-12)
    assert gm.n_iter_ == sk.n_iter_ and gm.converged_ == sk.converged_
    back = gm.to_sklearn()
    np.testing.assert_array_equal(back.precisions_cholesky_, sk.precisions_cholesky_)
    # warm start from the imported model continues where scikit-learn stopped
    gm.set_params(warm_start=True, tol=1e-8, max_iter=500)
    gm.fit(X)
    assert gm.lower_bound_ >= sk.lower_bound_ - 1e-12


def test_from_sklearn_refuses_unfitted_and_other_objects():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GaussianMixture.from_sklearn(SkGMM(2))
    with pytest.raises(TypeError, match="expects a fitted sklearn.mixture.GaussianMixture"):
        GaussianMixture.from_sklearn(object())
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GaussianMixture(2).to_sklearn()
