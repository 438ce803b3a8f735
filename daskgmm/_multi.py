"""Several candidate models per pass over the data.

One task per chunk reads the chunk once and runs the fused E-step + statistics
(:func:`daskgmm._kernels.chunk_stats`) for every *live* candidate: a list of
statistics dicts leaves the task, and a fixed-order tree reduction sums them
candidate by candidate. The driver then does each candidate's M-step. A
candidate that has converged (or used up ``max_iter``) drops out of the next
pass, so a sweep over K, covariance types and restarts costs one data pass per
iteration instead of one per candidate.

Used by :func:`daskgmm.select_model` and by ``GaussianMixture(n_init > 1)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import dask
import numpy as np
from dask.base import tokenize
from scipy import linalg

from daskgmm._em import EMConfig, EMState, Params, apply_m_step, improves
from daskgmm._gaussian import EStepParams
from daskgmm._graph import map_reduce, shared
from daskgmm._kernels import chunk_stats, combine

logger = logging.getLogger("daskgmm")


def multi_chunk_stats(X: np.ndarray, ps: Sequence[EStepParams], sample_weight: np.ndarray | None = None) -> list:
    """Statistics of every candidate ``ps[i]`` on one chunk read once."""
    X = np.asarray(X)
    return [chunk_stats(X, p, sample_weight) for p in ps]


def combine_lists(parts: Sequence[list]) -> list:
    """Sum lists of statistics dicts position by position (fixed order)."""
    return [combine([part[i] for part in parts]) for i in range(len(parts[0]))]


def multi_map_reduce(func: Callable, args_per_chunk: Sequence[tuple], name: str, split_every: int = 16):
    """``func(*args_i)`` per chunk (returning a list), then a fixed-order tree sum of the lists."""
    return map_reduce(func, args_per_chunk, name, split_every, combine_func=combine_lists)


def multi_statistics_pass(blocks, weight_blocks, ps: Sequence[EStepParams], token: str, split_every: int,
                          kernel: Callable = multi_chunk_stats) -> list:
    """One pass over the data: the reduced statistics of every candidate in ``ps`` (one ``compute``)."""
    pss = shared(list(ps), name=f"gmm-multi-params-{token}")
    if weight_blocks is None:
        args = [(b, pss) for b in blocks]
    else:
        args = [(b, pss, w) for b, w in zip(blocks, weight_blocks)]
    graph = multi_map_reduce(kernel, args, f"gmm-multi-stats-{token}", split_every)
    (stats,) = dask.compute(graph)
    return stats


def estep_params(params: Params, covariance_type: str, dtype) -> EStepParams:
    return EStepParams(params.weights, params.means, params.precisions_cholesky, covariance_type, dtype)


def run_multi_em(
    states: Sequence[EMState],
    cfgs: Sequence[EMConfig],
    blocks,
    weight_blocks,
    dtype,
    data_token: str,
    split_every: int = 16,
    collapse: Sequence[Callable | None] | None = None,
    kernel: Callable = multi_chunk_stats,
    prepare: Callable | None = None,
    callback: Callable | None = None,
) -> list[EMState]:
    """Run EM for several candidates together: one pass (one ``compute``) per iteration for all live ones.

    ``states[i]`` runs under ``cfgs[i]`` (its covariance type, tol, reg_covar and
    max_iter). Each candidate's sequence of parameters is exactly what a separate
    :func:`daskgmm._em.run_em` would give: the per-candidate arithmetic is the same,
    only the passes over the data are shared.
    """
    prepare = prepare or estep_params
    starts = [s.n_iter for s in states]
    live = [i for i, c in enumerate(cfgs) if c.max_iter > 0]
    passes = 0
    while live:
        t0 = time.perf_counter()
        ps = [prepare(states[i].params, cfgs[i].covariance_type, dtype) for i in live]
        token = tokenize(
            data_token,
            [(states[i].params.weights, states[i].params.means, states[i].params.precisions_cholesky) for i in live],
            [cfgs[i].covariance_type for i in live],
        )
        all_stats = multi_statistics_pass(blocks, weight_blocks, ps, token, split_every, kernel)
        passes += 1
        seconds = time.perf_counter() - t0
        still = []
        for i, p, stats in zip(live, ps, all_stats):
            hook = collapse[i] if collapse is not None else None
            record = apply_m_step(states[i], stats, p, cfgs[i], dtype, seconds, hook)
            if callback is not None:
                callback(states[i], record)
            if not states[i].converged and states[i].n_iter - starts[i] < cfgs[i].max_iter:
                still.append(i)
        logger.info("multi-candidate pass %d: %d live candidate(s), %.3fs", passes, len(live), seconds)
        live = still
    return list(states)


def final_logliks(params: Sequence[Params], covariance_types: Sequence[str], blocks, weight_blocks, dtype,
                  data_token: str, split_every: int = 16, kernel: Callable = multi_chunk_stats,
                  prepare: Callable | None = None) -> list[float]:
    """Total log-likelihood of each fitted candidate, in one pass for all of them."""
    prepare = prepare or estep_params
    ps = [prepare(prm, ct, dtype) for prm, ct in zip(params, covariance_types)]
    token = tokenize(data_token, "final", [(q.weights, q.means, q.precisions_cholesky) for q in params],
                     list(covariance_types))
    stats = multi_statistics_pass(blocks, weight_blocks, ps, token, split_every, kernel)
    return [float(s["loglik"]) for s in stats]


def best_index(states: Sequence[EMState]) -> int:
    """Index of the start with the largest final lower bound (ties: the first, as scikit-learn)."""
    best = 0
    for i, s in enumerate(states[1:], start=1):
        if improves(s.lower_bound, states[best].lower_bound):
            best = i
    return best



def run_restarts(groups, blocks, weight_blocks, dtype, data_token: str, split_every: int = 16,
                 collapse=None, kernel: Callable = multi_chunk_stats, prepare: Callable | None = None,
                 callback: Callable | None = None) -> list[tuple[EMState, list[EMState]]]:
    """EM for groups of starts, all starts of all groups sharing each pass over the data.

    ``groups`` is a list of ``(inits, cfg)``: ``inits`` a list of callables returning
    each start's initial :class:`Params` (called in order, group by group, so the random
    draws happen in scikit-learn's order: start 0's, then start 1's, ...), ``cfg`` the
    group's :class:`EMConfig`. ``collapse`` optionally gives, per group, a factory of collapse hooks (one hook per start).
    Returns, per group, ``(best_state, all_states)``; the best start has the largest
    final lower bound, ties going to the first.
    """
    states, cfgs, owner, hooks = [], [], [], []
    for g, (inits, cfg) in enumerate(groups):
        for make in inits:
            factory = collapse[g] if collapse is not None else None
            hook = factory() if factory is not None else None
            start = make(hook.at_init if hook is not None else None)
            states.append(start if isinstance(start, EMState) else EMState(params=start))
            cfgs.append(cfg)
            owner.append(g)
            hooks.append(hook)
    run_multi_em(states, cfgs, blocks, weight_blocks, dtype, data_token, split_every, hooks, kernel, prepare,
                 callback)
    out = []
    for g in range(len(groups)):
        mine = [s for s, o in zip(states, owner) if o == g]
        if cfgs[owner.index(g)].max_iter == 0:
            best = mine[-1]  # scikit-learn keeps the last start when no iteration runs
        else:
            best = mine[best_index(mine)]
        out.append((best, mine))
    return out


# --------------------------------------------------------------------------
# dead-component recovery: on_collapse="reseed"
# --------------------------------------------------------------------------
ON_COLLAPSE: tuple[str, ...] = ("raise", "reseed")

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


def _nll_contribution(nk: np.ndarray, covariances: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
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
    count: dict[int, int] = {}

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
            contrib = _nll_contribution(nk[live], covariances if covariance_type == "tied" else covariances[live],
                                        covariance_type, d)
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
                j, reasons[j], donor,
            )
        return nk, means, covariances, events

    hook.init_events = []
    hook.at_init = at_init
    return hook


# --------------------------------------------------------------------------
# the estimator's entry point for n_init > 1, on_collapse, nan_policy
# --------------------------------------------------------------------------
def check_extra_params(est) -> None:
    """Validate the parameters of the features beyond scikit-learn."""
    from daskgmm._missing import NAN_POLICIES

    on_collapse = getattr(est, "on_collapse", "raise")
    if on_collapse not in ON_COLLAPSE:
        raise ValueError(
            "The 'on_collapse' parameter of GaussianMixture must be a str among "
            f"{set(ON_COLLAPSE)}. Got {on_collapse!r} instead."
        )
    nan_policy = getattr(est, "nan_policy", "raise")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(
            "The 'nan_policy' parameter of GaussianMixture must be a str among "
            f"{set(NAN_POLICIES)}. Got {nan_policy!r} instead."
        )
    checkpoint = getattr(est, "checkpoint", None)
    incremental = getattr(est, "incremental", None)
    if checkpoint is not None and (on_collapse != "raise" or nan_policy != "raise" or incremental is not None):
        raise ValueError(
            "checkpoint cannot be combined with on_collapse='reseed', nan_policy other than "
            "'raise' or incremental yet: drop checkpoint or use the defaults."
        )
    if incremental is not None and (
        isinstance(incremental, bool) or not isinstance(incremental, (int, np.integer)) or incremental < 1
    ):
        raise ValueError(
            "The 'incremental' parameter of GaussianMixture must be None (full EM) or an int >= 1 "
            f"(chunks refreshed per iteration). Got {incremental!r} instead."
        )


def uses_multi(est) -> bool:
    """Whether ``fit`` goes through this module's driver rather than the plain loop."""
    return (
        est.n_init > 1
        or getattr(est, "on_collapse", "raise") != "raise"
        or getattr(est, "nan_policy", "raise") != "raise"
        or getattr(est, "incremental", None) is not None
    )


