"""Dead-component recovery (``on_collapse="reseed"``): numpy only, run on the driver.

:func:`make_reseed_hook` returns the hook the engine applies after each M-step (and
to the initial parameters). Its state (re-seeds per component, events of the
initialisation not yet reported) is plain data that checkpoints save and restore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from scipy import linalg

logger = logging.getLogger("daskgmm")

#: re-seeds of one component allowed per start before giving up with a clear error
MAX_RESEEDS_PER_COMPONENT = 5


def _is_singular(cov: np.ndarray, covariance_type: str) -> bool:
    if not np.all(np.isfinite(cov)):
        return True
    if covariance_type in ("diag", "spherical"):
        return bool(np.any(cov <= 0.0))
    try:
        linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError:
        return True
    return False


def _nll_contribution(
    nk: np.ndarray, covariances: np.ndarray, covariance_type: str, n_features: int
) -> np.ndarray:
    """Each component's share of the negative expected complete-data log-likelihood at the M-step optimum:
    ``nk (log det(2 pi e Sigma_k) / 2 - log w_k)``."""
    k = nk.shape[0]
    if covariance_type == "full":
        logdet = np.array([np.linalg.slogdet(c)[1] for c in covariances])
    elif covariance_type == "tied":
        logdet = np.full(k, np.linalg.slogdet(covariances)[1])
    elif covariance_type == "diag":
        logdet = np.log(np.maximum(covariances, 1e-300)).sum(axis=1)
    else:
        logdet = n_features * np.log(np.maximum(covariances, 1e-300))
    w = nk / nk.sum()
    return nk * (0.5 * (n_features * (1.0 + np.log(2 * np.pi)) + logdet) - np.log(np.maximum(w, 1e-300)))


def _principal_axis(cov: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """Largest standard deviation times its direction, for one component's covariance."""
    if covariance_type in ("full", "tied"):
        vals, vecs = np.linalg.eigh(cov)
        return np.sqrt(max(vals[-1], 0.0)) * vecs[:, -1]
    if covariance_type == "diag":
        axis = int(np.argmax(cov))
        out = np.zeros(n_features)
        out[axis] = np.sqrt(cov[axis])
        return out
    out = np.zeros(n_features)
    out[0] = np.sqrt(cov)
    return out


def make_reseed_hook(covariance_type: str, n_rows: int) -> Callable:
    """The ``on_collapse="reseed"`` hook applied after each M-step.

    A component *collapses* when it holds less than one row's worth of weight
    (``nk < total weight / n_rows``) or when its covariance is not positive definite.
    It is re-seeded by splitting the live component with the largest contribution
    to the negative log-likelihood (:func:`_nll_contribution`) along its principal
    axis: the two halves get the donor's covariance, half its weight each and means
    ``mu ± sigma_max v_max``. Each event is logged and returned for the fit history.
    """
    count: dict[int, int] = {}  # re-seeds per component (saved in checkpoints)

    def hook(stats, nk, means, covariances):
        return _reseed(stats, nk, means, covariances)

    def at_init(weights, means, covariances):
        """Initial parameters: the same test and remedy, with ``nk = weights * n_rows``."""
        weights = np.asarray(weights, dtype=np.float64)
        nk = weights * n_rows
        stats = {"n": float(n_rows), "nk": nk}
        nk, means, covariances, events = _reseed(stats, nk, np.asarray(means, dtype=np.float64), covariances)
        hook.init_events.extend(events)
        return nk / nk.sum(), means, covariances

    def _reseed(stats, nk, means, covariances):
        k, d = means.shape
        nk_raw = np.asarray(stats["nk"], dtype=np.float64)
        unit = float(stats["n"]) / max(n_rows, 1)
        reasons = {}
        for j in range(k):
            if nk_raw[j] < unit:
                reasons[j] = "weight"
            elif covariance_type != "tied" and _is_singular(covariances[j], covariance_type):
                reasons[j] = "covariance"
        if not reasons or len(reasons) == k:
            return nk, means, covariances, []
        for j in reasons:
            count[j] = count.get(j, 0) + 1
            if count[j] > MAX_RESEEDS_PER_COMPONENT:
                raise ValueError(
                    f"Component {j} kept collapsing after {MAX_RESEEDS_PER_COMPONENT} re-seeds "
                    "(on_collapse='reseed'): the data likely holds a point mass (many identical "
                    "rows) that a Gaussian can only fit with a singular covariance. Increase "
                    "reg_covar (for example to 1e-6), or drop or mask those rows."
                )
        nk = nk.copy()
        means = means.copy()
        covariances = covariances.copy()
        dead = set(reasons)
        events = []
        for j in sorted(reasons):
            live = [c for c in range(k) if c not in dead]
            contrib = _nll_contribution(
                nk[live], covariances if covariance_type == "tied" else covariances[live], covariance_type, d
            )
            donor = live[int(np.argmax(contrib))]
            cov_donor = covariances if covariance_type == "tied" else covariances[donor]
            off = _principal_axis(cov_donor, covariance_type, d)
            mu = means[donor].copy()
            means[donor] = mu - off
            means[j] = mu + off
            if covariance_type != "tied":
                covariances[j] = covariances[donor]
            half = nk[donor] / 2.0
            nk[donor] = nk[j] = half
            dead.discard(j)
            event = {"component": int(j), "reason": reasons[j], "split": int(donor)}
            events.append(event)
            logger.warning(
                "component %d collapsed (%s); re-seeded by splitting component %d",
                j,
                reasons[j],
                donor,
            )
        return nk, means, covariances, events

    hook.init_events = []
    hook.at_init = at_init
    hook.counts = count
    return hook
