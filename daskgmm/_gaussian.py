"""Numpy-only Gaussian mixture maths, one sibling function per covariance type.

Everything here runs on plain numpy arrays, on the driver (M-step) or inside one
task on a worker (E-step on one block of rows). Nothing imports dask.

Conventions follow scikit-learn's ``sklearn/mixture/_gaussian_mixture.py``:
``precisions_cholesky`` holds factors ``P`` with ``precision = P @ P.T``, and the
log-determinant of a precision is ``2 * sum(log(diag(P)))``.

Sufficient statistics
---------------------
For responsibilities ``r`` (times optional sample weights) and a *centre* ``c_k``
per component, one pass accumulates

* ``nk[k]  = sum_n r[n, k]``
* ``u[k]   = sum_n r[n, k] (x_n - c_k)``                      (first moment about c)
* ``s2``   = the second moment about the centres:
    - full:      ``S[k] = sum_n r[n, k] (x_n - c_k)(x_n - c_k)^T``      (K, D, D)
    - tied:      ``S    = sum_n w_n (x_n - c)(x_n - c)^T``               (D, D)
    - diag/sph.: ``Q[k] = sum_n r[n, k] (x_n - c)**2``                  (K, D)

``full`` centres each component on its previous mean; the other types share one
centre (the previous weighted mean of the means). Moments about a nearby centre
avoid the cancellation of raw ``sum x x^T - N mu mu^T`` for data far from the
origin or in float32, and the M-step turns them into scatter about the new means
exactly: ``sum r (x-m)(x-m)^T = S - u d^T - d u^T + nk d d^T`` with ``d = m - c``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import linalg

CovarianceType = Literal["full", "tied", "diag", "spherical"]
COVARIANCE_TYPES: tuple[str, ...] = ("full", "tied", "diag", "spherical")

LOG_2PI = math.log(2.0 * math.pi)

COLLAPSE_MESSAGE = (
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)
COLLAPSE_MESSAGE_FLOAT32 = (
    " The numerical accuracy can also be improved by passing float64"
    " data instead of float32."
)


# --------------------------------------------------------------------------
# Cholesky factors of the precisions
# --------------------------------------------------------------------------
def _collapse_error(dtype) -> ValueError:
    msg = COLLAPSE_MESSAGE
    if np.dtype(dtype) == np.float32:
        msg += COLLAPSE_MESSAGE_FLOAT32
    return ValueError(msg)


def _precision_cholesky_one(covariance: np.ndarray) -> np.ndarray:
    try:
        cov_chol = linalg.cholesky(covariance, lower=True)
    except linalg.LinAlgError:
        raise _collapse_error(covariance.dtype) from None
    n_features = covariance.shape[0]
    return linalg.solve_triangular(
        cov_chol, np.eye(n_features, dtype=covariance.dtype), lower=True
    ).T


def precision_cholesky_full(covariances: np.ndarray) -> np.ndarray:
    out = np.empty_like(covariances)
    for k in range(covariances.shape[0]):
        out[k] = _precision_cholesky_one(covariances[k])
    return out


def precision_cholesky_tied(covariance: np.ndarray) -> np.ndarray:
    return _precision_cholesky_one(covariance)


def precision_cholesky_diag(covariances: np.ndarray) -> np.ndarray:
    if np.any(covariances <= 0.0):
        raise _collapse_error(covariances.dtype)
    return 1.0 / np.sqrt(covariances)


PRECISION_CHOLESKY = {
    "full": precision_cholesky_full,
    "tied": precision_cholesky_tied,
    "diag": precision_cholesky_diag,
    "spherical": precision_cholesky_diag,
}


def compute_precision_cholesky(covariances: np.ndarray, covariance_type: str, data_dtype=None) -> np.ndarray:
    """Cholesky factors of the precisions from covariances (scikit-learn's convention).

    ``data_dtype`` is the dtype of the data: float32 data adds scikit-learn's hint to
    the collapse error (covariances themselves are always float64 here).
    """
    try:
        return PRECISION_CHOLESKY[covariance_type](covariances)
    except ValueError as e:
        if data_dtype is not None and np.dtype(data_dtype) == np.float32 and COLLAPSE_MESSAGE_FLOAT32 not in str(e):
            raise ValueError(str(e) + COLLAPSE_MESSAGE_FLOAT32) from None
        raise


def _flipudlr(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper-triangular ``U`` with ``precision = U U^T`` (scikit-learn #26415)."""
    if covariance_type == "full":
        return np.stack(
            [_flipudlr(linalg.cholesky(_flipudlr(p), lower=True)) for p in precisions]
        )
    if covariance_type == "tied":
        return _flipudlr(linalg.cholesky(_flipudlr(precisions), lower=True))
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    if covariance_type == "full":
        return np.matmul(prec_chol, np.swapaxes(prec_chol, 1, 2))
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    if covariance_type == "full":
        return np.stack([linalg.inv(p) for p in precisions])
    if covariance_type == "tied":
        return linalg.inv(precisions)
    return 1.0 / precisions


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """``log det P`` for each component (half the log-determinant of the precision)."""
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diagonal(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters of the mixture (for BIC and AIC)."""
    if covariance_type == "full":
        cov_params = n_components * n_features * (n_features + 1) / 2.0
    elif covariance_type == "diag":
        cov_params = n_components * n_features
    elif covariance_type == "tied":
        cov_params = n_features * (n_features + 1) / 2.0
    else:
        cov_params = n_components
    return int(cov_params + n_features * n_components + n_components - 1)


# --------------------------------------------------------------------------
# E-step on one block of rows
# --------------------------------------------------------------------------
class EStepParams:
    """Parameters prepared once per iteration for the per-block E-step.

    Holds the centred means, the stacked Cholesky factors and the per-component
    constants in the compute dtype, so every block does only matrix products.
    """

    __slots__ = (
        "covariance_type",
        "dtype",
        "center",
        "means_c",
        "log_weights",
        "const",
        "pstack",
        "offsets",
        "prec",
        "mp",
        "prec_chol",
        "n_components",
        "n_features",
        "stat_centers",
    )

    def __init__(self, weights, means, prec_chol, covariance_type, dtype, center=None):
        dtype = np.dtype(dtype)
        means = np.asarray(means, dtype=np.float64)
        prec_chol = np.asarray(prec_chol, dtype=np.float64)
        n_components, n_features = means.shape
        self.covariance_type = covariance_type
        self.dtype = dtype
        self.n_components = n_components
        self.n_features = n_features
        if center is None:
            w = np.asarray(weights, dtype=np.float64)
            center = (w / w.sum()) @ means if np.all(np.isfinite(w)) and w.sum() > 0 else means.mean(0)
        self.center = np.asarray(center, dtype=np.float64)
        means_c = means - self.center
        self.means_c = means_c.astype(dtype)
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
        # per-component constant: log w_k - D/2 log 2pi + log det P_k
        self.const = (log_w - 0.5 * n_features * LOG_2PI + log_det).astype(np.float64)
        self.log_weights = log_w
        self.prec_chol = prec_chol
        self.pstack = self.offsets = self.prec = self.mp = None
        if covariance_type == "full":
            # X' @ [P_1 | P_2 | ... | P_K] - [mu'_1 P_1 | ... ] in one product
            self.pstack = np.ascontiguousarray(
                prec_chol.transpose(1, 0, 2).reshape(n_features, n_components * n_features)
            ).astype(dtype)
            self.offsets = np.einsum("kd,kde->ke", means_c, prec_chol).reshape(-1).astype(dtype)
        elif covariance_type == "tied":
            self.pstack = prec_chol.astype(dtype)
            self.offsets = (means_c @ prec_chol).astype(dtype)  # (K, D)
        elif covariance_type == "diag":
            prec = prec_chol**2
            self.prec = prec.T.astype(dtype)  # (D, K)
            self.mp = (means_c * prec).T.astype(dtype)  # (D, K)
            self.const = self.const - 0.5 * np.sum(means_c**2 * prec, axis=1)
        else:  # spherical
            prec = prec_chol**2
            self.prec = prec.astype(dtype)  # (K,)
            self.mp = (means_c * prec[:, None]).T.astype(dtype)  # (D, K)
            self.const = self.const - 0.5 * np.sum(means_c**2, axis=1) * prec
        # Centres about which the second moments are accumulated (float64).
        if covariance_type == "full":
            self.stat_centers = means
        else:
            self.stat_centers = np.broadcast_to(self.center, means.shape)


def weighted_log_prob(Xc: np.ndarray, p: EStepParams) -> np.ndarray:
    """``log w_k + log N(x | mu_k, Sigma_k)`` for centred rows ``Xc = X - center``.

    Returns an array of shape (n_rows, n_components) in the compute dtype.
    """
    n, d = Xc.shape
    k = p.n_components
    ct = p.covariance_type
    if ct == "full":
        y = Xc @ p.pstack
        y -= p.offsets
        y = y.reshape(n, k, d)
        maha = np.einsum("nkd,nkd->nk", y, y)
    elif ct == "tied":
        y = Xc @ p.pstack  # (n, D)
        # sum_d (y - b_k)^2 = |y|^2 - 2 y.b_k + |b_k|^2
        maha = (
            np.einsum("nd,nd->n", y, y)[:, None]
            - 2.0 * (y @ p.offsets.T)
            + np.einsum("kd,kd->k", p.offsets, p.offsets)[None, :]
        )
    elif ct == "diag":
        maha = (Xc * Xc) @ p.prec - 2.0 * (Xc @ p.mp)
    else:
        maha = np.einsum("nd,nd->n", Xc, Xc)[:, None] * p.prec[None, :] - 2.0 * (Xc @ p.mp)
    out = -0.5 * maha
    out += p.const.astype(out.dtype)
    return out


def log_resp_and_norm(wlp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise log-sum-exp and log responsibilities (in place on ``wlp``)."""
    mx = wlp.max(axis=1)
    finite = np.isfinite(mx)
    mx_safe = np.where(finite, mx, 0.0)
    with np.errstate(under="ignore", over="ignore", divide="ignore", invalid="ignore"):
        wlp -= mx_safe[:, None]
        np.exp(wlp, out=wlp)
        s = wlp.sum(axis=1)
        log_norm = np.log(s) + mx_safe
        wlp /= s[:, None]
    return wlp, log_norm


# --------------------------------------------------------------------------
# M-step from sufficient statistics
# --------------------------------------------------------------------------
def _scatter_full(S, u, d, nk_raw, nk, reg_covar):
    # sum r (x-m)(x-m)^T = S - u d^T - d u^T + nk d d^T
    ud = np.einsum("ki,kj->kij", u, d)
    cov = S - ud - np.swapaxes(ud, 1, 2) + nk_raw[:, None, None] * np.einsum("ki,kj->kij", d, d)
    cov /= nk[:, None, None]
    idx = np.arange(cov.shape[1])
    cov[:, idx, idx] += reg_covar
    return cov


def _scatter_tied(S, u, d, nk_raw, nk, reg_covar):
    ud = u.T @ d
    cov = S - ud - ud.T + (nk_raw[:, None] * d).T @ d
    cov /= nk.sum()
    idx = np.arange(cov.shape[0])
    cov[idx, idx] += reg_covar
    return cov


def _scatter_diag(Q, u, d, nk_raw, nk, reg_covar):
    var = (Q - 2.0 * u * d + nk_raw[:, None] * d * d) / nk[:, None]
    return var + reg_covar


def _scatter_spherical(Q, u, d, nk_raw, nk, reg_covar):
    return _scatter_diag(Q, u, d, nk_raw, nk, reg_covar).mean(axis=1)


COVARIANCE_FROM_STATS = {
    "full": _scatter_full,
    "tied": _scatter_tied,
    "diag": _scatter_diag,
    "spherical": _scatter_spherical,
}


def m_step(stats: dict, centers: np.ndarray, reg_covar: float, covariance_type: str, eps_dtype=np.float64):
    """Weights (unnormalised ``nk``), means and covariances from sufficient statistics.

    Mirrors scikit-learn's ``_estimate_gaussian_parameters``: ``nk`` gets
    ``10 * eps`` added so that empty components do not divide by zero.
    Returns ``nk, means, covariances`` (float64).
    """
    nk_raw = np.asarray(stats["nk"], dtype=np.float64)
    nk = nk_raw + 10 * np.finfo(eps_dtype).eps
    u = stats["u"]
    centers = np.asarray(centers, dtype=np.float64)
    means = (u + nk_raw[:, None] * centers) / nk[:, None]
    d = means - centers
    covariances = COVARIANCE_FROM_STATS[covariance_type](stats["s2"], u, d, nk_raw, nk, reg_covar)
    return nk, means, covariances
