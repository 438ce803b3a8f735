"""Stepwise EM (``partial_fit``) and incremental EM (``incremental=m``).

References: one full EM iteration (the first batch, step size 1), the closed-form
weighted running moments of a single Gaussian under the documented step-size
schedule, the true parameters of generated data, and full EM's fixed point.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from daskgmm import GaussianMixture
from daskgmm._streaming import STEP_DECAY, step_size
from tests.conftest import make_mixture


@pytest.fixture(scope="module")
def stream():
    X, labels, weights, means, covs = make_mixture(
        n_samples=6000, n_features=2, n_components=3, seed=2, separation=6
    )
    return X, weights, means, covs


def test_step_size_schedule():
    assert step_size(0) == 1.0
    assert step_size(3) == pytest.approx(4**-STEP_DECAY)
    assert 0.5 < STEP_DECAY <= 1.0


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_first_batch_is_one_em_iteration(stream):
    X, weights, means, covs = stream
    given = dict(weights_init=weights, means_init=means + 0.5, precisions_init=np.linalg.inv(covs))
    one = GaussianMixture(3, max_iter=1, **given).fit(X[:500])
    pf = GaussianMixture(3, **given).partial_fit(X[:500])
    np.testing.assert_allclose(pf.means_, one.means_, rtol=1e-12)
    np.testing.assert_allclose(pf.covariances_, one.covariances_, rtol=1e-12)
    assert pf.history_[0]["step_size"] == 1.0


def test_single_gaussian_running_moments_closed_form():
    """K=1: responsibilities are 1, so stepwise EM keeps exponentially weighted moments."""
    rng = np.random.RandomState(0)
    batches = [rng.normal(loc=i, scale=1 + 0.2 * i, size=(50 + 10 * i, 2)) for i in range(5)]
    gm = GaussianMixture(1, reg_covar=0.0)
    for b in batches:
        gm.partial_fit(b)
    # weight of batch t in the running statistics: eta_t * prod_{s>t} (1 - eta_s)
    etas = [step_size(t) for t in range(len(batches))]
    c = np.array([etas[t] * np.prod([1 - e for e in etas[t + 1 :]]) for t in range(len(batches))])
    assert c.sum() == pytest.approx(1.0)
    mean = sum(ci * b.mean(0) for ci, b in zip(c, batches))
    second = sum(ci * (b - mean).T @ (b - mean) / len(b) for ci, b in zip(c, batches))
    np.testing.assert_allclose(gm.means_[0], mean, rtol=1e-12)
    np.testing.assert_allclose(gm.covariances_[0], second, rtol=1e-12)
    assert [h["step_size"] for h in gm.history_] == pytest.approx(etas)
    assert gm.n_iter_ == 5


def test_stream_recovers_true_mixture(stream):
    X, weights, means, covs = stream
    gm = GaussianMixture(3, random_state=0)
    for batch in np.array_split(X, 30):
        gm.partial_fit(da.from_array(batch, chunks=100))
    order = [int(np.argmin(((gm.means_ - m) ** 2).sum(1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(gm.means_[order], means, atol=0.15)
    np.testing.assert_allclose(gm.weights_[order], weights, atol=0.03)
    np.testing.assert_allclose(gm.covariances_[order], covs, atol=0.2)


def test_partial_fit_after_fit_and_feature_check(stream):
    X, *_ = stream
    gm = GaussianMixture(3, random_state=0).fit(X[:2000])
    before = gm.means_.copy()
    gm.partial_fit(X[2000:2500])
    assert gm.history_[-1]["step_size"] == pytest.approx(step_size(1))
    assert np.abs(gm.means_ - before).max() < 0.3  # a step, not a restart
    with pytest.raises(ValueError, match="X has 1 features, but GaussianMixture is expecting 2 features"):
        gm.partial_fit(X[:100, :1])


def test_incremental_em_reaches_full_em_fixed_point():
    X, *_ = make_mixture(n_samples=1800, n_features=2, n_components=3, seed=5, separation=10)
    Xd = da.from_array(X, chunks=300)  # 6 chunks
    full = GaussianMixture(3, random_state=0, tol=1e-12, max_iter=1000).fit(Xd)
    inc = GaussianMixture(3, random_state=0, tol=1e-12, max_iter=1000, incremental=2).fit(Xd)
    assert inc.converged_ and full.converged_
    np.testing.assert_allclose(inc.means_, full.means_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(inc.covariances_, full.covariances_, rtol=1e-7, atol=1e-8)
    # the sweep-level lower bound is the full log-likelihood once every chunk is refreshed at the optimum
    assert inc.lower_bound_ == pytest.approx(full.lower_bound_, rel=1e-8)
    chunks = [h["chunks"] for h in inc.history_]
    assert chunks[0] == 6 and set(chunks[1:]) == {2}


def test_incremental_parameter_is_checked():
    with pytest.raises(ValueError, match="'incremental' parameter of GaussianMixture must be None"):
        GaussianMixture(2, incremental=0).fit(np.zeros((4, 2)))


def test_partial_fit_after_fit_starts_from_the_fitted_parameters(stream):
    """partial_fit, then fit, then partial_fit: the last batch blends into statistics rebuilt from
    the fit, not into the statistics from before it (issue 12: the means jumped by about 2)."""
    X, weights, means, covs = stream
    gm = GaussianMixture(3, random_state=0)
    shifted = X[:1000] + 5.0  # a stream that the later fit no longer describes
    gm.partial_fit(shifted)
    gm.partial_fit(shifted[500:])
    gm.fit(X[:2000])
    fitted = gm.means_.copy()
    gm.partial_fit(X[2000:2500])
    assert gm.history_[-1]["step_size"] == pytest.approx(step_size(1))
    # the reference: a fresh model fitted the same way, then one partial_fit
    ref = GaussianMixture(3, random_state=0).fit(X[:2000])
    ref.partial_fit(X[2000:2500])
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-12, atol=1e-12)
    assert np.abs(gm.means_ - fitted).max() < 0.3
