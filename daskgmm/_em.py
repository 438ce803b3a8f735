"""The EM driver: n_init starts × max_iter iterations, one data pass (one ``compute``) each.

Per iteration the workers run the fused E-step + statistics per chunk and a
fixed-order tree reduction brings one small dict to the driver, which does the
M-step in numpy. Mirrors scikit-learn's ``BaseMixture.fit_predict``: the lower
bound of iteration *i* is the mean log-likelihood of the parameters *before*
that iteration's M-step; the start with the largest final lower bound wins.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numpy as np
from dask.base import tokenize
from sklearn.exceptions import ConvergenceWarning

from daskgmm._gaussian import EStepParams, compute_precision_cholesky, covariances_from_precisions, m_step
from daskgmm._graph import map_reduce, shared
from daskgmm._kernels import chunk_stats

logger = logging.getLogger("daskgmm")

CONVERGENCE_MESSAGE = (
    "Best performing initialization did not converge. "
    "Try different init parameters, or increase max_iter, "
    "tol, or check for degenerate data."
)


@dataclass
class Params:
    """One set of mixture parameters (float64)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray | None
    precisions_cholesky: np.ndarray


@dataclass
class EMState:
    """Where one EM start stands; everything needed to continue it."""

    params: Params
    n_iter: int = 0
    lower_bound: float = -np.inf
    lower_bounds: list = field(default_factory=list)
    converged: bool = False
    history: list = field(default_factory=list)


@dataclass
class EMConfig:
    covariance_type: str
    tol: float
    reg_covar: float
    max_iter: int
    split_every: int = 16
    verbose: int = 0
    verbose_interval: int = 10
    #: bytes streamed from storage by one pass (0 when the data is held in memory)
    bytes_per_pass: int = 0
    #: draw a progress bar (see :mod:`daskgmm._progress`)
    progress: bool = False


def statistics_pass(blocks, weight_blocks, p: EStepParams, token: str, split_every: int) -> dict:
    """One pass over the data: the reduced sufficient statistics for parameters ``p``."""
    ps = shared(p, name=f"gmm-params-{token}")
    if weight_blocks is None:
        args = [(b, ps) for b in blocks]
    else:
        args = [(b, ps, w) for b, w in zip(blocks, weight_blocks)]
    graph = map_reduce(chunk_stats, args, f"gmm-em-stats-{token}", split_every)
    (stats,) = dask.compute(graph)
    return stats


def em_step(state: EMState, blocks, weight_blocks, cfg: EMConfig, dtype, data_token: str) -> dict:
    """One EM iteration in place on ``state``; returns the iteration's history record."""
    t0 = time.perf_counter()
    prm = state.params
    p = EStepParams(prm.weights, prm.means, prm.precisions_cholesky, cfg.covariance_type, dtype)
    token = tokenize(data_token, prm.weights, prm.means, prm.precisions_cholesky, cfg.covariance_type)
    stats = statistics_pass(blocks, weight_blocks, p, token, cfg.split_every)
    record = apply_m_step(state, stats, p, cfg, dtype, 0.0)
    record["seconds"] = time.perf_counter() - t0  # the pass and the M-step
    return record


def apply_m_step(state: EMState, stats: dict, p: EStepParams, cfg: EMConfig, dtype, seconds: float,
                 collapse: Callable | None = None) -> dict:
    """The driver half of one EM iteration, in place on ``state``.

    The M-step from the reduced statistics, the precisions, the lower bound and the
    iteration's history record (returned). ``collapse`` (``on_collapse="reseed"``) may
    replace components before their precisions are computed; an iteration that
    re-seeded a component never counts as converged. Shared by the single-model loop,
    the multi-candidate driver and incremental EM.
    """
    lower_bound = stats["loglik"] / stats["n"]
    nk, means, covariances = m_step(stats, p.stat_centers, cfg.reg_covar, cfg.covariance_type, dtype)
    events = []
    if collapse is not None:
        nk, means, covariances, events = collapse(stats, nk, means, covariances)
        init_events = getattr(collapse, "init_events", None)
        if init_events:
            events = [dict(e, at="initialisation") for e in init_events] + events
            init_events.clear()
    weights = nk / nk.sum()
    prec_chol = compute_precision_cholesky(covariances, cfg.covariance_type, dtype)
    state.params = Params(weights, means, covariances, prec_chol)
    change = lower_bound - state.lower_bound
    state.n_iter += 1
    state.lower_bound = float(lower_bound)
    state.lower_bounds.append(float(lower_bound))
    record = {
        "iteration": state.n_iter,
        "lower_bound": float(lower_bound),
        "change": float(change),
        "seconds": seconds,
        "bytes_read": int(cfg.bytes_per_pass),
    }
    if events:
        record["reseeded"] = events
    state.history.append(record)
    if abs(change) < cfg.tol and not events:
        state.converged = True
    return record


