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
from daskgmm._suffstats import chunk_stats, map_reduce, shared

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


#: ``persist="auto"`` holds the data in memory when it takes at most this share of it
PERSIST_FRACTION = 0.5


def active_client():
    """The ``distributed.Client`` that ``dask.compute`` uses now, or None (local scheduler)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    try:
        uses_client = dask.base.get_scheduler() == client.get
    except Exception:  # pragma: no cover - defensive
        uses_client = False
    return client if uses_client else None


def memory_budget(client) -> tuple[int, str]:
    """Bytes of memory the data could be held in, and where (for the log)."""
    import psutil

    if client is None:
        return int(psutil.virtual_memory().available), "available memory of this machine"
    workers = client.scheduler_info(n_workers=-1)["workers"]
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    if not limits:
        return 0, "workers' memory (no workers connected yet)"
    if any(lim <= 0 for lim in limits):
        total = int(psutil.virtual_memory().total)
        return total, f"memory of the machine ({len(limits)} workers without a memory limit)"
    return sum(limits), f"workers' memory limits ({len(limits)} workers)"


def _gb(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def plan_data(X, persist, in_memory: bool):
    """Decide whether the data is held in (cluster) memory across iterations.

    Parameters
    ----------
    X : dask.array.Array
        The data, chunked by rows.
    persist : {"auto", True, False}
        ``"auto"`` holds the data on a distributed cluster when it takes at most
        :data:`PERSIST_FRACTION` of the workers' memory limits and streams it from
        storage in every iteration otherwise; without a distributed scheduler it
        streams (``True`` loads the data into this process's memory). In-memory (numpy) input on a distributed cluster is always sent
        to the workers once (persisted), never with every iteration's graph.
    in_memory : bool
        Whether ``X`` wraps an in-memory (numpy) array.

    Returns
    -------
    X : dask.array.Array
        Persisted or as given.
    bytes_per_pass : int
        Bytes read from storage by one pass: ``X.nbytes`` when streamed, else 0.
    """
    client = active_client()
    nbytes = int(X.nbytes)
    if in_memory:
        if client is None:
            logger.info("in-memory input (%s): computed in this process, nothing to persist", _gb(nbytes))
            return X, 0
        if persist is False:
            logger.info(
                "persist=False: the in-memory input (%s) is sent to the cluster with every iteration", _gb(nbytes)
            )
            return X, 0
        logger.info("in-memory input (%s): sent to the workers once and held there across iterations", _gb(nbytes))
        return X.persist(), 0
    budget, where = memory_budget(client)
    if persist == "auto" and client is None:
        # the local scheduler: persisting would cost a pass of its own, and the
        # operating system's page cache already keeps recently read chunks
        logger.info(
            "persist='auto' without a distributed scheduler: reading the data's chunks (%s) in every "
            "iteration (persist=True loads them into this process's memory instead)",
            _gb(nbytes),
        )
        return X, nbytes
    if persist == "auto":
        do = nbytes <= PERSIST_FRACTION * budget
        if do:
            logger.info(
                "persist='auto': the data (%s) fits comfortably in the %s (%s): holding it in memory "
                "across iterations",
                _gb(nbytes),
                where,
                _gb(budget),
            )
        else:
            logger.info(
                "persist='auto': the data (%s) is more than %d%% of the %s (%s): streaming its chunks from "
                "storage in every iteration (persist=True holds it anyway)",
                _gb(nbytes),
                int(PERSIST_FRACTION * 100),
                where,
                _gb(budget),
            )
    else:
        do = bool(persist)
        logger.info(
            "persist=%s: %s the data (%s; %s: %s)",
            do,
            "holding in memory" if do else "streaming from storage in every iteration",
            _gb(nbytes),
            where,
            _gb(budget),
        )
    if do:
        return X.persist(), 0
    return X, nbytes


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
    "plan_data",
    "active_client",
    "complete_params",
]
