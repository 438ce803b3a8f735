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
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from daskgmm._typing import COVARIANCE_TYPES as COVARIANCE_TYPES  # re-exported

LOG_2PI = math.log(2.0 * math.pi)

COLLAPSE_MESSAGE = (
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)
COLLAPSE_MESSAGE_FLOAT32 = (
    " The numerical accuracy can also be improved by passing float64 data instead of float32."
)


@dataclass
class Params:
    """One set of mixture parameters (float64); ``covariances`` may be None when only
    precisions were given."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray | None
    precisions_cholesky: np.ndarray


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
    return linalg.solve_triangular(cov_chol, np.eye(n_features, dtype=covariance.dtype), lower=True).T


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
        if (
            data_dtype is not None
            and np.dtype(data_dtype) == np.float32
            and COLLAPSE_MESSAGE_FLOAT32 not in str(e)
        ):
            raise ValueError(str(e) + COLLAPSE_MESSAGE_FLOAT32) from None
        raise


def _flipudlr(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper-triangular ``U`` with ``precision = U U^T`` (scikit-learn #26415)."""
    if covariance_type == "full":
        return np.stack([_flipudlr(linalg.cholesky(_flipudlr(p), lower=True)) for p in precisions])
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
# The hot path works on blocks of rows held *transposed*: features × rows. Each
# block becomes a design matrix F (one row per term of the log-density, one column
# per data row) built from the centred rows x = X - center:
#
# * full:       [x_i x_j for i <= j;  x;  1]     (D(D+1)/2 + D + 1 rows)
# * tied:       [x;  1]                          (D + 1; the shared quadratic x'Λx is added apart)
# * diag/sph.:  [x*x;  x;  1]                    (2D + 1)
#
# Then the E-step is ONE matrix product, ``log w_k + log N(x | mu_k, Sigma_k) = G @ F``
# with G (K × rows of F) prepared once per iteration, and the statistics are ONE
# more, ``F @ resp.T`` (the quadratic rows give Σ r x xᵀ, the linear rows Σ r x, the
# ones row N_k). For full covariances this is half the flops of the Mahalanobis form
# (x_i x_j is symmetric) and no (rows × K × D) temporary exists; the
# (K, rows) layout makes the log-sum-exp reductions run across contiguous rows.
# Moments about the shared centre are moved to each component's centre (the
# previous means) once per chunk, in float64.


def design_rows(covariance_type: str, n_features: int) -> int:
    """Number of rows of the per-block design matrix (see above)."""
    d = n_features
    if covariance_type == "full":
        return d * (d + 1) // 2 + d + 1
    if covariance_type == "tied":
        return d + 1
    return 2 * d + 1


