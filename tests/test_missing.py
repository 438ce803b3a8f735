"""Missing values: ``nan_policy`` omit and marginalize.

References: a fit on the complete rows only (omit); scipy's multivariate normal on
the observed sub-vector of each row (marginal densities); a direct numpy
implementation, row by row, of the exact EM step for data missing at random
(expected statistics with the conditional means and covariances of the missing part).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from daskgmm import GaussianMixture
from tests.conftest import make_mixture

COVARIANCE_TYPE = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def holes():
    X, _, weights, means, covs = make_mixture(n_samples=240, n_features=3, n_components=2, seed=4)
    rng = np.random.RandomState(1)
    Xm = X.copy()
    Xm[rng.rand(*X.shape) < 0.15] = np.nan
    Xm[5] = np.nan  # one row with nothing observed
    return X, Xm, weights, means, covs


def _full_covs(gm):
    k, d = gm.means_.shape
    c = gm.covariances_
    if gm.covariance_type == "full":
        return c
    if gm.covariance_type == "tied":
        return np.broadcast_to(c, (k, d, d))
    if gm.covariance_type == "diag":
        return np.stack([np.diag(v) for v in c])
    return np.stack([v * np.eye(d) for v in c])


def marginal_logpdf(X, weights, means, covs):
    out = np.empty(len(X))
    for n, x in enumerate(X):
        o = ~np.isnan(x)
        comp = [
            np.log(w) + (multivariate_normal(m[o], c[np.ix_(o, o)]).logpdf(x[o]) if o.any() else 0.0)
            for w, m, c in zip(weights, means, covs)
        ]
        out[n] = logsumexp(comp)
    return out


def reference_em_step(X, weights, means, covs, covariance_type, reg_covar):
    """One EM step for Gaussian mixtures with values missing at random (row by row)."""
    n, d = X.shape
    k = len(weights)
    nk = np.zeros(k)
    sx = np.zeros((k, d))
    rows = []
    for x in X:
        o = ~np.isnan(x)
        m = ~o
        logp, xhat, cond = [], [], []
        for j in range(k):
            S, mu = covs[j], means[j]
            Soo = S[np.ix_(o, o)]
            lp = np.log(weights[j]) + (multivariate_normal(mu[o], Soo).logpdf(x[o]) if o.any() else 0.0)
            xh = x.copy()
            C = np.zeros((d, d))
            if m.any():
                B = S[np.ix_(m, o)] @ np.linalg.inv(Soo) if o.any() else np.zeros((m.sum(), 0))
                xh[m] = mu[m] + B @ (x[o] - mu[o])
                C[np.ix_(m, m)] = S[np.ix_(m, m)] - B @ S[np.ix_(o, m)]
            logp.append(lp)
            xhat.append(xh)
            cond.append(C)
        r = np.exp(np.array(logp) - logsumexp(logp))
        nk += r
        sx += r[:, None] * np.array(xhat)
        rows.append((r, xhat, cond))
    new_means = sx / nk[:, None]
    scatter = np.zeros((k, d, d))
    for r, xhat, cond in rows:
        for j in range(k):
            y = xhat[j] - new_means[j]
            scatter[j] += r[j] * (np.outer(y, y) + cond[j])
    if covariance_type == "full":
        cov = scatter / nk[:, None, None] + reg_covar * np.eye(d)
    elif covariance_type == "tied":
        cov = scatter.sum(0) / n + reg_covar * np.eye(d)
    elif covariance_type == "diag":
        cov = np.diagonal(scatter, axis1=1, axis2=2) / nk[:, None] + reg_covar
    else:
        cov = (np.diagonal(scatter, axis1=1, axis2=2) / nk[:, None] + reg_covar).mean(1)
    return nk / n, new_means, cov


def test_default_refuses_nan(holes):
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GaussianMixture(2).fit(holes[1])


def test_bad_nan_policy():
    with pytest.raises(ValueError, match="'nan_policy' parameter of GaussianMixture must be"):
        GaussianMixture(2, nan_policy="drop").fit(np.zeros((4, 2)))


def test_omit_equals_fit_on_complete_rows(holes):
    _, Xm, *_ = holes
    keep = ~np.isnan(Xm).any(axis=1)
    ref = GaussianMixture(2, random_state=0, tol=1e-8).fit(Xm[keep])
    gm = GaussianMixture(2, random_state=0, tol=1e-8, nan_policy="omit").fit(da.from_array(Xm, chunks=50))
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-10)
    np.testing.assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-10)
    assert gm.n_iter_ == ref.n_iter_
    labels = gm.predict(da.from_array(Xm, chunks=50)).compute()
    assert np.all(labels[~keep] == -1)
    np.testing.assert_array_equal(labels[keep], ref.predict(Xm[keep]))
    scores = GaussianMixture.from_sklearn(gm.to_sklearn(), nan_policy="omit").score_samples(Xm)
    assert np.all(np.isnan(scores[~keep]))
    np.testing.assert_allclose(scores[keep], ref.score_samples(Xm[keep]), rtol=1e-12)
    assert gm.score(Xm) == pytest.approx(ref.score(Xm[keep]), rel=1e-12)  # mean over complete rows


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_marginalize_one_em_step_matches_reference(covariance_type, holes):
    X, Xm, weights, means, covs = holes
    # initial parameters of the given covariance type, from a short fit on complete data
    start = GaussianMixture(2, covariance_type=covariance_type, random_state=0, max_iter=3, tol=1e-2).fit(X)
    prec = start.precisions_
    gm = GaussianMixture(
        2,
        covariance_type=covariance_type,
        max_iter=1,
        tol=0.0,
        nan_policy="marginalize",
        weights_init=start.weights_,
        means_init=start.means_,
        precisions_init=prec,
        chunk_size=70,
    )
    with pytest.warns(Warning, match="did not converge"):
        gm.fit(Xm)
    w_ref, m_ref, c_ref = reference_em_step(
        Xm, start.weights_, start.means_, _full_covs(start), covariance_type, gm.reg_covar
    )
    np.testing.assert_allclose(gm.weights_, w_ref, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, m_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.covariances_, c_ref, rtol=1e-9, atol=1e-12)
    # the lower bound is the marginal log-likelihood at the initial parameters
    ll = marginal_logpdf(Xm, start.weights_, start.means_, _full_covs(start))
    assert gm.lower_bound_ == pytest.approx(ll.mean(), rel=1e-12)


def test_marginalize_scores_are_closed_form_marginals(holes):
    X, Xm, *_ = holes
    gm = GaussianMixture(2, nan_policy="marginalize", random_state=0, tol=1e-6).fit(
        da.from_array(Xm, chunks=64)
    )
    lp = gm.score_samples(da.from_array(Xm, chunks=64)).compute()
    np.testing.assert_allclose(
        lp, marginal_logpdf(Xm, gm.weights_, gm.means_, _full_covs(gm)), rtol=1e-10, atol=1e-12
    )
    proba = gm.predict_proba(Xm)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(gm.predict(Xm), proba.argmax(1))
    # complete rows: the ordinary density
    keep = ~np.isnan(Xm).any(axis=1)
    ordinary = GaussianMixture.from_sklearn(gm.to_sklearn())
    np.testing.assert_allclose(lp[keep], ordinary.score_samples(Xm[keep]), rtol=1e-10)
    # EM never decreases the marginal log-likelihood
    assert np.all(np.diff(gm.lower_bounds_) >= -1e-12)
    assert gm.converged_


def test_marginalize_uses_partly_observed_rows():
    """Feature 1 is missing in most rows of one cluster: omit then sees that cluster
    through a handful of rows, marginalize through all of them."""
    rng = np.random.RandomState(0)
    a = rng.normal([0, 0], 0.5, size=(300, 2))
    b = rng.normal([5, 5], 0.5, size=(300, 2))
    X = np.vstack([a, b])
    Xm = X.copy()
    Xm[300:590, 1] = np.nan
    truth = np.array([[0.0, 0.0], [5.0, 5.0]])
    errs = {}
    for policy in ("omit", "marginalize"):
        gm = GaussianMixture(2, nan_policy=policy, random_state=0, tol=1e-8, max_iter=500).fit(Xm)
        order = np.argsort(gm.means_[:, 0])
        errs[policy] = abs(gm.weights_[order] - 0.5).max()
        np.testing.assert_allclose(gm.means_[order], truth, atol=0.25)
    assert errs["marginalize"] < 0.02 < errs["omit"]
