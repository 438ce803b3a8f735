"""Stepwise EM (``partial_fit``): one update of running statistics per batch.

The statistics algebra is :mod:`daskgmm._streaming`'s; the pass over the batch is the
engine's (:func:`daskgmm._graph.statistics_pass` through a :class:`~daskgmm._engine.DataPlan`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from dask.base import tokenize

from daskgmm._engine import DataPlan, EMConfig, EMState
from daskgmm._gaussian import Params
from daskgmm._graph import statistics_pass
from daskgmm._streaming import add, params_from_stats, recenter, scale, stats_from_params, step_size

logger = logging.getLogger("daskgmm")


@dataclass
class StreamState:
    """Running per-row statistics of stepwise EM: batch index, statistics, their centres."""

    t: int
    stats: dict
    centers: np.ndarray


def stream_from_params(params: Params, covariance_type: str, reg_covar: float) -> StreamState:
    """After ``fit``: the statistics rebuilt from the fitted parameters; the schedule goes on at t = 1."""
    stats, centers = stats_from_params(params, covariance_type, reg_covar)
    return StreamState(1, stats, centers)


def stepwise_update(
    data: DataPlan, params: Params, cfg: EMConfig, stream: StreamState | None, previous: EMState | None = None
) -> tuple[EMState, StreamState]:
    """One stepwise-EM update from the batch in ``data`` (see :mod:`daskgmm._streaming`).

    ``previous`` is where the model stands (None for the first batch, which
    initialised ``params``); after ``fit`` (no ``stream`` yet) the running statistics
    are rebuilt from ``params``. Returns the new state (its history ends with this
    batch's record: ``step_size``, ``batch_rows``) and the new running statistics.
    """
    t0 = time.perf_counter()
    dtype = data.X.dtype
    ct = cfg.covariance_type
    if stream is None and previous is not None:
        stream = stream_from_params(params, ct, cfg.reg_covar)
    p = data.prepare(params, ct, dtype)
    token = tokenize(data.token, params.weights, params.means, params.precisions_cholesky, ct, "partial")
    # the batch in the engine's coarse tasks (``daskgmm.chunks_per_task``), as a fit's passes
    (batch,) = statistics_pass(
        data.kernel,
        data.blocks,
        data.weight_blocks,
        [p],
        token,
        data.split_every,
        sources=data.sources(),
        name="gmm-partial",
    )
    if not batch["n"] > 0:
        raise ValueError(
            "The batch has no rows with positive weight (after nan_policy): nothing to learn from."
        )
    batch = scale(batch, 1.0 / batch["n"])
    t = 0 if stream is None else stream.t
    eta = step_size(t)
    centers_now = np.asarray(p.stat_centers, dtype=np.float64)
    if stream is None or eta >= 1.0:
        blended = batch
    else:
        running = recenter(stream.stats, stream.centers, centers_now, ct)
        blended = add(scale(running, 1.0 - eta), scale(batch, eta))
    before = previous if previous is not None else EMState(params=params)
    lower_bound = float(batch["loglik"])
    record = {
        "iteration": before.n_iter + 1,
        "lower_bound": lower_bound,
        "change": float(lower_bound - before.lower_bound) if previous is not None else float("inf"),
        "seconds": time.perf_counter() - t0,
        "step_size": eta,
        "batch_rows": int(data.X.shape[0]),
    }
    state = EMState(
        params=params_from_stats(blended, centers_now, ct, cfg.reg_covar, dtype),
        n_iter=before.n_iter + 1,
        lower_bound=lower_bound,
        lower_bounds=[*before.lower_bounds, lower_bound],
        history=[*before.history, record],
    )
    logger.info(
        "partial_fit batch %d: %d rows, step size %.3f, batch mean log-likelihood %.6f",
        t,
        record["batch_rows"],
        eta,
        lower_bound,
    )
    return state, StreamState(t + 1, blended, centers_now)


__all__ = ["StreamState", "stepwise_update", "stream_from_params"]
