"""Dead-component recovery: ``on_collapse="raise"`` (scikit-learn) and ``"reseed"``.

References: scikit-learn on the same data (raises on a singular covariance, keeps a
dead component when its weight collapses), and the definition of a collapse (less
than one row's worth of weight, or a covariance that is not positive definite).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGMM

from daskgmm import GaussianMixture, select_model
from daskgmm._gaussian import COLLAPSE_MESSAGE
from tests.conftest import make_mixture


def saturated_image(seed=0):
    """A 64x64 RGB image: three noisy colour regions, a quarter of it saturated (identical pixels)."""
    rng = np.random.RandomState(seed)
    img = np.empty((64, 64, 3))
    img[:, :20] = rng.normal([0.2, 0.5, 0.3], 0.05, size=(64, 20, 3))
    img[:, 20:40] = rng.normal([0.7, 0.2, 0.2], 0.05, size=(64, 20, 3))
    img[:, 40:] = rng.normal([0.4, 0.4, 0.8], 0.05, size=(64, 24, 3))
    img[:30, 30:] = 1.0
    return img.reshape(-1, 3)


def _valid(gm, n):
    assert gm.weights_.sum() == pytest.approx(1.0)
    assert np.all(gm.weights_ * n >= 1.0)  # every component holds at least one row's worth
    assert np.all(np.linalg.eigvalsh(gm.covariances_) > 0)


def test_identical_pixels_raise_like_scikit_learn():
    X = saturated_image()
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        SkGMM(5, reg_covar=0.0, random_state=0).fit(X)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(5, reg_covar=0.0, random_state=0).fit(X)


def test_identical_pixels_reseed(caplog):
    X = saturated_image()
    with caplog.at_level(logging.WARNING, logger="daskgmm"):
        gm = GaussianMixture(5, reg_covar=0.0, random_state=0, on_collapse="reseed", chunk_size=1000).fit(X)
    events = [e for h in gm.history_ for e in h.get("reseeded", [])]
    assert events and events[0]["reason"] == "covariance" and events[0]["at"] == "initialisation"
    assert "re-seeded by splitting component" in caplog.text
    assert gm.converged_
    _valid(gm, len(X))
    assert np.all(np.isfinite(gm.score_samples(X)))
    # a usable segmentation: no component mixes two of the noisy colour regions
    labels = gm.predict(X).reshape(64, 64)
    sets = [set(np.unique(r)) for r in (labels[30:, :20], labels[30:, 20:30], labels[30:, 40:])]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_point_mass_without_room_gives_clear_error():
    """Four components for three regions plus a point mass and reg_covar=0: no finite optimum."""
    X = saturated_image()
    with pytest.raises(ValueError, match="kept collapsing after 5 re-seeds.*point mass.*reg_covar"):
        GaussianMixture(4, reg_covar=0.0, random_state=0, on_collapse="reseed").fit(X)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_dead_weight_is_reseeded(covariance_type):
    X, *_ = make_mixture(n_samples=600, n_features=2, n_components=3, seed=0, separation=8)
    means_init = np.vstack([X[:2], [[1e3, 1e3]]])  # the third mean far from every row
    kw = dict(n_components=3, covariance_type=covariance_type, means_init=means_init, tol=1e-6, max_iter=500)
    sk = SkGMM(**kw).fit(X)
    assert sk.weights_.min() * len(X) < 1.0  # scikit-learn keeps a useless component
    gm = GaussianMixture(**kw, on_collapse="reseed").fit(X)
    events = [e for h in gm.history_ for e in h.get("reseeded", [])]
    assert events[0] == {"component": 2, "reason": "weight", "split": events[0]["split"]}
    assert np.all(gm.weights_ * len(X) >= 1.0)
    assert gm.score(X) > sk.score(X) + 0.1
    assert gm.converged_


def test_default_is_parity_when_nothing_collapses():
    X, *_ = make_mixture(n_samples=300, n_features=2, n_components=2, seed=1)
    a = GaussianMixture(2, random_state=0).fit(X)
    b = GaussianMixture(2, random_state=0, on_collapse="reseed").fit(X)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-12)
    assert all("reseeded" not in h for h in b.history_)


def test_select_model_reseeds_each_candidate():
    X = saturated_image()
    res = select_model(
        X, [3, 5], covariance_types=("full", "diag"), reg_covar=0.0, random_state=0, on_collapse="reseed"
    )
    for est in res.estimators:
        if est.covariance_type == "full":
            _valid(est, len(X))
        assert any("reseeded" in h for h in est.history_)


def test_bad_on_collapse():
    with pytest.raises(ValueError, match="'on_collapse' parameter of GaussianMixture must be"):
        GaussianMixture(2, on_collapse="ignore").fit(np.zeros((4, 2)))


def test_collapse_message_is_scikit_learns():
    assert COLLAPSE_MESSAGE.startswith("Fitting the mixture model failed")
