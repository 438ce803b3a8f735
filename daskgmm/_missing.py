"""Missing values (NaN) in the features: ``nan_policy`` ``"omit"`` and ``"marginalize"``.

``"omit"``
    A row with any NaN gets weight 0 inside the chunk task (it is zeroed and its
    weight cleared), so the fit equals a fit on the complete rows only, in the same
    single pass per iteration. Such rows get label -1 and NaN probabilities/scores.
``"marginalize"``
    Missing features are integrated out exactly, row by row. For a Gaussian the
    marginal of the observed features ``o`` is ``N(x_o | mu_o, Sigma_oo)``, which
    gives the E-step. The statistics are the exact EM for data missing at random:
    expected sufficient statistics with the conditional mean
    ``E[x_m | x_o] = mu_m + Sigma_mo Sigma_oo^-1 (x_o - mu_o)`` in place of the
    missing values and the conditional covariance
    ``Sigma_mm - Sigma_mo Sigma_oo^-1 Sigma_om`` added to the second moment. Rows
    are grouped by their pattern of missing features, so each pattern costs one
    Cholesky factorisation per component and chunk. For diagonal and spherical
    covariances the conditional mean is simply ``mu_m``.

Both kernels return the statistics in the format of :mod:`daskgmm._kernels`, so
the driver's M-step is unchanged. Statistics are moments about each component's
current mean (``stat_centers``), for every covariance type. Prediction goes through
the one prediction kernel, :func:`daskgmm._kernels.predict_block`: ``"omit"`` is its
NaN nodata rule, ``"marginalize"`` hands it :class:`MarginalParams`, whose
:meth:`~MarginalParams.weighted_log_prob` integrates the missing features out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from daskgmm._gaussian import (
    LOG_2PI,
    covariances_from_precisions,
    log_resp_and_norm,
    precisions_from_cholesky,
)
from daskgmm._kernels import check_finite_block, chunk_stats, empty_stats
from daskgmm._typing import NAN_POLICIES as NAN_POLICIES  # re-exported


# --------------------------------------------------------------------------
# nan_policy="omit"
# --------------------------------------------------------------------------
def _omit(X: np.ndarray, sample_weight: np.ndarray | None):
    X = np.asarray(X)
    bad = np.isnan(X).any(axis=1)
    if not bad.any():
        return X, sample_weight
    X = np.where(bad[:, None], 0, X).astype(X.dtype, copy=False)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    return X, np.where(bad, 0.0, w)


def omit_multi_stats(X: np.ndarray, ps, sample_weight: np.ndarray | None = None) -> list:
    """Statistics of each candidate over the complete rows of the chunk (NaN rows weigh 0)."""
    X, w = _omit(X, sample_weight)
    return [chunk_stats(X, p, w) for p in ps]


# --------------------------------------------------------------------------
# nan_policy="marginalize"
# --------------------------------------------------------------------------
@dataclass
class MarginalParams:
    """Parameters for the marginalising kernel: full covariance matrices for every type."""

    covariance_type: str
    log_weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)
    stat_centers: np.ndarray  # (K, D)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def weighted_log_prob(self, X: np.ndarray) -> np.ndarray:
        """Marginal weighted log-densities (n, K) of the rows of ``X`` (the prediction kernel's hook)."""
        return marginal_block(X, self)[1]


def full_covariances(covariances, prec_chol, covariance_type: str, n_components: int, n_features: int):
    """Every covariance type as a stack of (K, D, D) matrices."""
    if covariances is None:
        prec = precisions_from_cholesky(prec_chol, covariance_type)
        covariances = covariances_from_precisions(prec, covariance_type)
    c = np.asarray(covariances, dtype=np.float64)
    eye = np.eye(n_features)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return c[:, :, None] * eye[None]
    return c[:, None, None] * eye[None]


def marginal_params(weights, means, covariances, prec_chol, covariance_type: str) -> MarginalParams:
    means = np.asarray(means, dtype=np.float64)
    k, d = means.shape
    with np.errstate(divide="ignore"):
        log_w = np.log(np.asarray(weights, dtype=np.float64))
    covs = full_covariances(covariances, prec_chol, covariance_type, k, d)
    return MarginalParams(covariance_type, log_w, means, covs, means)


def _pattern_terms(mp: MarginalParams, obs: np.ndarray):
    """Per component: Cholesky of Sigma_oo, regression B = Sigma_mo Sigma_oo^-1, conditional cov."""
    miss = ~obs
    terms = []
    for k in range(mp.n_components):
        S = mp.covariances[k]
        Soo = S[np.ix_(obs, obs)]
        if obs.any():
            try:
                L = linalg.cholesky(Soo, lower=True)
            except linalg.LinAlgError:
                raise ValueError(
                    "A covariance restricted to the observed features is not positive definite: "
                    "increase reg_covar."
                ) from None
            logdet = 2.0 * np.log(np.diag(L)).sum()
            if miss.any():
                Som = S[np.ix_(obs, miss)]
                B = linalg.cho_solve((L, True), Som).T  # (m, o)
                C = S[np.ix_(miss, miss)] - B @ Som
            else:
                B = C = None
        else:
            L, logdet, B, C = None, 0.0, None, S
        terms.append((L, logdet, B, C))
    return terms


def marginal_block(X: np.ndarray, mp: MarginalParams):
    """Marginal weighted log-densities and completed rows of one chunk.

    Returns ``wlp`` (n, K) and a function giving, per component, the completed rows
    ``x_hat`` (n, D) and the conditional covariances summed with given row weights.
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    k = mp.n_components
    nan = np.isnan(X)
    if np.isinf(X).any():
        check_finite_block(np.where(nan, 0.0, X))
    patterns, inverse = np.unique(nan, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    wlp = np.empty((n, k))
    groups = []
    for g, pat in enumerate(patterns):
        rows = np.flatnonzero(inverse == g)
        obs = ~pat
        terms = _pattern_terms(mp, obs)
        xo = X[np.ix_(rows, obs)]
        for j, (L, logdet, _B, _C) in enumerate(terms):
            if L is None:
                wlp[rows, j] = mp.log_weights[j]
                continue
            diff = xo - mp.means[j, obs]
            z = linalg.solve_triangular(L, diff.T, lower=True)
            maha = np.einsum("ij,ij->j", z, z)
            wlp[rows, j] = mp.log_weights[j] - 0.5 * (obs.sum() * LOG_2PI + logdet + maha)
        groups.append((rows, obs, terms))
    return X, wlp, groups


def marginal_stats(X: np.ndarray, mp: MarginalParams, sample_weight: np.ndarray | None = None) -> dict:
    """Exact EM statistics with missing features integrated out (one chunk, one candidate)."""
    X = np.asarray(X)
    n, d = X.shape
    k = mp.n_components
    out = empty_stats(k, d, "full")
    if n == 0:
        return _to_type(out, mp.covariance_type)
    X, wlp, groups = marginal_block(X, mp)
    resp, log_norm = log_resp_and_norm(wlp)
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        resp *= w[:, None]
        out["n"] = float(w.sum())
        out["loglik"] = float(np.dot(w, log_norm))
    else:
        out["n"] = float(n)
        out["loglik"] = float(log_norm.sum())
    if not math.isfinite(out["loglik"]):
        raise ValueError("Non-finite log-likelihood in a chunk: check the data for infinite values.")
    for rows, obs, terms in groups:
        miss = ~obs
        xo = X[np.ix_(rows, obs)]
        r = resp[rows]
        for j, (_L, _logdet, B, C) in enumerate(terms):
            xhat = np.empty((rows.size, d))
            xhat[:, obs] = xo
            if miss.any():
                mu_m = mp.means[j, miss]
                if B is not None:
                    xhat[:, miss] = mu_m + (xo - mp.means[j, obs]) @ B.T
                else:
                    xhat[:, miss] = mu_m
            y = xhat - mp.stat_centers[j]
            rj = r[:, j]
            wy = y * rj[:, None]
            out["nk"][j] += rj.sum()
            out["u"][j] += wy.sum(axis=0)
            out["s2"][j] += wy.T @ y
            if miss.any():
                out["s2"][j][np.ix_(miss, miss)] += rj.sum() * C
    return _to_type(out, mp.covariance_type)


def _to_type(stats: dict, covariance_type: str) -> dict:
    """Full per-component second moments → the covariance type's ``s2`` format."""
    if covariance_type == "tied":
        stats["s2"] = stats["s2"].sum(axis=0)
    elif covariance_type in ("diag", "spherical"):
        stats["s2"] = np.diagonal(stats["s2"], axis1=1, axis2=2).copy()
    return stats


def marginal_multi_stats(X: np.ndarray, mps, sample_weight: np.ndarray | None = None) -> list:
    """The marginalising statistics of each candidate on one chunk read once."""
    return [marginal_stats(X, mp, sample_weight) for mp in mps]


__all__ = [
    "NAN_POLICIES",
    "MarginalParams",
    "marginal_params",
    "marginal_stats",
    "marginal_multi_stats",
    "omit_multi_stats",
]
