"""Variational Bayesian Gaussian mixtures (scikit-learn's ``BayesianGaussianMixture``): numpy only.

The same per-chunk statistics as EM (``nk``, ``u``, ``s2`` about the centres, ``loglik``; see
:mod:`daskgmm._gaussian`) drive the variational updates; only two things differ from EM:

* the E-step's per-component log-weights: ``E[log pi_k]`` (digamma terms of the Dirichlet or
  stick-breaking posterior) plus ``-D/2 log nu_k + 1/2 (E[log |Lambda_k|] - D / beta_k)``, the
  terms scikit-learn's ``_estimate_log_prob`` adds to the Gaussian log-density of
  ``precisions_cholesky_`` (of the covariances normalised by the degrees of freedom). They enter
  the fused kernel as :class:`~daskgmm._gaussian.EStepParams`' ``log_weights``;
* the M-step (:func:`variational_m_step`: the Dirichlet / Beta, Gaussian and Wishart posteriors,
  one sibling function per covariance type, as scikit-learn's ``_estimate_wishart_*``) and the
  lower bound (:func:`lower_bound`, scikit-learn's ``_compute_lower_bound``, a total, not a mean).

The lower bound needs the entropy ``-sum r log r`` of the responsibilities. It is not a new
statistic: with ``log r_nk = c_k - 1/2 (x_n - m_k)' Lambda_k (x_n - m_k) - log p(x_n)``
(``c_k`` the E-step's per-component constant),
``sum_nk r log r = sum_k N_k c_k - 1/2 sum_k tr(Lambda_k S_k) - sum_n log p(x_n)``, with ``S_k``
the scatter about the E-step's means, which the statistics give exactly (:func:`resp_log_resp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, digamma, gammaln

from daskgmm._gaussian import (
    EStepParams,
    Params,
    compute_precision_cholesky,
    log_det_cholesky,
    m_step,
)

#: ``weight_concentration_prior_type`` choices
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


@dataclass
class VariationalParams(Params):
    """The variational posterior of one start (float64), on top of :class:`Params`.

    ``weights`` are scikit-learn's ``weights_`` (expected mixture weights), ``covariances`` its
    ``covariances_`` (the Wishart scale normalised by the degrees of freedom).
    """

    #: (2, K) Beta parameters for ``dirichlet_process``, (K,) for ``dirichlet_distribution``
    weight_concentration: np.ndarray
    mean_precision: np.ndarray  # (K,)
    degrees_of_freedom: np.ndarray  # (K,), or shape () for tied
    #: the E-step's per-component log-weights (everything added to the Gaussian log-density)
    log_weights: np.ndarray


#: the arrays a checkpoint stores beyond :class:`Params`'
EXTRA_ARRAYS = ("weight_concentration", "mean_precision", "degrees_of_freedom", "log_weights")


@dataclass(frozen=True)
class Prior:
    """The priors as scikit-learn's fitted ``*_prior_`` attributes (defaults resolved)."""

    prior_type: str
    weight_concentration: float
    mean_precision: float
    mean: np.ndarray  # (D,)
    degrees_of_freedom: float
    covariance: np.ndarray  # (D, D) full/tied, (D,) diag, () spherical


def default_priors(
    n_components: int,
    n_features: int,
    covariance_type: str,
    mean: np.ndarray,
    covariance: np.ndarray,
    *,
    prior_type: str = "dirichlet_process",
    weight_concentration_prior=None,
    mean_precision_prior=None,
    mean_prior=None,
    degrees_of_freedom_prior=None,
    covariance_prior=None,
) -> Prior:
    """Resolve the priors as scikit-learn's ``_check_parameters``.

    ``mean`` is the data mean, ``covariance`` the data's unbiased covariance matrix (full and
    tied) or variances (diag, spherical): the defaults of ``mean_prior`` and ``covariance_prior``.
    The given priors are assumed checked already (shapes, positivity).
    """
    d = n_features
    if degrees_of_freedom_prior is None:
        dof = float(d)
    elif degrees_of_freedom_prior > d - 1.0:
        dof = float(degrees_of_freedom_prior)
    else:
        raise ValueError(
            f"The parameter 'degrees_of_freedom_prior' should be greater than {d - 1}, "
            f"but got {degrees_of_freedom_prior:.3f}."
        )
    if covariance_prior is None:
        cov = np.asarray(covariance, dtype=np.float64)
        if covariance_type == "spherical":
            cov = np.asarray(cov.mean())
    else:
        cov = np.asarray(covariance_prior, dtype=np.float64)
    return Prior(
        prior_type,
        1.0 / n_components if weight_concentration_prior is None else float(weight_concentration_prior),
        1.0 if mean_precision_prior is None else float(mean_precision_prior),
        np.asarray(mean if mean_prior is None else mean_prior, dtype=np.float64),
        dof,
        cov,
    )


# --------------------------------------------------------------------------
# weights: Dirichlet distribution or Dirichlet process (stick breaking)
# --------------------------------------------------------------------------
def weight_concentration(nk: np.ndarray, prior: Prior) -> np.ndarray:
    if prior.prior_type == "dirichlet_process":
        return np.stack((1.0 + nk, prior.weight_concentration + np.hstack((np.cumsum(nk[::-1])[-2::-1], 0))))
    return prior.weight_concentration + nk