class EStepParams:
    """Parameters prepared once per iteration for the per-block E-step.

    Holds the centre, the coefficient matrix ``coef`` (K × design rows) of the
    log-density in the compute dtype, and the float64 values the statistics need,
    so every block does only matrix products. ``log_weights``, when given, replaces
    ``log(weights)`` as the per-component additive term (``weights`` then only place the centre).
    """

    __slots__ = (
        "covariance_type",
        "dtype",
        "center",
        "means_c",
        "means_c64",
        "log_weights",
        "const",
        "coef",
        "tied_pt",
        "prec_chol",
        "n_components",
        "n_features",
        "n_design",
        "stat_centers",
        "kernel",
    )

    def __init__(self, weights, means, prec_chol, covariance_type, dtype, center=None, log_weights=None):
        dtype = np.dtype(dtype)
        means = np.asarray(means, dtype=np.float64)
        prec_chol = np.asarray(prec_chol, dtype=np.float64)
        n_components, n_features = means.shape
        d = n_features
        self.covariance_type = covariance_type
        self.dtype = dtype
        self.n_components = n_components
        self.n_features = n_features
        self.n_design = design_rows(covariance_type, d)
        #: which kernel computes the statistics and predictions: "auto", "numba" or "numpy" (the dask
        #: config ``daskgmm.kernel``, set where a fit or a prediction starts; see ``_kernels.use_compiled``)
        self.kernel = "auto"
        if center is None:
            w = np.asarray(weights, dtype=np.float64)
            center = (w / w.sum()) @ means if np.all(np.isfinite(w)) and w.sum() > 0 else means.mean(0)
        self.center = np.asarray(center, dtype=np.float64)
        m = means - self.center
        self.means_c64 = m
        self.means_c = m.astype(dtype)
        if log_weights is None:
            with np.errstate(divide="ignore"):
                log_w = np.log(np.asarray(weights, dtype=np.float64))
        else:  # per-component terms in place of log w_k (variational Bayes: daskgmm._bayesian)
            log_w = np.asarray(log_weights, dtype=np.float64)
        log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
        # per-component constant: log w_k - D/2 log 2pi + log det P_k
        self.const = (log_w - 0.5 * n_features * LOG_2PI + log_det).astype(np.float64)
        self.log_weights = log_w
        self.prec_chol = prec_chol
        self.tied_pt = None
        # log N = const - 1/2 (x - m)' Λ (x - m) = const - 1/2 m'Λm + (Λm)'x - 1/2 x'Λx
        coef = np.empty((n_components, self.n_design))
        if covariance_type == "full":
            prec = np.matmul(prec_chol, np.swapaxes(prec_chol, 1, 2))  # Λ_k = P_k P_kᵀ
            iu, ju = np.triu_indices(d)
            coef[:, : iu.size] = prec[:, iu, ju] * np.where(iu == ju, -0.5, -1.0)
            lam_m = np.einsum("kij,kj->ki", prec, m)
            mpm = np.einsum(
                "kd,kd->k", np.einsum("kd,kde->ke", m, prec_chol), np.einsum("kd,kde->ke", m, prec_chol)
            )
            coef[:, iu.size : iu.size + d] = lam_m
        elif covariance_type == "tied":
            prec = prec_chol @ prec_chol.T
            lam_m = m @ prec
            mpm = np.einsum("kd,kd->k", m @ prec_chol, m @ prec_chol)
            coef[:, :d] = lam_m
            self.tied_pt = np.ascontiguousarray(prec_chol.T).astype(dtype)  # y = Pᵀ x, x'Λx = |y|²
        else:
            prec = prec_chol**2  # (K, D) diag, (K,) spherical
            if covariance_type == "spherical":
                prec = np.broadcast_to(prec[:, None], (n_components, d))
            coef[:, :d] = -0.5 * prec
            coef[:, d : 2 * d] = prec * m
            mpm = np.sum(prec * m * m, axis=1)
        coef[:, -1] = self.const - 0.5 * mpm
        with np.errstate(over="ignore"):  # centres of extreme data: the kernel names the value
            self.coef = np.ascontiguousarray(coef.astype(dtype))
        # Centres about which the second moments are accumulated (float64).
        if covariance_type == "full":
            self.stat_centers = means
        else:
            self.stat_centers = np.broadcast_to(self.center, means.shape)


