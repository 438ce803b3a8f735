"""THE EM driver: every fit in daskgmm runs through :class:`Engine`.

One engine owns the starts (``n_init``), the candidates (:func:`daskgmm.select_model`),
the iterations, convergence, re-seeding (``on_collapse="reseed"``), incremental EM,
checkpoints and resume, scikit-learn's verbose lines, the progress bar, logging and
callbacks. Stepwise EM (``partial_fit``) is one update of the same statistics
(:func:`stepwise_update`).

Every *start* of every *candidate* shares each pass over the data: one task per
group of consecutive chunks (coarse tasks, :func:`daskgmm._graph.task_groups`) computes the
statistics of all live starts from its rows read once, a
fixed-order tree reduction sums them, and the driver runs each start's M-step.
A start leaves the pass when it converges or uses up its ``max_iter``. The
arithmetic of each start is exactly that of a fit with that start alone, so the
result does not depend on how many starts or candidates share the passes.

Mirrors scikit-learn's ``BaseMixture.fit_predict``: the lower bound of iteration
*i* is the mean log-likelihood of the parameters *before* that iteration's M-step;
the start with the largest final lower bound wins (ties: the first).

The model family is a strategy on :class:`EMConfig` (``family``): None is EM for a Gaussian
mixture; :class:`daskgmm._bayesian.VariationalFamily` (``BayesianGaussianMixture``) prepares the
E-step with its variational log-weights and turns the same statistics into the variational
posterior and its lower bound (scikit-learn's, a total, after the M-step). The loop, the passes,
convergence, starts and checkpoints are the same.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from dask.base import tokenize
from sklearn.exceptions import ConvergenceWarning

from daskgmm._collapse import make_reseed_hook
from daskgmm._gaussian import (
    EStepParams,
    Params,
    compute_precision_cholesky,
    covariances_from_precisions,
    m_step,
    precisions_from_cholesky,
)
from daskgmm._graph import Passes, TaskSources, pass_sources, statistics_pass
from daskgmm._kernels import in_task, multi_chunk_stats
from daskgmm._missing import marginal_multi_stats, marginal_params, omit_multi_stats
from daskgmm._placement import active_client, chunks_per_task_setting, kernel_setting
from daskgmm._progress import FitProgress, VerboseLines
from daskgmm._streaming import add, recenter

logger = logging.getLogger("daskgmm")

CONVERGENCE_MESSAGE = (
    "Best performing initialization did not converge. "
    "Try different init parameters, or increase max_iter, "
    "tol, or check for degenerate data."
)


@dataclass
class EMConfig:
    """Settings of one candidate model."""

    covariance_type: str
    tol: float
    reg_covar: float
    max_iter: int
    #: the model family, when not EM's Gaussian mixture: an object with
    #: ``prepare(params, covariance_type, dtype) -> EStepParams`` (the E-step of a pass) and
    #: ``update(stats, p, reg_covar, covariance_type, dtype) -> (params, lower_bound)`` (the
    #: driver's half of an iteration), e.g. :class:`daskgmm._bayesian.VariationalFamily`
    family: object | None = None


@dataclass
class EMState:
    """Where one EM start stands; everything needed to continue it."""

    params: Params
    n_iter: int = 0
    lower_bound: float = -np.inf
    lower_bounds: list = field(default_factory=list)
    converged: bool = False
    history: list = field(default_factory=list)
    #: which candidate (``select_model``) and which of its starts (``n_init``) this is
    candidate: int = 0
    start: int = 0


@dataclass
class Candidate:
    """One model to fit: its settings and the initialisation of each of its starts.

    ``inits[s](reseed)`` returns start ``s``'s initial :class:`Params` (or a ready
    :class:`EMState`, for ``warm_start``); they are called in order, candidate by
    candidate, so random draws happen in scikit-learn's order.
    """

    cfg: EMConfig
    inits: Sequence[Callable]
    reseed: bool = False
    label: str = ""


@dataclass
class DataPlan:
    """The data of a fit as the engine reads it."""

    X: da.Array
    weights: da.Array | None = None
    nan_policy: str = "raise"
    #: bytes streamed from storage by one full pass (0 when held in memory)
    bytes_per_pass: int = 0
    #: rows of the data (a component holding less than one row's worth of weight is dead)
    n_rows: int = 0
    split_every: int = 16
    #: the rows of each leaf when held chunks bundle several (:func:`daskgmm._placement.merge_for_cluster`)
    leaf_rows: tuple | None = None
    #: the coarse tasks of a full pass, fixed at the fit's first pass (:meth:`sources`)
    _sources: TaskSources | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.weights is not None and self.weights.chunks[0] != self.X.chunks[0]:
            self.weights = self.weights.rechunk((self.X.chunks[0],))
        self.blocks = self.X.to_delayed(optimize_graph=False).ravel()
        self.weight_blocks = (
            None if self.weights is None else self.weights.to_delayed(optimize_graph=False).ravel()
        )
        self.token = self.X.name + ("" if self.weights is None else self.weights.name) + self.nan_policy
        self.kernel, self._estep = statistics_kernel(self.nan_policy)
        self.kernel_choice = kernel_setting()  # read here, carried to the workers by the parameters

    def prepare(self, params, covariance_type: str, dtype):
        return self.choose_kernel(self._estep(params, covariance_type, dtype))

    def choose_kernel(self, p):
        if isinstance(p, EStepParams):
            p.kernel = self.kernel_choice
        return p

    def sources(self) -> TaskSources:
        """One task per group of consecutive chunks (dask config ``daskgmm.chunks_per_task``), fixed
        at the first call, so every pass sums in the same order. Data held on a cluster: one task
        per held chunk (:func:`daskgmm._placement.merge_for_cluster`), leaf by leaf in it."""
        if self._sources is None:
            args = (chunks_per_task_setting(), self.leaf_rows, self.split_every)
            self._sources = pass_sources(self.X, self.blocks, self.weight_blocks, *args)
        return self._sources


def estep_params(params: Params, covariance_type: str, dtype) -> EStepParams:
    return EStepParams(params.weights, params.means, params.precisions_cholesky, covariance_type, dtype)


def _marginal(params: Params, covariance_type: str, dtype):
    return marginal_params(
        params.weights, params.means, params.covariances, params.precisions_cholesky, covariance_type
    )


def statistics_kernel(nan_policy: str) -> tuple[Callable, Callable]:
    """``(kernel, prepare)`` of the statistics pass under ``nan_policy``."""
    if nan_policy == "omit":
        return omit_multi_stats, estep_params
    if nan_policy == "marginalize":
        return marginal_multi_stats, _marginal
    return multi_chunk_stats, estep_params


# --------------------------------------------------------------------------
# one M-step
# --------------------------------------------------------------------------
def apply_m_step(
    state: EMState,
    stats: dict,
    p,
    cfg: EMConfig,
    dtype,
    seconds: float,
    collapse: Callable | None = None,
    bytes_read: int = 0,
) -> dict:
    """The driver half of one EM iteration, in place on ``state``.

    The M-step from the reduced statistics, the precisions, the lower bound and the
    iteration's history record (returned). ``collapse`` (``on_collapse="reseed"``) may
    replace components before their precisions are computed; an iteration that
    re-seeded a component never counts as converged.
    """
    events = []
    if cfg.family is not None:
        state.params, lower_bound = cfg.family.update(stats, p, cfg.reg_covar, cfg.covariance_type, dtype)
    else:
        lower_bound = stats["loglik"] / stats["n"]
        nk, means, covariances = m_step(stats, p.stat_centers, cfg.reg_covar, cfg.covariance_type, dtype)
        if collapse is not None:
            nk, means, covariances, events = collapse(stats, nk, means, covariances)
            if collapse.init_events:
                events = [dict(e, at="initialisation") for e in collapse.init_events] + events
                collapse.init_events.clear()
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
        "bytes_read": int(bytes_read),
    }
    if events:
        record["reseeded"] = events
    state.history.append(record)
    if abs(change) < cfg.tol and not events:
        state.converged = True
    return record


def improves(lower_bound: float, best: float) -> bool:
    """Whether a start's final lower bound beats the best so far.

    Starts that reach the same optimum (often with permuted labels) tie exactly in
    scikit-learn but differ by ~1e-16 here (another summation order): differences
    below 1e-12 relative count as ties, and the earlier start wins, as in scikit-learn.
    """
    if not np.isfinite(best):
        return True
    return lower_bound > best + 1e-12 * max(1.0, abs(best))


def best_start(states: Sequence[EMState], max_iter: int) -> EMState:
    """The start a fit keeps: the largest final lower bound (ties: the first); with
    ``max_iter=0`` the last start, as scikit-learn."""
    if max_iter == 0:
        return states[-1]
    best = states[0]
    for s in states[1:]:
        if improves(s.lower_bound, best.lower_bound):
            best = s
    return best


def complete_params(params: Params, covariance_type: str) -> Params:
    """Fill in covariances when only precisions were given (``max_iter=0`` with precisions_init)."""
    if params.covariances is None:
        prec = precisions_from_cholesky(params.precisions_cholesky, covariance_type)
        params.covariances = covariances_from_precisions(prec, covariance_type)
    return params


def warn_not_converged() -> None:
    warnings.warn(CONVERGENCE_MESSAGE, ConvergenceWarning, stacklevel=3)


# --------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------
@dataclass
class _Incremental:
    """Incremental EM's per-chunk statistics (Neal & Hinton), per start."""

    chunks_per_iter: int
    n_chunks: int
    cursor: int = 0
    refreshed: int = 0
    stored: dict = field(default_factory=dict)  # start -> list of per-chunk stats
    centers: dict = field(default_factory=dict)  # start -> list of per-chunk centres
    sweep_start: dict = field(default_factory=dict)  # start -> lower bound at the sweep's start

    def next_chunks(self, first: bool) -> list[int]:
        if first:
            return list(range(self.n_chunks))
        m = min(self.chunks_per_iter, self.n_chunks)
        idx = [(self.cursor + j) % self.n_chunks for j in range(m)]
        self.cursor = (self.cursor + m) % self.n_chunks
        return idx


