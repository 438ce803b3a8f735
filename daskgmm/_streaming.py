"""Streaming and incremental EM, and scikit-learn interoperability.

Stepwise EM (``partial_fit``)
    For data that arrives over time (Cappé & Moulines 2009; Liang & Klein 2009).
    The model keeps running sufficient statistics ``s`` normalised per row. Batch
    ``t`` (t = 0, 1, 2, ...) is E-stepped at the current parameters, its statistics
    ``s_t`` (also per row) are blended in as ``s <- (1 - eta_t) s + eta_t s_t`` with
    the step size ``eta_t = (t + 1) ** -STEP_DECAY`` (``STEP_DECAY = 0.6``, within
    (0.5, 1] as convergence of stochastic approximation requires), and the M-step
    runs on ``s``. The first batch initialises the model (``init_params``) and,
    with ``eta_0 = 1``, is one EM iteration on that batch. After a ``fit``, the
    statistics are rebuilt from the fitted parameters and the schedule continues
    at ``t = 1``.
Incremental EM (``GaussianMixture(incremental=m)``)
    Neal & Hinton (1998) on a fixed dataset: the first iteration is a full pass
    that keeps every chunk's statistics; each later iteration re-computes only the
    next ``m`` chunks (round robin), replaces their statistics and runs the M-step
    on the sum, so an iteration reads ``m`` chunks instead of all. Stored
    statistics are moved to the current centres exactly (:func:`recenter`). The
    reported lower bound is the sum of the chunks' log-likelihoods, each at the
    parameters it was last computed with; convergence is checked once per sweep
    (when every chunk has been refreshed) on the change over that sweep.

This module holds the statistics algebra both use; the engine
(:mod:`daskgmm._engine`) runs them.
"""

from __future__ import annotations

import numpy as np

from daskgmm._gaussian import Params, compute_precision_cholesky, m_step

#: exponent of the stepwise-EM step size ``eta_t = (t + 1) ** -STEP_DECAY``
STEP_DECAY = 0.6


# --------------------------------------------------------------------------
# statistics algebra
# --------------------------------------------------------------------------
def recenter(stats: dict, old_centers: np.ndarray, new_centers: np.ndarray, covariance_type: str) -> dict:
    """The same statistics as moments about ``new_centers`` (exact, per component)."""
    delta = np.asarray(new_centers, dtype=np.float64) - np.asarray(old_centers, dtype=np.float64)
    nk, u, s2 = stats["nk"], stats["u"], stats["s2"]
    out = dict(stats)
    out["u"] = u - nk[:, None] * delta
    if covariance_type == "full":
        ud = np.einsum("ki,kj->kij", u, delta)
        out["s2"] = (
            s2 - ud - np.swapaxes(ud, 1, 2) + nk[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
        )
    elif covariance_type == "tied":
        ud = u.T @ delta
        out["s2"] = s2 - ud - ud.T + (nk[:, None] * delta).T @ delta
    else:
        out["s2"] = s2 - 2.0 * u * delta + nk[:, None] * delta * delta
    return out


def scale(stats: dict, factor: float) -> dict:
    return {key: v * factor for key, v in stats.items()}


def add(a: dict, b: dict) -> dict:
    return {key: a[key] + b[key] for key in a}


def stats_from_params(params: Params, covariance_type: str, reg_covar: float) -> tuple[dict, np.ndarray]:
    """Per-row statistics (about the means) that give back ``params`` through the M-step."""
    w = np.asarray(params.weights, dtype=np.float64)
    means = np.asarray(params.means, dtype=np.float64)
    k, d = means.shape
    cov = np.asarray(params.covariances, dtype=np.float64)
    if covariance_type == "full":
        s2 = w[:, None, None] * (cov - reg_covar * np.eye(d)[None])
    elif covariance_type == "tied":
        s2 = w.sum() * (cov - reg_covar * np.eye(d))
    elif covariance_type == "diag":
        s2 = w[:, None] * (cov - reg_covar)
    else:
        s2 = w[:, None] * np.broadcast_to((cov - reg_covar)[:, None], (k, d))
    stats = {"n": 1.0, "loglik": 0.0, "nk": w.copy(), "u": np.zeros((k, d)), "s2": s2}
    return stats, means


def params_from_stats(
    stats: dict, centers: np.ndarray, covariance_type: str, reg_covar: float, dtype
) -> Params:
    nk, means, covariances = m_step(stats, centers, reg_covar, covariance_type, dtype)
    weights = nk / nk.sum()
    return Params(weights, means, covariances, compute_precision_cholesky(covariances, covariance_type))


# --------------------------------------------------------------------------
# stepwise EM: partial_fit
# --------------------------------------------------------------------------
def step_size(t: int) -> float:
    """``eta_t = (t + 1) ** -STEP_DECAY``: 1 for the first batch, then decreasing."""
    return float((t + 1) ** -STEP_DECAY)


__all__ = ["STEP_DECAY", "step_size", "recenter", "scale", "add", "stats_from_params", "params_from_stats"]