def run_em(
    state: EMState, blocks, weight_blocks, cfg: EMConfig, dtype, data_token: str, callback=None, label: str = "GMM"
) -> EMState:
    """Iterate until convergence or ``max_iter`` iterations of this start.

    ``state.n_iter`` counts the iterations already done, so a state restored from a
    checkpoint continues where it stopped (a fresh or warm-started state has 0).
    """
    from daskgmm._progress import FitProgress

    t_init = time.perf_counter()
    bar = FitProgress(cfg.max_iter, cfg.progress, desc=label, initial=state.n_iter)
    try:
        while not state.converged and state.n_iter < cfg.max_iter:
            record = em_step(state, blocks, weight_blocks, cfg, dtype, data_token)
            bar.update(record)
            _verbose_iter(cfg, state.n_iter, record, bar.write)
            _log_iter(record)
            if callback is not None:
                callback(state, record)
    finally:
        bar.close()
    _verbose_init_end(cfg, state, time.perf_counter() - t_init)
    return state


def _log_iter(record: dict) -> None:
    logger.info(
        "iteration %d: lower bound %.6f (change %.3g, %.3fs, %d bytes read)",
        record["iteration"],
        record["lower_bound"],
        record["change"],
        record["seconds"],
        record["bytes_read"],
    )


def _verbose_iter(cfg: EMConfig, n_iter: int, record: dict, write=print) -> None:
    # scikit-learn's verbose output (the documented behaviour of ``verbose``)
    if cfg.verbose and n_iter % cfg.verbose_interval == 0:
        if cfg.verbose == 1:
            write(f"  Iteration {n_iter}")
        else:
            write(f"  Iteration {n_iter}\t time lapse {record['seconds']:.5f}s\t ll change {record['change']:.5f}")


def _verbose_init_end(cfg: EMConfig, state: EMState, seconds: float) -> None:
    if cfg.verbose:
        msg = "converged" if state.converged else "did not converge"
        if cfg.verbose == 1:
            print(f"Initialization {msg}.")
        else:
            print(f"Initialization {msg}. time lapse {seconds:.5f}s\t lower bound {state.lower_bound:.5f}.")


def improves(lower_bound: float, best: float) -> bool:
    """Whether a start's final lower bound beats the best so far.

    Starts that reach the same optimum (often with permuted labels) tie exactly in
    scikit-learn but differ by ~1e-16 here (another summation order): differences
    below 1e-12 relative count as ties, and the earlier start wins, as in scikit-learn.
    """
    if not np.isfinite(best):
        return True
    return lower_bound > best + 1e-12 * max(1.0, abs(best))


def warn_not_converged() -> None:
    warnings.warn(CONVERGENCE_MESSAGE, ConvergenceWarning, stacklevel=3)


def complete_params(params: Params, covariance_type: str) -> Params:
    """Fill in covariances when only precisions were given (``max_iter=0`` with precisions_init)."""
    if params.covariances is None:
        from daskgmm._gaussian import precisions_from_cholesky

        prec = precisions_from_cholesky(params.precisions_cholesky, covariance_type)
        params.covariances = covariances_from_precisions(prec, covariance_type)
    return params


__all__ = [
    "EMConfig",
    "EMState",
    "Params",
    "em_step",
    "run_em",
    "statistics_pass",
    "warn_not_converged",
    "apply_m_step",
    "improves",
    "complete_params",
]
