"""Per-chunk fused E-step + sufficient statistics, their combination, and the tree reduction.

One task per chunk computes, block of rows by block of rows, the weighted
log-densities, the responsibilities and the statistics described in
:mod:`daskgmm._gaussian`, and returns a small dict::

    {"n": float, "loglik": float, "nk": (K,), "u": (K, D), "s2": (K, D, D) | (D, D) | (K, D)}

Only these K·D² numbers leave the task: the responsibilities never exist beyond a
block. Statistics are accumulated in float64 whatever the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import dask
import numpy as np

from daskgmm._gaussian import EStepParams, log_resp_and_norm, weighted_log_prob

#: target number of elements of the (rows × K × D) temporaries of one block
_BLOCK_ELEMENTS = 1 << 18


def block_rows(n_components: int, n_features: int) -> int:
    """Rows per cache-sized block for the fused kernel."""
    rows = _BLOCK_ELEMENTS // max(1, n_components * n_features)
    return int(min(max(rows, 256), 1 << 16))


def check_finite_block(X: np.ndarray, name: str = "X") -> None:
    """Raise scikit-learn's error if ``X`` holds NaN or infinity (called only on a suspect block)."""
    if np.isnan(X).any():
        raise ValueError(
            f"Input {name} contains NaN. GaussianMixture does not accept missing values "
            "encoded as NaN: drop or impute those rows first."
        )
    if np.isinf(X).any():
        raise ValueError(
            f"Input {name} contains infinity or a value too large for {X.dtype!r}."
        )


def empty_stats(n_components: int, n_features: int, covariance_type: str) -> dict:
    k, d = n_components, n_features
    s2_shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k, d)}
    return {
        "n": 0.0,
        "loglik": 0.0,
        "nk": np.zeros(k),
        "u": np.zeros((k, d)),
        "s2": np.zeros(s2_shape[covariance_type]),
    }


def accumulate(out: dict, Xc: np.ndarray, resp: np.ndarray, p: EStepParams, w: np.ndarray | None) -> None:
    """Add one block's statistics to ``out`` (in place).

    ``Xc`` is the block centred on ``p.center``; ``resp`` the (weighted) responsibilities.
    """
    ct = p.covariance_type
    out["nk"] += resp.sum(axis=0, dtype=np.float64)
    if ct == "full":
        # per-component centres: the previous means, expressed relative to p.center
        for k in range(p.n_components):
            xk = Xc - p.means_c[k]
            rk = resp[:, k]
            wx = xk * rk[:, None]
            out["u"][k] += wx.sum(axis=0, dtype=np.float64)
            out["s2"][k] += wx.T @ xk
        return
    out["u"] += resp.T @ Xc
    if ct == "tied":
        rowsum = resp.sum(axis=1) if w is None else w.astype(Xc.dtype, copy=False)
        out["s2"] += (Xc * rowsum[:, None]).T @ Xc
    else:
        out["s2"] += resp.T @ (Xc * Xc)


def chunk_stats(X: np.ndarray, p: EStepParams, sample_weight: np.ndarray | None = None) -> dict:
    """The fused per-chunk task: log-densities → responsibilities → statistics."""
    X = np.asarray(X)
    n, d = X.shape
    out = empty_stats(p.n_components, d, p.covariance_type)
    if n == 0:
        return out
    center = p.center.astype(p.dtype)
    rows = block_rows(p.n_components, d)
    loglik = 0.0
    for start in range(0, n, rows):
        xb = X[start : start + rows]
        Xc = xb.astype(p.dtype, copy=False) - center
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: reported below
            resp, log_norm = log_resp_and_norm(weighted_log_prob(Xc, p))
        w = None
        if sample_weight is not None:
            w = np.asarray(sample_weight[start : start + rows], dtype=np.float64)
            resp *= w.astype(resp.dtype)[:, None]
            ll = float(np.dot(w, log_norm.astype(np.float64)))
            out["n"] += float(w.sum())
        else:
            ll = float(log_norm.sum(dtype=np.float64))
            out["n"] += xb.shape[0]
        if not math.isfinite(ll):
            check_finite_block(xb)
        loglik += ll
        accumulate(out, Xc, resp, p, w)
    out["loglik"] = loglik
    return out