class Engine:
    """Runs EM for every start of every candidate, sharing each pass over the data.

    Parameters
    ----------
    data : DataPlan
    candidates : list of Candidate
    incremental : int or None
        Incremental EM: after a full first pass, each iteration re-reads this many
        chunks and keeps the others' statistics; convergence is checked once per
        sweep on the change over the sweep. None is full EM.
    checkpoint : daskgmm.checkpoint.Checkpoint or None
        Saved after the initialisation and after every pass; with ``resume`` the fit
        continues from it to the result of an uninterrupted fit.
    random_state : numpy.random.RandomState or None
        The initialisation's random state (recorded in the checkpoint).
    verbose, verbose_interval : int
        scikit-learn's verbose lines, per start.
    progress : bool
        One progress bar for the fit: one step per pass over the data (all starts
        and candidates of the pass together).
    callback : callable or None
        ``callback(state, record)`` after every iteration of every start
        (``state.candidate`` and ``state.start`` say which).
    desc : str
        The progress bar's label.
    """

    def __init__(
        self,
        data: DataPlan,
        candidates: Sequence[Candidate],
        *,
        incremental: int | None = None,
        checkpoint=None,
        resume: bool = False,
        random_state=None,
        verbose: int = 0,
        verbose_interval: int = 10,
        progress: bool = False,
        callback: Callable | None = None,
        desc: str = "GMM",
    ):
        self.data = data
        self.candidates = list(candidates)
        self.incremental = incremental
        self.checkpoint = checkpoint
        self.resume = resume
        self.random_state = random_state
        self.progress = progress
        self.callback = callback
        self.desc = desc
        self.cfgs = [c.cfg for c in self.candidates for _ in c.inits]
        self.slots = [(ci, s) for ci, c in enumerate(self.candidates) for s in range(len(c.inits))]
        multi = len(self.candidates) > 1
        self.console = VerboseLines(
            verbose,
            verbose_interval,
            [f"[{self.candidates[ci].label}] " if multi else "" for ci, _ in self.slots],
        )
        self.hooks = [
            make_reseed_hook(self.cfgs[i].covariance_type, data.n_rows)
            if self.candidates[ci].reseed
            else None
            for i, (ci, _) in enumerate(self.slots)
        ]
        self.states: list[EMState] = []
        self.incr = None if incremental is None else _Incremental(int(incremental), len(data.blocks))
        self.passes = 0

    # -- the fit --------------------------------------------------------
    # One BLAS thread in this process for the whole fit, not only while a chunk task runs:
    # restoring the threads between passes (for the M-step) and taking them again made
    # the threaded scheduler's iteration 1.4x slower (500,000x16, K=16, 2 cores: 0.175 s
    # against 0.127 s; worse under load), most likely the BLAS threads spinning on the cores the
    # next pass needs. The M-step's matrices are K x D x D: one thread is plenty.
    @in_task
    def run(self) -> list[tuple[EMState, list[EMState]]]:
        """Fit; returns per candidate ``(best start, all starts)``."""
        resumed = self.checkpoint.load() if self.checkpoint is not None and self.resume else None
        if resumed is not None:
            self._restore(resumed)
        else:
            self._initialise()
        self._iterate()
        results = []
        for ci, c in enumerate(self.candidates):
            mine = [s for s in self.states if s.candidate == ci]
            results.append((best_start(mine, c.cfg.max_iter), mine))
        self._save(finished=True)
        return results

    def _initialise(self) -> None:
        for i, (ci, s) in enumerate(self.slots):
            hook = self.hooks[i]
            self.console.begin(i, s)
            start = self.candidates[ci].inits[s](hook.at_init if hook is not None else None)
            state = start if isinstance(start, EMState) else EMState(params=start)
            state.candidate, state.start = ci, s
            self.states.append(state)
        self._save()

    def _restore(self, resumed) -> None:
        if len(resumed.states) != len(self.slots):
            raise ValueError(
                f"The checkpoint holds {len(resumed.states)} starts, this fit has {len(self.slots)}: "
                "fit without resume to start over."
            )
        self.states = resumed.states
        for i, (ci, s) in enumerate(self.slots):
            self.states[i].candidate, self.states[i].start = ci, s
            self.console.begin(i, s)
            if self.hooks[i] is not None and resumed.hooks[i] is not None:
                self.hooks[i].counts.update({int(k): int(v) for k, v in resumed.hooks[i]["counts"].items()})
                self.hooks[i].init_events[:] = resumed.hooks[i]["init_events"]
        if self.random_state is not None and resumed.rng_state is not None:
            self.random_state.set_state(resumed.rng_state)
        if self.incr is not None and resumed.incremental is not None:
            self.incr.__dict__.update(resumed.incremental)
        self.passes = max((s.n_iter for s in self.states), default=0)

    def _live(self, i: int) -> bool:
        s = self.states[i]
        return not s.converged and s.n_iter < self.cfgs[i].max_iter

    def _iterate(self) -> None:
        live = [i for i in range(len(self.states)) if self._live(i)]
        for i in range(len(self.states)):
            if i not in live:
                self.console.end(i, self.states[i])
        total = max((c.max_iter for c in self.cfgs), default=0)
        bar = FitProgress(total, self.progress and bool(live), desc=self.desc, initial=self.passes)
        self.console.write = bar.write
        dtype = self.data.X.dtype
        passes = Passes(active_client())
        try:
            while live:
                t0 = time.perf_counter()
                ps = [self._prepare(i, dtype) for i in live]
                token = tokenize(
                    self.data.token,
                    [
                        (
                            self.states[i].params.weights,
                            self.states[i].params.means,
                            self.states[i].params.precisions_cholesky,
                        )
                        for i in live
                    ],
                    [self.cfgs[i].covariance_type for i in live],
                    [getattr(self.states[i].params, "log_weights", None) for i in live],
                )
                if self.incr is None:
                    all_stats = statistics_pass(
                        self.data.kernel,
                        self.data.blocks,
                        self.data.weight_blocks,
                        ps,
                        token,
                        self.data.split_every,
                        sources=self.data.sources(),
                        passes=passes,
                    )
                    n_read = len(self.data.blocks)
                else:
                    all_stats, n_read = self._incremental_pass(live, ps, token)
                seconds = time.perf_counter() - t0
                bytes_read = self.data.bytes_per_pass * n_read // max(len(self.data.blocks), 1)
                self.passes += 1
                records = []
                for i, p, stats in zip(live, ps, all_stats):
                    record = apply_m_step(
                        self.states[i], stats, p, self.cfgs[i], dtype, seconds, self.hooks[i], bytes_read
                    )
                    if self.incr is not None:
                        record["chunks"] = n_read
                        self._sweep_convergence(i)
                    records.append(record)
                self._save()
                for i, record in zip(live, records):
                    self.console.iteration(i, record)
                    _log_iteration(self.states[i], record, len(self.states) > 1)
                    if self.callback is not None:
                        self.callback(self.states[i], record)
                bar.update(self._pass_record(live, records, seconds))
                logger.debug("pass %d: %d live start(s), %.3fs", self.passes, len(live), seconds)
                for i in live:
                    if not self._live(i):
                        self.console.end(i, self.states[i])
                live = [i for i in live if self._live(i)]
        finally:
            passes.close()
            bar.close()
            self.console.write = print

    def _prepare(self, i: int, dtype):
        """Start ``i``'s E-step parameters for the next pass (its model family's, or EM's)."""
        cfg, params = self.cfgs[i], self.states[i].params
        if cfg.family is not None:
            return self.data.choose_kernel(cfg.family.prepare(params, cfg.covariance_type, dtype))
        return self.data.prepare(params, cfg.covariance_type, dtype)

    def _pass_record(self, live, records, seconds) -> dict:
        if len(self.states) == 1:
            return records[0]
        best = max(s.lower_bound for s in self.states)
        change = max(records, key=lambda r: abs(r["change"]))["change"]
        return {
            "iteration": self.passes,
            "lower_bound": best,
            "change": change,
            "seconds": seconds,
            "live": len(live),
        }

    # -- incremental EM -------------------------------------------------
    def _incremental_pass(self, live, ps, token) -> tuple[list, int]:
        inc = self.incr
        first = any(i not in inc.stored for i in live)
        idx = inc.next_chunks(first)
        results = statistics_pass(
            self.data.kernel, self.data.blocks, self.data.weight_blocks, ps, token, chunks=idx
        )
        totals = []
        for j, (i, p) in enumerate(zip(live, ps)):
            c_now = np.asarray(p.stat_centers, dtype=np.float64)
            stored = inc.stored.setdefault(i, [None] * inc.n_chunks)
            centers = inc.centers.setdefault(i, [None] * inc.n_chunks)
            for c, r in zip(idx, results):
                stored[c], centers[c] = r[j], c_now
            total = None
            ct = self.cfgs[i].covariance_type
            for c in range(inc.n_chunks):
                s = stored[c] if centers[c] is c_now else recenter(stored[c], centers[c], c_now, ct)
                total = s if total is None else add(total, s)
            totals.append(total)
        inc.refreshed += len(idx)
        return totals, len(idx)

    def _sweep_convergence(self, i: int) -> None:
        """Incremental EM converges once per sweep, on the change over the sweep."""
        inc, state = self.incr, self.states[i]
        state.converged = False
        if inc.refreshed >= inc.n_chunks:
            then = inc.sweep_start.get(i)
            if then is not None and abs(state.lower_bound - then) < self.cfgs[i].tol:
                state.converged = True
            inc.sweep_start[i] = state.lower_bound

    # -- checkpoints ----------------------------------------------------
    def _save(self, finished: bool = False) -> None:
        if self.incr is not None and self.incr.refreshed >= self.incr.n_chunks:
            self.incr.refreshed = 0  # a sweep is complete (after every start has looked at it)
        if self.checkpoint is None:
            return
        hooks = [
            None if h is None else {"counts": dict(h.counts), "init_events": list(h.init_events)}
            for h in self.hooks
        ]
        self.checkpoint.save(
            self.states,
            random_state=self.random_state,
            hooks=hooks,
            incremental=None if self.incr is None else self.incr.__dict__,
            finished=finished,
        )