def expected_log_weights(wc: np.ndarray, prior_type: str) -> np.ndarray:
    """``E[log pi_k]`` (scikit-learn's ``_estimate_log_weights``)."""
    if prior_type == "dirichlet_process":
        digamma_sum = digamma(wc[0] + wc[1])
        digamma_a = digamma(wc[0])
        digamma_b = digamma(wc[1])
        return digamma_a - digamma_sum + np.hstack((0, np.cumsum(digamma_b - digamma_sum)[:-1]))
    return digamma(wc) - digamma(np.sum(wc))


def mixture_weights(wc: np.ndarray, prior_type: str) -> np.ndarray:
    """The expected weights, scikit-learn's ``weights_``."""
    if prior_type == "dirichlet_process":
        total = wc[0] + wc[1]
        tmp = wc[1] / total
        w = wc[0] / total * np.hstack((1, np.cumprod(tmp[:-1])))
        return w / np.sum(w)
    return wc / np.sum(wc)


# --------------------------------------------------------------------------
# the Wishart posteriors: (degrees of freedom, normalised covariances), sibling functions
# --------------------------------------------------------------------------
def _wishart_full(nk, xk, sk, prior: Prior, mean_precision):
    dof = prior.degrees_of_freedom + nk
    diff = xk - prior.mean
    cov = (
        prior.covariance
        + nk[:, None, None] * sk
        + (nk * prior.mean_precision / mean_precision)[:, None, None] * (diff[:, :, None] * diff[:, None, :])
    )
    return dof, cov / dof[:, None, None]


def _wishart_tied(nk, xk, sk, prior: Prior, mean_precision):
    k = nk.shape[0]
    dof = np.asarray(prior.degrees_of_freedom + nk.sum() / k)
    diff = xk - prior.mean
    cov = (
        prior.covariance
        + sk * nk.sum() / k
        + prior.mean_precision / k * np.dot((nk / mean_precision) * diff.T, diff)
    )
    return dof, cov / dof


def _wishart_diag(nk, xk, sk, prior: Prior, mean_precision):
    dof = prior.degrees_of_freedom + nk
    diff = xk - prior.mean
    cov = prior.covariance + nk[:, None] * (sk + (prior.mean_precision / mean_precision)[:, None] * diff**2)
    return dof, cov / dof[:, None]


def _wishart_spherical(nk, xk, sk, prior: Prior, mean_precision):
    dof = prior.degrees_of_freedom + nk
    diff = xk - prior.mean
    cov = prior.covariance + nk * (sk + prior.mean_precision / mean_precision * np.mean(diff**2, 1))
    return dof, cov / dof


WISHART = {
    "full": _wishart_full,
    "tied": _wishart_tied,
    "diag": _wishart_diag,
    "spherical": _wishart_spherical,
}


def log_prob_offset(degrees_of_freedom, mean_precision, n_features: int) -> np.ndarray:
    """What scikit-learn's ``_estimate_log_prob`` adds to the Gaussian log-density, per component:
    ``-D/2 log nu + 1/2 (D log 2 + sum_j digamma((nu - j)/2) - D / beta)``."""
    d = n_features
    dof = np.asarray(degrees_of_freedom, dtype=np.float64)
    log_lambda = d * np.log(2.0) + np.sum(digamma(0.5 * (dof - np.arange(d)[:, None])), 0)
    return -0.5 * d * np.log(dof) + 0.5 * (log_lambda - d / mean_precision)


def variational_params(nk, xk, sk, prior: Prior, covariance_type: str, dtype=None) -> VariationalParams:
    """The variational posterior from ``nk`` (with scikit-learn's ``10 eps``), the weighted means
    ``xk`` and covariances ``sk`` (with ``reg_covar``), as scikit-learn's ``_estimate_weights``,
    ``_estimate_means`` and ``_estimate_precisions``."""
    nk = np.asarray(nk, dtype=np.float64)
    wc = weight_concentration(nk, prior)
    mean_precision = prior.mean_precision + nk
    means = (prior.mean_precision * prior.mean + nk[:, None] * xk) / mean_precision[:, None]
    dof, covariances = WISHART[covariance_type](nk, xk, sk, prior, mean_precision)
    prec_chol = compute_precision_cholesky(covariances, covariance_type, dtype)
    d = means.shape[1]
    log_weights = expected_log_weights(wc, prior.prior_type) + log_prob_offset(dof, mean_precision, d)
    return VariationalParams(
        mixture_weights(wc, prior.prior_type),
        means,
        covariances,
        prec_chol,
        wc,
        mean_precision,
        dof,
        log_weights,
    )


def with_log_weights(vp: VariationalParams, prior_type: str) -> VariationalParams:
    """``vp`` with its E-step log-weights recomputed from its other arrays (parameters set by hand)."""
    d = vp.means.shape[1]
    vp.log_weights = expected_log_weights(vp.weight_concentration, prior_type) + log_prob_offset(
        vp.degrees_of_freedom, vp.mean_precision, d
    )
    return vp