def chunk_stats_given_resp(
    X: np.ndarray, resp: np.ndarray, p: EStepParams, sample_weight: np.ndarray | None = None
) -> dict:
    """Statistics for given responsibilities (initialisation from labels or random resp)."""
    X = np.asarray(X)
    n, d = X.shape
    out = empty_stats(p.n_components, d, p.covariance_type)
    if n == 0:
        return out
    if not np.isfinite(X.sum()):
        check_finite_block(X)
    center = p.center.astype(p.dtype)
    rows = block_rows(p.n_components, d)
    for start in range(0, n, rows):
        xb = X[start : start + rows]
        Xc = xb.astype(p.dtype, copy=False) - center
        r = np.asarray(resp[start : start + rows], dtype=p.dtype)
        w = None
        if sample_weight is not None:
            w = np.asarray(sample_weight[start : start + rows], dtype=np.float64)
            r = r * w.astype(r.dtype)[:, None]
            out["n"] += float(w.sum())
        else:
            out["n"] += xb.shape[0]
        accumulate(out, Xc, r, p, w)
    return out


def nearest_center_resp(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """One-hot responsibilities of the nearest centre (k-means labels)."""
    X = np.asarray(X, dtype=np.float64)
    d2 = (
        np.einsum("nd,nd->n", X, X)[:, None]
        - 2.0 * X @ centers.T
        + np.einsum("kd,kd->k", centers, centers)[None, :]
    )
    labels = d2.argmin(axis=1)
    resp = np.zeros((X.shape[0], centers.shape[0]))
    resp[np.arange(X.shape[0]), labels] = 1.0
    return resp


def chunk_stats_nearest(
    X: np.ndarray, centers: np.ndarray, p: EStepParams, sample_weight: np.ndarray | None = None
) -> dict:
    X = np.asarray(X)
    return chunk_stats_given_resp(X, nearest_center_resp(X, centers), p, sample_weight)


def combine(parts: Sequence[dict]) -> dict:
    """Sum a list of statistics dicts (fixed order: the chunk order)."""
    out = {key: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for key, v in parts[0].items()}
    for part in parts[1:]:
        for key, v in part.items():
            out[key] = out[key] + v
    return out


def tree_reduce(parts: list, name: str, split_every: int = 16):
    """Reduce delayed statistics in a fixed-order tree of fan-in ``split_every``."""
    if not parts:
        raise ValueError("The data has no chunks: nothing to fit.")
    level = 0
    while len(parts) > 1:
        parts = [
            dask.delayed(combine, pure=True)(
                parts[i : i + split_every], dask_key_name=(f"{name}-combine{level}", j)
            )
            for j, i in enumerate(range(0, len(parts), split_every))
        ]
        level += 1
    return parts[0]


def shared(obj, name: str | None = None):
    """Wrap a small driver-side object as one graph key that chunk tasks depend on."""
    if name is None:
        return dask.delayed(obj, pure=True, traverse=False)
    return dask.delayed(obj, name=name, pure=True, traverse=False)


def map_reduce(func: Callable, args_per_chunk: Sequence[tuple], name: str, split_every: int = 16):
    """Build the delayed graph: ``func(*args_i)`` per chunk, then a fixed-order tree sum.

    Arguments made with :func:`shared` enter the graph once (one key each) and every
    chunk task depends on them, so parameters are shipped to each worker once, not
    embedded in every task.
    """
    f = dask.delayed(func, pure=True)
    parts = [f(*args, dask_key_name=(name, i)) for i, args in enumerate(args_per_chunk)]
    return tree_reduce(parts, name, split_every)


def predict_block(X: np.ndarray, p: EStepParams, what: str) -> np.ndarray:
    """Per-chunk prediction: ``labels`` (int64), ``proba`` (n, K) or ``score`` (log density)."""
    X = np.asarray(X)
    n, d = X.shape
    if what == "labels":
        out = np.empty(n, dtype=np.int64)
    elif what == "proba":
        out = np.empty((n, p.n_components), dtype=p.dtype)
    else:
        out = np.empty(n, dtype=np.float64)
    center = p.center.astype(p.dtype)
    rows = block_rows(p.n_components, d)
    for start in range(0, n, rows):
        xb = X[start : start + rows]
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: reported below
            wlp = weighted_log_prob(xb.astype(p.dtype, copy=False) - center, p)
        if what == "labels":
            if not np.all(np.isfinite(wlp.max(axis=1))):
                check_finite_block(xb)
            out[start : start + rows] = wlp.argmax(axis=1)
            continue
        resp, log_norm = log_resp_and_norm(wlp)
        if not np.all(np.isfinite(log_norm)):
            check_finite_block(xb)
        if what == "proba":
            out[start : start + rows] = resp
        else:
            out[start : start + rows] = log_norm
    return out