def check_dask_weights(w) -> None:
    """Refuse NaN/inf, negative or all-zero weights (one pass over the weights only)."""
    finite, low, total = dask.compute(da_isfinite_all(w), w.min(), w.sum())
    check_weight_values(bool(finite), float(low), float(total))


def da_isfinite_all(w):
    import dask.array as da

    return da.isfinite(w).all()


def check_weight_values(finite: bool, low: float, total: float) -> None:
    if not finite:
        raise ValueError("sample_weight contains NaN or infinity: weights must be finite.")
    if low < 0:
        raise ValueError("Negative values in sample_weight: weights must be >= 0.")
    if total <= 0:
        raise ValueError("sample_weight sums to zero: at least one row needs a positive weight.")


def data_plan(nan_policy: str):
    """``(kernel, prepare)`` for the statistics pass under ``nan_policy``."""
    if nan_policy == "omit":
        from daskgmm._missing import omit_multi_stats

        return omit_multi_stats, None
    if nan_policy == "marginalize":
        from daskgmm._missing import marginal_multi_stats, marginal_params

        def prepare(prm: Params, ct: str, dtype):
            return marginal_params(prm.weights, prm.means, prm.covariances, prm.precisions_cholesky, ct)

        return marginal_multi_stats, prepare
    return multi_chunk_stats, None