def _log_iteration(state: EMState, record: dict, several: bool) -> None:
    change = record["change"]
    logger.info(
        "%siteration %d: lower bound %.6f (%s, %.3fs, %d bytes read)",
        f"candidate {state.candidate} start {state.start}: " if several else "",
        record["iteration"],
        record["lower_bound"],
        f"change {change:.3g}" if np.isfinite(change) else "first iteration",
        record["seconds"],
        record["bytes_read"],
    )


def log_likelihoods(data: DataPlan, params: Sequence[Params], covariance_types: Sequence[str]) -> list[float]:
    """Total log-likelihood of each fitted model on ``data``, in one pass for all of them."""
    dtype = data.X.dtype
    ps = [data.prepare(prm, ct, dtype) for prm, ct in zip(params, covariance_types)]
    token = tokenize(
        data.token,
        "final",
        [(q.weights, q.means, q.precisions_cholesky) for q in params],
        list(covariance_types),
    )
    stats = statistics_pass(
        data.kernel, data.blocks, data.weight_blocks, ps, token, data.split_every, sources=data.sources()
    )
    return [float(s["loglik"]) for s in stats]


__all__ = [
    "Candidate",
    "DataPlan",
    "EMConfig",
    "EMState",
    "Engine",
    "apply_m_step",
    "best_start",
    "complete_params",
    "improves",
    "log_likelihoods",
    "statistics_kernel",
    "warn_not_converged",
]
