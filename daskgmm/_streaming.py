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

Interop: :func:`to_sklearn` and :func:`from_sklearn` copy the fitted parameters
between :class:`daskgmm.GaussianMixture` and :class:`sklearn.mixture.GaussianMixture`.
"""

from __future__ import annotations

import logging
import time

import dask
import numpy as np
from dask.base import tokenize

from daskgmm._em import EMConfig, EMState, Params
from daskgmm._gaussian import compute_precision_cholesky, m_step
from daskgmm._graph import shared
from daskgmm._multi import apply_m_step, data_plan, estep_params, multi_statistics_pass

logger = logging.getLogger("daskgmm")

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
        out["s2"] = s2 - ud - np.swapaxes(ud, 1, 2) + nk[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
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


def params_from_stats(stats: dict, centers: np.ndarray, covariance_type: str, reg_covar: float, dtype) -> Params:
    nk, means, covariances = m_step(stats, centers, reg_covar, covariance_type, dtype)
    weights = nk / nk.sum()
    return Params(weights, means, covariances, compute_precision_cholesky(covariances, covariance_type))


# --------------------------------------------------------------------------
# stepwise EM: partial_fit
# --------------------------------------------------------------------------
def step_size(t: int) -> float:
    """``eta_t = (t + 1) ** -STEP_DECAY``: 1 for the first batch, then decreasing."""
    return float((t + 1) ** -STEP_DECAY)


def partial_fit(est, X, sample_weight=None):
    """One stepwise-EM update of ``est`` from the batch ``X`` (see the module docs)."""
    from daskgmm._em import complete_params

    fitted = hasattr(est, "means_")
    if not fitted:
        est._check_params()
    inp = est._validate(X, reset=not fitted)
    w = est._check_sample_weight(sample_weight, inp)
    ct = est.covariance_type
    dtype = inp.data.dtype
    nan_policy = getattr(est, "nan_policy", "raise")
    t0 = time.perf_counter()
    if not fitted:
        if inp.n_samples < est.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {est.n_components}, n_samples = {inp.n_samples}"
            )
        from sklearn.utils import check_random_state

        from daskgmm._input import check_means, check_precisions, check_weights
        from daskgmm._multi import init_input

        k, d = est.n_components, inp.n_features
        given = (
            check_weights(est.weights_init, k) if est.weights_init is not None else None,
            check_means(est.means_init, k, d) if est.means_init is not None else None,
            check_precisions(est.precisions_init, ct, k, d) if est.precisions_init is not None else None,
        )
        need_init = any(g is None for g in given)
        inp0, w0 = init_input(inp, w, nan_policy, est.n_components) if need_init else (inp, w)
        params = complete_params(est._initialize(inp0, w0, check_random_state(est.random_state), *given), ct)
        stream_t, running, centers = 0, None, None
        n_iter, history = 0, []
    else:
        params = complete_params(
            Params(est.weights_, est.means_, est.covariances_, est.precisions_cholesky_), ct
        )
        state = getattr(est, "_stream", None)
        if state is None:  # after fit(): statistics rebuilt from the fitted parameters
            running, centers = stats_from_params(params, ct, est.reg_covar)
            stream_t = 1
        else:
            stream_t, running, centers = state
        n_iter, history = est.n_iter_, list(getattr(est, "history_", []))
    kernel, prepare = data_plan(nan_policy)
    p = (prepare or estep_params)(params, ct, dtype)
    blocks = inp.data.to_delayed(optimize_graph=False).ravel()
    wblocks = w.to_delayed(optimize_graph=False).ravel() if w is not None else None
    token = tokenize(inp.data.name, None if w is None else w.name, params.weights, params.means,
                     params.precisions_cholesky, ct, "partial")
    (batch,) = multi_statistics_pass(blocks, wblocks, [p], token, est.split_every, kernel)
    if not batch["n"] > 0:
        raise ValueError("The batch has no rows with positive weight (after nan_policy): nothing to learn from.")
    batch = scale(batch, 1.0 / batch["n"])
    eta = step_size(stream_t)
    centers_now = np.asarray(p.stat_centers, dtype=np.float64)
    if running is None or eta >= 1.0:
        blended = batch
    else:
        running = recenter(running, centers, centers_now, ct)
        blended = add(scale(running, 1.0 - eta), scale(batch, eta))
    new = params_from_stats(blended, centers_now, ct, est.reg_covar, dtype)
    est._set_parameters(new)
    est._stream = (stream_t + 1, blended, centers_now)
    lower_bound = float(batch["loglik"])
    change = lower_bound - getattr(est, "lower_bound_", -np.inf) if fitted else np.inf
    record = {
        "iteration": n_iter + 1,
        "lower_bound": lower_bound,
        "change": float(change),
        "seconds": time.perf_counter() - t0,
        "step_size": eta,
        "batch_rows": inp.n_samples,
    }
    est.n_iter_ = n_iter + 1
    est.lower_bound_ = lower_bound
    est.lower_bounds_ = [*getattr(est, "lower_bounds_", []), lower_bound] if fitted else [lower_bound]
    est.history_ = [*history, record]
    est.converged_ = False
    logger.info("partial_fit batch %d: %d rows, step size %.3f, batch mean log-likelihood %.6f",
                stream_t, inp.n_samples, eta, lower_bound)
    return est


# --------------------------------------------------------------------------
# incremental EM (Neal & Hinton) on a fixed dataset
# --------------------------------------------------------------------------
def _chunk_task(kernel, block, ps, w=None):
    return kernel(block, ps, w)[0]


def run_incremental(state: EMState, blocks, weight_blocks, cfg: EMConfig, dtype, data_token: str,
                    chunks_per_iter: int, kernel, prepare=None, hook=None, callback=None) -> EMState:
    """Incremental EM: a full first pass, then ``chunks_per_iter`` chunks refreshed per iteration."""
    prepare = prepare or estep_params
    n = len(blocks)
    m = min(int(chunks_per_iter), n)
    stored: list = [None] * n
    centers: list = [None] * n
    cursor = 0
    sweep_start_lb = None
    refreshed = 0
    ct = cfg.covariance_type
    start = state.n_iter
    f = dask.delayed(_chunk_task, pure=True)
    while state.n_iter - start < cfg.max_iter:
        t0 = time.perf_counter()
        p = prepare(state.params, ct, dtype)
        if stored[0] is None:
            idx = list(range(n))
        else:
            idx = [(cursor + j) % n for j in range(m)]
            cursor = (cursor + m) % n
        token = tokenize(data_token, state.params.weights, state.params.means,
                         state.params.precisions_cholesky, ct, idx)
        ps = shared([p], name=f"gmm-incr-params-{token}")
        tasks = [
            f(kernel, blocks[i], ps, *(() if weight_blocks is None else (weight_blocks[i],)),
              dask_key_name=(f"gmm-incr-stats-{token}", i))
            for i in idx
        ]
        results = dask.compute(*tasks)
        c_now = np.asarray(p.stat_centers, dtype=np.float64)
        for i, r in zip(idx, results):
            stored[i], centers[i] = r, c_now
        total = None
        for i in range(n):
            s = stored[i] if centers[i] is c_now else recenter(stored[i], centers[i], c_now, ct)
            total = s if total is None else add(total, s)
        record = apply_m_step(state, total, p, cfg, dtype, time.perf_counter() - t0, hook)
        record["chunks"] = len(idx)
        refreshed += len(idx)
        # convergence once per sweep, on the change over the sweep
        state.converged = False
        if refreshed >= n:
            if sweep_start_lb is not None and abs(state.lower_bound - sweep_start_lb) < cfg.tol:
                state.converged = True
            sweep_start_lb = state.lower_bound
            refreshed = 0
        if callback is not None:
            callback(state, record)
        if state.converged:
            break
    return state


# --------------------------------------------------------------------------
# scikit-learn interoperability
# --------------------------------------------------------------------------
_FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
           "converged_", "n_iter_", "lower_bound_", "n_features_in_")


def to_sklearn(est):
    """A fitted :class:`sklearn.mixture.GaussianMixture` with ``est``'s parameters and attributes."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    names = SkGaussianMixture().get_params().keys()
    params = {k: v for k, v in est.get_params().items() if k in names}
    sk = SkGaussianMixture(**params)
    for name in _FITTED:
        value = getattr(est, name)
        setattr(sk, name, np.array(value, copy=True) if isinstance(value, np.ndarray) else value)
    sk.lower_bounds_ = list(getattr(est, "lower_bounds_", []))
    if hasattr(est, "feature_names_in_"):
        sk.feature_names_in_ = np.array(est.feature_names_in_, copy=True)
    return sk


def from_sklearn(cls, model, **params):
    """A fitted ``cls`` (daskgmm) from a fitted scikit-learn ``GaussianMixture``."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, SkGaussianMixture):
        raise TypeError(
            f"from_sklearn expects a fitted sklearn.mixture.GaussianMixture, got {type(model).__name__}."
        )
    check_is_fitted(model)
    names = cls().get_params().keys()
    kwargs = {k: v for k, v in model.get_params().items() if k in names}
    kwargs.update(params)
    est = cls(**kwargs)
    for name in _FITTED:
        value = getattr(model, name)
        setattr(est, name, np.array(value, dtype=np.float64, copy=True)
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" else value)
    est.lower_bounds_ = list(getattr(model, "lower_bounds_", []))
    est.history_ = []
    if hasattr(model, "feature_names_in_"):
        est.feature_names_in_ = np.array(model.feature_names_in_, copy=True)
    return est


__all__ = [
    "STEP_DECAY",
    "step_size",
    "recenter",
    "partial_fit",
    "run_incremental",
    "to_sklearn",
    "from_sklearn",
]