def init_input(inp, w, nan_policy: str, n_components: int):
    """The input that initialisation sees: for nan_policy omit/marginalize, the complete rows."""
    if nan_policy == "raise":
        return inp, w
    import dataclasses

    import dask.array as da

    X = inp.data
    keep = ~da.isnan(X).any(axis=1)
    if w is None:
        Xi = X[keep].compute_chunk_sizes()
        wi = None
    else:
        d = X.shape[1]
        both = da.concatenate([X.astype(np.float64), w[:, None]], axis=1)[keep].compute_chunk_sizes()
        Xi, wi = both[:, :d].astype(X.dtype), both[:, d]
    n = int(Xi.shape[0])
    if n < max(n_components, 1):
        raise ValueError(
            f"nan_policy={nan_policy!r} initialises on the rows without NaN, and only {n} row(s) "
            f"are complete, fewer than n_components={n_components}. Give weights_init, means_init "
            "and precisions_init, or impute some rows first."
        )
    return dataclasses.replace(inp, data=Xi, n_samples=n), wi


def fit_multi(est, inp, w, cfg: EMConfig, do_init: bool, random_state, given, callback=None) -> EMState:
    """Fit ``est``'s starts together (one pass per iteration); returns the best start's state.

    ``given`` is ``(weights_init, means_init, precisions_init)`` as validated by the estimator.
    """
    nan_policy = getattr(est, "nan_policy", "raise")
    X = inp.data
    blocks = X.to_delayed(optimize_graph=False).ravel()
    wblocks = w.to_delayed(optimize_graph=False).ravel() if w is not None else None
    data_token = X.name + ("" if w is None else w.name) + nan_policy
    kernel, prepare = data_plan(nan_policy)
    hooks = None
    if getattr(est, "on_collapse", "raise") == "reseed":
        hooks = [lambda: make_reseed_hook(cfg.covariance_type, inp.n_samples)]
    if getattr(est, "incremental", None) is not None:
        from daskgmm._streaming import run_incremental

        if do_init and est.n_init > 1:
            raise ValueError("incremental EM runs one start: use n_init=1 with incremental.")
        hook = hooks[0]() if hooks else None
        if do_init:
            need_init = any(g is None for g in given)
            inp0, w0 = init_input(inp, w, nan_policy, est.n_components) if need_init else (inp, w)
            reseed = hook.at_init if hook is not None else None
            state = EMState(params=est._initialize(inp0, w0, random_state, *given, reseed=reseed))
        else:
            state = EMState(params=Params(est.weights_, est.means_, est.covariances_, est.precisions_cholesky_))
        return run_incremental(state, blocks, wblocks, cfg, X.dtype, data_token, est.incremental,
                               kernel, prepare, hook, callback)
    if do_init:
        need_init = any(g is None for g in given)
        inp0, w0 = init_input(inp, w, nan_policy, est.n_components) if need_init else (inp, w)
        inits = [
            (lambda reseed: est._initialize(inp0, w0, random_state, *given, reseed=reseed))
            for _ in range(est.n_init)
        ]
    else:
        inits = [
            lambda reseed: EMState(
                params=Params(est.weights_, est.means_, est.covariances_, est.precisions_cholesky_),
                lower_bound=est.lower_bound_,
            )
        ]
    ((best, _),) = run_restarts(
        [(inits, cfg)], blocks, wblocks, X.dtype, data_token, cfg.split_every, hooks, kernel, prepare, callback
    )
    return best

__all__ = [
    "multi_chunk_stats",
    "combine_lists",
    "multi_map_reduce",
    "multi_statistics_pass",
    "run_multi_em",
    "final_logliks",
    "best_index",
    "run_restarts",
    "make_reseed_hook",
    "check_extra_params",
    "uses_multi",
    "fit_multi",
]