# --------------------------------------------------------------------------
# the lower bound
# --------------------------------------------------------------------------
def _log_wishart_norm(dof, log_det_precisions_chol, n_features: int):
    # scikit-learn's, without the log(pi) term
    return -(
        dof * log_det_precisions_chol
        + dof * n_features * 0.5 * math.log(2.0)
        + np.sum(gammaln(0.5 * (dof - np.arange(n_features)[:, None])), 0)
    )


def resp_log_resp(stats: dict, p: EStepParams) -> float:
    """``sum_n w_n sum_k r_nk log r_nk`` of the E-step that produced ``stats`` with parameters ``p``.

    From the statistics alone (see the module docs): the scatter about the E-step means is the
    scatter about the statistics' centres moved by ``d = means - centres``.
    """
    ct = p.covariance_type
    nk = np.asarray(stats["nk"], dtype=np.float64)
    u = np.asarray(stats["u"], dtype=np.float64)
    s2 = np.asarray(stats["s2"], dtype=np.float64)
    means = p.means_c64 + p.center
    d = means - np.asarray(p.stat_centers, dtype=np.float64)
    pc = p.prec_chol
    if ct == "full":
        ud = u[:, :, None] * d[:, None, :]
        S = s2 - ud - np.swapaxes(ud, 1, 2) + nk[:, None, None] * (d[:, :, None] * d[:, None, :])
        prec = np.matmul(pc, np.swapaxes(pc, 1, 2))
        quad = np.einsum("kij,kij->k", prec, S).sum()
    elif ct == "tied":
        ud = u.T @ d
        S = s2 - ud - ud.T + (nk[:, None] * d).T @ d
        quad = np.sum((pc @ pc.T) * S)
    else:
        prec = pc**2 if ct == "diag" else (pc**2)[:, None]
        quad = np.sum(prec * (s2 - 2.0 * u * d + nk[:, None] * d * d))
    return float(np.dot(nk, p.const) - 0.5 * quad - stats["loglik"])


def lower_bound(vp: VariationalParams, resp_log_resp_sum: float, prior: Prior, covariance_type: str) -> float:
    """scikit-learn's ``_compute_lower_bound`` (constant terms left out), a total over the rows."""
    d = vp.means.shape[1]
    log_det = log_det_cholesky(vp.precisions_cholesky, covariance_type, d) - 0.5 * d * np.log(
        vp.degrees_of_freedom
    )
    if covariance_type == "tied":
        log_wishart = vp.means.shape[0] * np.float64(_log_wishart_norm(vp.degrees_of_freedom, log_det, d)[0])
    else:
        log_wishart = np.sum(_log_wishart_norm(vp.degrees_of_freedom, log_det, d))
    wc = vp.weight_concentration
    if prior.prior_type == "dirichlet_process":
        log_norm_weight = -np.sum(betaln(wc[0], wc[1]))
    else:
        log_norm_weight = gammaln(np.sum(wc)) - np.sum(gammaln(wc))
    return float(
        -resp_log_resp_sum - log_wishart - log_norm_weight - 0.5 * d * np.sum(np.log(vp.mean_precision))
    )


# --------------------------------------------------------------------------
# the model family the engine is handed
# --------------------------------------------------------------------------
class VariationalFamily:
    """Variational Bayes on the engine: the E-step parameters and the update from the statistics.

    The engine calls :meth:`prepare` before every pass and :meth:`update` after it, in place of
    EM's; everything else (passes, starts, convergence, checkpoints) is the engine's.
    """

    def __init__(self, prior: Prior):
        self.prior = prior

    def prepare(self, params: VariationalParams, covariance_type: str, dtype) -> EStepParams:
        return EStepParams(
            params.weights,
            params.means,
            params.precisions_cholesky,
            covariance_type,
            dtype,
            log_weights=params.log_weights,
        )

    def initial(self, params: Params, total: float, covariance_type: str, dtype=None) -> VariationalParams:
        """The posterior after scikit-learn's ``_initialize``, from an EM initialisation whose
        ``weights`` are ``nk / total`` (``nk`` with its ``10 eps``)."""
        nk = np.asarray(params.weights, dtype=np.float64) * total
        return variational_params(nk, params.means, params.covariances, self.prior, covariance_type, dtype)

    def update(self, stats: dict, p: EStepParams, reg_covar: float, covariance_type: str, dtype):
        """``(posterior, lower bound)`` after the E-step that gave ``stats`` at parameters ``p``."""
        nk, xk, sk = m_step(stats, p.stat_centers, reg_covar, covariance_type, dtype)
        vp = variational_params(nk, xk, sk, self.prior, covariance_type, dtype)
        return vp, lower_bound(vp, resp_log_resp(stats, p), self.prior, covariance_type)


__all__ = [
    "EXTRA_ARRAYS",
    "PRIOR_TYPES",
    "Prior",
    "VariationalFamily",
    "VariationalParams",
    "default_priors",
    "expected_log_weights",
    "log_prob_offset",
    "lower_bound",
    "mixture_weights",
    "resp_log_resp",
    "variational_params",
    "with_log_weights",
]