def design_t(X: np.ndarray, p: EStepParams, out: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Fill ``out`` (design rows × n) with the design matrix of the rows ``X`` (n × D).

    ``center`` (in the compute dtype) is subtracted first; pass None for rows already
    centred on ``p.center``. Returns the view of ``out`` holding the centred rows
    transposed (D × n).
    """
    d = p.n_features
    ct = p.covariance_type
    if ct == "full":
        lin = d * (d + 1) // 2
    elif ct == "tied":
        lin = 0
    else:
        lin = d
    xt = out[lin : lin + d]
    if center is None:
        np.copyto(xt, X.T, casting="same_kind")
    else:
        np.subtract(X.T, center[:, None], out=xt, casting="same_kind")
    if ct == "full":
        o = 0
        for i in range(d):
            np.multiply(xt[i], xt[i:], out=out[o : o + d - i])
            o += d - i
    elif ct != "tied":
        np.multiply(xt, xt, out=out[:d])
    out[-1] = 1.0
    return xt


def weighted_log_prob_t(
    F: np.ndarray, xt: np.ndarray, p: EStepParams, out: np.ndarray | None = None
) -> np.ndarray:
    """``log w_k + log N(x | mu_k, Sigma_k)`` as a (K, n) array from the design matrix.

    ``out`` (K, n) of the compute dtype, optional: a buffer reused from block to block (a
    fresh output of a few hundred KiB per block costs page faults: measured, the product
    ran at 24 instead of 37 GFLOP/s on one core).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows are reported by the callers
        wlp = np.matmul(p.coef, F, out=out)
        if p.covariance_type == "tied":
            y = p.tied_pt @ xt
            y *= y
            wlp -= 0.5 * y.sum(axis=0)
    return wlp


def log_resp_and_norm_t(wlp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp over components and responsibilities for a (K, n) array (in place)."""
    mx = wlp.max(axis=0)
    finite = np.isfinite(mx)
    if not finite.all():
        mx = np.where(finite, mx, 0.0).astype(wlp.dtype)
    with np.errstate(under="ignore", over="ignore", divide="ignore", invalid="ignore"):
        wlp -= mx
        np.exp(wlp, out=wlp)
        s = wlp.sum(axis=0)
        log_norm = np.log(s)
        log_norm += mx
        wlp *= np.reciprocal(s, out=s)
    return wlp, log_norm


def weighted_log_prob(Xc: np.ndarray, p: EStepParams) -> np.ndarray:
    """``log w_k + log N(x | mu_k, Sigma_k)`` for centred rows ``Xc = X - center``.

    Returns an array of shape (n_rows, n_components) in the compute dtype (a
    transposed view of the (K, n) result of the block kernel).
    """
    Xc = np.asarray(Xc)
    F = np.empty((p.n_design, Xc.shape[0]), dtype=p.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        xt = design_t(Xc, p, F)
    return weighted_log_prob_t(F, xt, p).T


def log_resp_and_norm(wlp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise log-sum-exp and responsibilities of an (n, K) array (in place on ``wlp``)."""
    resp_t, log_norm = log_resp_and_norm_t(wlp.T)
    return resp_t.T, log_norm


def moments_to_stats(M: np.ndarray, S_tied: np.ndarray | None, p: EStepParams) -> tuple:
    """``nk, u, s2`` about ``p.stat_centers`` from the design-matrix moments ``M = Σ F respᵀ``.

    ``M`` (design rows × K, float64) holds Σ r x xᵀ (upper triangle, full), Σ r x and
    N_k about the shared centre; for full covariances they are moved to each
    component's centre: S_k = S0_k - u0_k m_kᵀ - m_k u0_kᵀ + N_k m_k m_kᵀ.
    """
    d = p.n_features
    ct = p.covariance_type
    nk = M[-1].copy()
    if ct == "full":
        t = d * (d + 1) // 2
        iu, ju = np.triu_indices(d)
        u0 = M[t : t + d].T
        s0 = np.empty((p.n_components, d, d))
        s0[:, iu, ju] = M[:t].T
        s0[:, ju, iu] = M[:t].T
        m = p.means_c64
        um = u0[:, :, None] * m[:, None, :]
        s2 = s0 - um - np.swapaxes(um, 1, 2) + nk[:, None, None] * (m[:, :, None] * m[:, None, :])
        u = u0 - nk[:, None] * m
        return nk, u, s2
    if ct == "tied":
        return nk, M[:d].T.copy(), S_tied
    return nk, M[d : 2 * d].T.copy(), M[:d].T.copy()


# --------------------------------------------------------------------------
# M-step from sufficient statistics
# --------------------------------------------------------------------------
# Each sibling gets the scatter statistics about the centres, ``d = means - centres`` and
# ``tiny = (nk_raw + 10 eps) - nk_raw`` per component (float64 eps). scikit-learn computes
# diag and tied covariances from raw moments (``Σ r x² / nk - means²``), which in exact
# arithmetic is the scatter plus ``tiny · means²``: the term that keeps a one-row
# component's variance positive when ``reg_covar=0``. daskgmm adds the same term to the
# scatter (zero once ``nk_raw`` is more than a few rows, where ``nk_raw + 10 eps`` rounds to
# ``nk_raw``); full covariances are scatter about the means in scikit-learn too.
def _scatter_full(S, u, d, means, nk_raw, nk, tiny, reg_covar):
    # sum r (x-m)(x-m)^T = S - u d^T - d u^T + nk d d^T
    ud = np.einsum("ki,kj->kij", u, d)
    cov = S - ud - np.swapaxes(ud, 1, 2) + nk_raw[:, None, None] * np.einsum("ki,kj->kij", d, d)
    cov /= nk[:, None, None]
    idx = np.arange(cov.shape[1])
    cov[:, idx, idx] += reg_covar
    return cov


def _scatter_tied(S, u, d, means, nk_raw, nk, tiny, reg_covar):
    ud = u.T @ d
    cov = S - ud - ud.T + (nk_raw[:, None] * d).T @ d + (tiny[:, None] * means).T @ means
    cov /= nk.sum()
    idx = np.arange(cov.shape[0])
    cov[idx, idx] += reg_covar
    return cov


def _scatter_diag(Q, u, d, means, nk_raw, nk, tiny, reg_covar):
    # a negative scatter is rounding noise (a one-row component): clip it before the eps term
    scatter = np.maximum(Q - 2.0 * u * d + nk_raw[:, None] * d * d, 0.0)
    return (scatter + tiny[:, None] * means * means) / nk[:, None] + reg_covar


def _scatter_spherical(Q, u, d, means, nk_raw, nk, tiny, reg_covar):
    return _scatter_diag(Q, u, d, means, nk_raw, nk, tiny, reg_covar).mean(axis=1)


COVARIANCE_FROM_STATS = {
    "full": _scatter_full,
    "tied": _scatter_tied,
    "diag": _scatter_diag,
    "spherical": _scatter_spherical,
}


def m_step(stats: dict, centers: np.ndarray, reg_covar: float, covariance_type: str, eps_dtype=np.float64):
    """Weights (unnormalised ``nk``), means and covariances from sufficient statistics.

    Mirrors scikit-learn's ``_estimate_gaussian_parameters``: ``nk`` gets
    ``10 * eps`` (of the data's dtype) added so that empty components do not divide by
    zero, and diag, spherical and tied covariances get its ``10 * eps`` term (see above).
    Returns ``nk, means, covariances`` (float64).
    """
    nk_raw = np.asarray(stats["nk"], dtype=np.float64)
    nk = nk_raw + 10 * np.finfo(eps_dtype).eps
    tiny = (nk_raw + 10 * np.finfo(np.float64).eps) - nk_raw
    u = stats["u"]
    centers = np.asarray(centers, dtype=np.float64)
    means = (u + nk_raw[:, None] * centers) / nk[:, None]
    d = means - centers
    covariances = COVARIANCE_FROM_STATS[covariance_type](
        stats["s2"], u, d, means, nk_raw, nk, tiny, reg_covar
    )
    return nk, means, covariances


def sample_mixture(
    rng: np.random.RandomState, n_samples: int, weights, means, covariances, covariance_type: str
):
    """``n_samples`` draws from the mixture, component by component (scikit-learn's random stream).

    Returns ``(X, y)``: the samples (n_samples, n_features) and their components (int64).
    """
    n_features = means.shape[1]
    n_samples_comp = rng.multinomial(n_samples, weights)
    if covariance_type == "full":
        X = np.vstack(
            [
                rng.multivariate_normal(mean, cov, int(s))
                for mean, cov, s in zip(means, covariances, n_samples_comp)
            ]
        )
    elif covariance_type == "tied":
        X = np.vstack(
            [rng.multivariate_normal(mean, covariances, int(s)) for mean, s in zip(means, n_samples_comp)]
        )
    else:
        X = np.vstack(
            [
                mean + rng.standard_normal(size=(s, n_features)) * np.sqrt(cov)
                for mean, cov, s in zip(means, covariances, n_samples_comp)
            ]
        )
    y = np.concatenate([np.full(int(s), j, dtype=np.int64) for j, s in enumerate(n_samples_comp)])
    return X, y
