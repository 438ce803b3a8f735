"""Initialisation strategies that never pull the dataset onto the driver.

``kmeans``
    scikit-learn's ``KMeans(n_init=1)`` (Lloyd) on a seeded uniform sample of at most
    ``init_sample_size`` rows, then **one pass over all the data** that assigns every row
    to its nearest centre and accumulates the statistics of those hard labels, giving
    the initial weights, means and covariances exactly as scikit-learn builds them from
    its one-hot responsibilities. Why a sample and not k-means||: the centres only seed
    EM, a 100k-row sample places them within sampling error of the full-data k-means,
    and it costs one gather instead of several passes. When the data has no more rows
    than ``init_sample_size`` the sample *is* the data and the random stream is used in
    the same order as scikit-learn, so the result equals scikit-learn's for the same
    ``random_state``.
``k-means++``
    scikit-learn's ``kmeans_plusplus`` on the same bounded sample; each component starts
    from one chosen row (as in scikit-learn: weight 1/n, that row as mean, ``reg_covar``
    as covariance).
``random_from_data``
    ``K`` distinct rows drawn uniformly from all rows and gathered by index.
``random``
    uniform random responsibilities normalised per row, generated chunk by chunk
    (lazily, aligned with the data's chunks) and turned into statistics in one pass;
    for in-memory numpy input the stream is scikit-learn's.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from daskgmm._gaussian import (
    EStepParams,
    Params,
    compute_precision_cholesky,
    m_step,
    precision_cholesky_from_precisions,
)
from daskgmm._graph import Passes, pass_sources, statistics_pass
from daskgmm._kernels import chunk_stats_given_resp, chunk_stats_nearest
from daskgmm._progress import compute

logger = logging.getLogger("daskgmm")

#: default bound on the rows k-means / k-means++ see
DEFAULT_INIT_SAMPLE_SIZE = 100_000


def sample_rows(
    X: da.Array, n_samples: int, size: int, random_state: np.random.RandomState, cache: dict | None = None
) -> np.ndarray:
    """A seeded uniform sample of at most ``size`` rows (all rows, in order, if n <= size).

    ``cache`` (a dict, optional) keeps gathered samples by array and rows, so that
    candidates drawing the same rows (``select_model`` with an int seed) gather them
    once; the random draws are made either way, so the stream is unchanged.
    """
    idx = None if n_samples <= size else np.sort(random_state.choice(n_samples, size=size, replace=False))
    key = (X.name, None if idx is None else hashlib.sha1(idx.tobytes()).hexdigest())
    if cache is not None and key in cache:
        return cache[key]
    out = np.asarray(compute(X if idx is None else X[idx])[0])
    if cache is not None:
        cache[key] = out
    return out


def gather_rows(X: da.Array, indices: np.ndarray) -> np.ndarray:
    """Gather the given rows (in the given order) without materialising the array."""
    indices = np.asarray(indices)
    order = np.argsort(indices)
    rows = np.asarray(X[indices[order]].compute())
    out = np.empty_like(rows)
    out[order] = rows
    return out


def _params_from_stats(stats, p, n_samples, reg_covar, covariance_type, dtype):
    nk, means, covariances = m_step(stats, p.stat_centers, reg_covar, covariance_type, dtype)
    weights = nk / n_samples
    return weights, means, covariances


def _stats_params(means_guess: np.ndarray, covariance_type: str, dtype) -> EStepParams:
    """E-step parameters only used for their centres (statistics about ``means_guess``)."""
    k, d = means_guess.shape
    prec_chol = {
        "full": np.broadcast_to(np.eye(d), (k, d, d)),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[covariance_type]
    return EStepParams(np.full(k, 1.0 / k), means_guess, prec_chol, covariance_type, dtype)


def _one_row_params(rows, n_samples, reg_covar, covariance_type, dtype, X=None, sample_weight=None):
    """Parameters when each component's responsibility is one data row (scikit-learn's way).

    For ``tied``, scikit-learn's estimate uses ``X.T @ X`` over *all* rows whatever the
    responsibilities, so the same second moment is accumulated here in one lazy pass.
    """
    k, d = rows.shape
    if covariance_type == "tied":
        # about the origin, as scikit-learn (this estimate is not translation invariant)
        c = np.zeros(d)
        Xc = X
        if sample_weight is not None:
            S = (Xc * sample_weight[:, None]).T @ Xc
        else:
            S = Xc.T @ Xc
        stats = {"nk": np.ones(k), "u": rows - c, "s2": np.asarray(S.compute(), dtype=np.float64)}
        centers = np.broadcast_to(c, rows.shape)
    else:
        s2 = np.zeros((k, d, d)) if covariance_type == "full" else np.zeros((k, d))
        stats = {"nk": np.ones(k), "u": np.zeros((k, d)), "s2": s2}
        centers = rows
    nk, means, covariances = m_step(stats, centers, reg_covar, covariance_type, dtype)
    if covariance_type in ("diag", "spherical"):
        # scikit-learn's raw formula E[x^2] - mean^2 (leaves ~10 eps x^2 on one-row components)
        var = rows**2 / nk[:, None] - means**2 + reg_covar
        covariances = var if covariance_type == "diag" else var.mean(axis=1)
    return nk / n_samples, means, covariances


def _nearest_stats(X, args: list, w=None) -> list:
    """Statistics of the k-means labels (the nearest centre) on a group of rows."""
    centers, p = args
    return [chunk_stats_nearest(X, centers, p, w)]


def _moment_stats(X, args: list, w=None) -> list:
    """Statistics of one component holding every row of a group."""
    (p,) = args
    return [chunk_stats_given_resp(X, np.ones((len(X), 1), dtype=X.dtype), p, w)]


def _given_resp_stats(XR, args: list, w=None) -> list:
    """Statistics of given responsibilities, held as the columns after the ``d`` features."""
    d, p = args
    return [chunk_stats_given_resp(XR[:, :d].astype(p.dtype), XR[:, d:], p, w)]


def _grouped_pass(
    kernel, X, blocks, wblocks, args: list, token: str, split_every: int, leaf_rows=None
) -> dict:
    """One pass of ``kernel`` over ``X`` in the statistics passes' groups of chunks (coarse
    tasks, :func:`daskgmm._graph.pass_sources`; ``leaf_rows`` those of held chunks bundling
    leaves), as the EM iterations run: keys ``gmm-<token>`` (``gmm-init-…``, ``gmm-moments-…``)."""
    from daskgmm._placement import chunks_per_task_setting

    sources = pass_sources(X, blocks, wblocks, chunks_per_task_setting(), leaf_rows, split_every)
    (stats,) = statistics_pass(
        kernel,
        blocks,
        wblocks,
        args,
        dask.base.tokenize(args),
        split_every,
        sources=sources,
        passes=Passes(progress=True),
        name=f"gmm-{token}",
    )
    return stats


def initialize(
    X: da.Array,
    *,
    n_samples: int,
    n_components: int,
    covariance_type: str,
    init_params: str,
    reg_covar: float,
    random_state: np.random.RandomState,
    init_sample_size: int = DEFAULT_INIT_SAMPLE_SIZE,
    in_memory: bool = False,
    sample_weight: da.Array | None = None,
    split_every: int = 16,
    token: str = "",
    sample_cache: dict | None = None,
    leaf_rows=None,
):
    """Return initial ``(weights, means, covariances)`` (float64) for one EM start (``leaf_rows``:
    those of held chunks bundling leaves, :func:`daskgmm._placement.merge_for_cluster`)."""
    dtype = X.dtype
    blocks = X.to_delayed(optimize_graph=False).ravel()
    wblocks = sample_weight.to_delayed(optimize_graph=False).ravel() if sample_weight is not None else None
    total = float(sample_weight.sum().compute()) if sample_weight is not None else n_samples

    if init_params in ("kmeans", "k-means++"):
        from sklearn.cluster import KMeans, kmeans_plusplus

        sw = None
        if sample_weight is None:
            sample = sample_rows(X, n_samples, init_sample_size, random_state, sample_cache)
        else:
            # the weights ride along as one more column: same rows, same random draws
            both = sample_rows(
                da.concatenate([X.astype(np.float64), sample_weight[:, None]], axis=1),
                n_samples,
                init_sample_size,
                random_state,
                sample_cache,
            )
            sample, sw = both[:, :-1].astype(dtype), both[:, -1]
        if init_params == "k-means++":
            _, indices = kmeans_plusplus(sample, n_components, random_state=random_state, sample_weight=sw)
            rows = sample[indices].astype(np.float64)
            return _one_row_params(rows, total, reg_covar, covariance_type, dtype, X, sample_weight)
        km = KMeans(n_clusters=n_components, n_init=1, random_state=random_state).fit(
            sample, sample_weight=sw
        )
        centers = km.cluster_centers_.astype(np.float64)
        p = _stats_params(centers, covariance_type, dtype)
        args = [centers, p]
        stats = _grouped_pass(
            _nearest_stats, X, blocks, wblocks, args, f"init-{token}", split_every, leaf_rows
        )
        logger.debug("k-means init on %d sampled rows; one pass for initial statistics", len(sample))
        return _params_from_stats(stats, p, total, reg_covar, covariance_type, dtype)

    if init_params == "random_from_data":
        indices = random_state.choice(n_samples, size=n_components, replace=False)
        rows = gather_rows(X, indices).astype(np.float64)
        return _one_row_params(rows, total, reg_covar, covariance_type, dtype, X, sample_weight)

    if init_params == "random":
        if in_memory:
            # scikit-learn's stream: one (n, K) uniform draw from the shared RandomState
            resp = random_state.uniform(size=(n_samples, n_components))
            resp /= resp.sum(axis=1)[:, np.newaxis]
            R = da.from_array(resp, chunks=(X.chunks[0], n_components))
        else:
            # drawn chunk by chunk (a seed per storage chunk), so the draws do not depend on
            # how the chunks are grouped into tasks
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            R = da.random.RandomState(seed).uniform(
                size=(n_samples, n_components), chunks=(X.chunks[0], n_components)
            )
            R = R / R.sum(axis=1, keepdims=True)
        # centre the statistics on a cheap guess of the data mean: the mean of a few rows
        guess = gather_rows(X, np.linspace(0, n_samples - 1, min(n_samples, 64)).astype(int)).mean(axis=0)
        p = _stats_params(np.broadcast_to(guess, (n_components, X.shape[1])).copy(), covariance_type, dtype)
        # the responsibilities ride along as more columns of the same chunks (float64, exact
        # for float32 rows too), so the pass runs in the statistics passes' groups
        XR = da.concatenate([X.astype(np.float64), R.astype(np.float64)], axis=1).rechunk({1: -1})
        xr_blocks = XR.to_delayed(optimize_graph=False).ravel()
        stats = _grouped_pass(
            _given_resp_stats,
            XR,
            xr_blocks,
            wblocks,
            [X.shape[1], p],
            f"init-{token}",
            split_every,
            leaf_rows,
        )
        return _params_from_stats(stats, p, total, reg_covar, covariance_type, dtype)

    raise ValueError(
        f"init_params must be one of 'kmeans', 'k-means++', 'random', 'random_from_data'; got {init_params!r}."
    )


@dataclass(frozen=True)
class InitSpec:
    """What initialisation needs to know of the model (no estimator object)."""

    n_components: int
    covariance_type: str
    init_params: str
    reg_covar: float
    init_sample_size: int = DEFAULT_INIT_SAMPLE_SIZE
    split_every: int = 16


def initial_params(
    X: da.Array,
    spec: InitSpec,
    random_state: np.random.RandomState,
    *,
    n_samples: int,
    in_memory: bool = False,
    sample_weight: da.Array | None = None,
    given: tuple = (None, None, None),
    reseed=None,
    sample_cache: dict | None = None,
    leaf_rows=None,
) -> Params:
    """Initial :class:`~daskgmm._gaussian.Params` of one EM start.

    ``given`` is ``(weights_init, means_init, precisions_init)`` as validated at the
    boundary; whatever is missing comes from ``spec.init_params``. ``reseed``
    (``on_collapse="reseed"``) may replace dead initial components.
    """
    weights_init, means_init, precisions_init = given
    ct = spec.covariance_type
    covariances = None
    if weights_init is None or means_init is None or precisions_init is None:
        weights, means, covariances = initialize(
            X,
            n_samples=n_samples,
            n_components=spec.n_components,
            covariance_type=ct,
            init_params=spec.init_params,
            reg_covar=spec.reg_covar,
            random_state=random_state,
            init_sample_size=spec.init_sample_size,
            in_memory=in_memory,
            sample_weight=sample_weight,
            split_every=spec.split_every,
            token=dask.base.tokenize(X.name),  # keys read 'gmm-init-<hash>' on the dashboard
            sample_cache=sample_cache,
            leaf_rows=leaf_rows,
        )
    if weights_init is not None:
        weights = weights_init
    if means_init is not None:
        means = means_init
    if precisions_init is not None:
        prec_chol = precision_cholesky_from_precisions(precisions_init, ct)
        covariances = None
    else:
        if reseed is not None:
            weights, means, covariances = reseed(weights, means, covariances)
        prec_chol = compute_precision_cholesky(covariances, ct, X.dtype)
    return Params(np.asarray(weights, float), np.asarray(means, float), covariances, prec_chol)


def complete_rows(X: da.Array, sample_weight: da.Array | None, nan_policy: str, n_components: int):
    """The rows initialisation sees: all of them, or for nan_policy omit/marginalize the
    rows without NaN (one pass to find them). Returns ``(X, sample_weight, n_rows)``."""
    if nan_policy == "raise":
        return X, sample_weight, int(X.shape[0])
    keep = ~da.isnan(X).any(axis=1)
    if sample_weight is None:
        Xi = X[keep].compute_chunk_sizes()
        wi = None
    else:
        d = X.shape[1]
        both = da.concatenate([X.astype(np.float64), sample_weight[:, None]], axis=1)[
            keep
        ].compute_chunk_sizes()
        Xi, wi = both[:, :d].astype(X.dtype), both[:, d]
    n = int(Xi.shape[0])
    if n < max(n_components, 1):
        raise ValueError(
            f"nan_policy={nan_policy!r} initialises on the rows without NaN, and only {n} row(s) "
            f"are complete, fewer than n_components={n_components}. Give weights_init, means_init "
            "and precisions_init, or impute some rows first."
        )
    return Xi, wi, n


def start_factory(
    spec: InitSpec,
    X: da.Array,
    sample_weight,
    inp,
    given: tuple,
    random_state,
    nan_policy: str = "raise",
    sample_cache: dict | None = None,
    rows=None,
    leaf_rows=None,
):
    """The initialisation of one start, as the engine calls it: ``make(reseed) -> Params``.

    One factory serves every start of a candidate (called once per start, in order,
    so the random draws are scikit-learn's). ``rows`` is ``(X, sample_weight, n)`` of
    the rows initialisation sees when already known (:func:`complete_rows`);
    otherwise they are found once here. ``leaf_rows``: those of ``X``'s held chunks when they
    bundle leaves (used where initialisation sees all of ``X``'s rows).
    """
    if rows is None:
        if any(g is None for g in given):
            rows = complete_rows(X, sample_weight, nan_policy, spec.n_components)
        else:
            rows = (X, sample_weight, inp.n_samples)
    X0, w0, n0 = rows
    leaves = leaf_rows if X0 is X else None

    def make(reseed):
        return initial_params(
            X0,
            spec,
            random_state,
            n_samples=n0,
            in_memory=inp.kind == "numpy",
            sample_weight=w0,
            given=given,
            reseed=reseed,
            sample_cache=sample_cache,
            leaf_rows=leaves,
        )

    return make


def data_moments(
    X: da.Array, sample_weight: da.Array | None, covariance_type: str, split_every: int = 16, leaf_rows=None
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(total weight, mean, unbiased covariance)`` of the rows, in one pass (float64).

    The covariance is the matrix (D, D) for ``full``/``tied`` and the variances (D,) otherwise
    (``ddof=1``; a sample weight counts a row that many times). The statistics kernel of one
    component with responsibility 1 accumulates them about the mean of a few rows, so data far
    from the origin keeps its digits (the priors of :mod:`daskgmm._bayesian`).
    """
    n, d = X.shape
    ct = "full" if covariance_type in ("full", "tied") else "diag"
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: the pass names them
        guess = gather_rows(X, np.linspace(0, n - 1, min(n, 64)).astype(int)).astype(np.float64).mean(axis=0)
    guess = np.where(np.isfinite(guess), guess, 0.0)
    p = _stats_params(guess[None, :], ct, X.dtype)
    blocks = X.to_delayed(optimize_graph=False).ravel()
    wblocks = sample_weight.to_delayed(optimize_graph=False).ravel() if sample_weight is not None else None
    token = dask.base.tokenize(X.name, p, None if sample_weight is None else sample_weight.name)
    stats = _grouped_pass(_moment_stats, X, blocks, wblocks, [p], f"moments-{token}", split_every, leaf_rows)
    total = float(stats["nk"][0])
    u = stats["u"][0]
    mean = guess + u / total
    if ct == "full":
        scatter = stats["s2"][0] - np.outer(u, u) / total
    else:
        scatter = stats["s2"][0] - u * u / total
    return total, mean, scatter / (total - 1.0)
