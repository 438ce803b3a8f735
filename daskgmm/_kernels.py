"""Per-chunk fused E-step + sufficient statistics, their combination, and the tree reduction.

One task per chunk computes, block of rows by block of rows, the weighted
log-densities, the responsibilities and the statistics described in
:mod:`daskgmm._gaussian`, and returns a small dict::

    {"n": float, "loglik": float, "nk": (K,), "u": (K, D), "s2": (K, D, D) | (D, D) | (K, D)}

Only these K·D² numbers leave the task: the responsibilities never exist beyond a
block. Statistics are accumulated in float64 whatever the compute dtype.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Sequence

import numpy as np

from daskgmm import _compiled
from daskgmm._gaussian import (
    EStepParams,
    design_rows,
    design_t,
    log_resp_and_norm,
    log_resp_and_norm_t,
    moments_to_stats,
    weighted_log_prob_t,
)
from daskgmm._typing import Output

# --------------------------------------------------------------------------
# One BLAS thread per task
# --------------------------------------------------------------------------
# Dask runs one task per core; a multi-threaded BLAS inside each task
# oversubscribes the cores (measured: 2 dask threads x 2 OpenBLAS threads on 2
# cores ran an EM iteration 1.6-2x slower than 2 x 1 on a quiet machine, 18x slower on
# a loaded one). The first task to enter sets
# BLAS to one thread for the process, the last to leave restores the previous
# setting, so the driver's own numpy work keeps every thread. threadpoolctl (>= 3.6)
# lets only one "controlling" Python thread change OpenBLAS, and a dask pool thread
# that once did stays alive; so each change here takes control, sets, and releases
# it again, under a lock shared by all daskgmm tasks of the process. Where BLAS already
# runs one thread (dask's worker processes: ``distributed.nanny.pre-spawn-environ`` sets
# OPENBLAS/MKL/OMP_NUM_THREADS=1) nothing is changed: the limits are read, not set.
_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list | None = None
_blas_libs: list | None = None
#: how many times this process changed its BLAS thread count (set, then restored, counts 2)
blas_changes = 0


def _blas_controllers() -> list:
    global _blas_libs
    if _blas_libs is None:
        try:
            import scipy.linalg  # noqa: F401 - the compiled kernel's BLAS (numba's np.dot) is scipy's
            from threadpoolctl import ThreadpoolController

            _blas_libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        except Exception:  # pragma: no cover - threadpoolctl cannot inspect this process
            _blas_libs = []
    return _blas_libs


def _set_blas_threads(libs: list, counts: list) -> None:
    global blas_changes
    blas_changes += 1
    for lib, n in zip(libs, counts):
        release = getattr(type(lib), "clear_controlling_thread", None)
        if release is not None:
            release(force=True)
        lib.set_num_threads(n)
        if release is not None:
            release()


@contextlib.contextmanager
def single_threaded_blas():
    """Context manager: BLAS uses one thread while any daskgmm task runs in this process."""
    global _blas_users, _blas_saved
    with _blas_lock:
        if _blas_users == 0:
            libs = _blas_controllers()
            saved = [lib.get_num_threads() for lib in libs]
            if any(n != 1 for n in saved):  # already one thread (a dask worker): nothing to set or restore
                _blas_saved = saved
                _set_blas_threads(libs, [1] * len(libs))
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_saved is not None:
                _set_blas_threads(_blas_controllers(), _blas_saved)
                _blas_saved = None


def in_task(func: Callable) -> Callable:
    """Decorator for per-chunk task functions: run them with :func:`single_threaded_blas`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return func(*args, **kwargs)

    return wrapper


#: target size in bytes of one block's design matrix (rows × design rows). Measured on
#: 2 cores (500,000×16, K=16, 8 chunks on 2 threads): 1 MiB blocks (L2-sized) ran 169 ms
#: float64 / 101 ms float32 per pass, 4 MiB blocks 126 / 66 ms: the Python work between
#: numpy calls holds the GIL, and fewer, larger blocks let two threads scale (1.3x -> 1.9x).
_BLOCK_BYTES = 4 << 20
_MIN_BLOCK_ROWS = 256
_MAX_BLOCK_ROWS = 1 << 14


def block_rows(n_components: int, n_features: int, covariance_type: str = "full", itemsize: int = 8) -> int:
    """Rows per cache-sized block for the fused kernel."""
    per_row = max(design_rows(covariance_type, n_features), n_components) * itemsize
    rows = _BLOCK_BYTES // per_row
    return int(min(max(rows, _MIN_BLOCK_ROWS), _MAX_BLOCK_ROWS))


#: magnitudes named as the likely cause of an overflow (an undeclared nodata value)
_EXTREME = 1e18


def check_finite_block(X: np.ndarray, name: str = "X") -> None:
    """Raise an error naming the cause of a non-finite result in the block ``X``: NaN,
    infinity, or a finite value whose square overflows (called only on a suspect block)."""
    if np.isnan(X).any():
        raise ValueError(
            f"Input {name} contains NaN. GaussianMixture does not accept missing values "
            "encoded as NaN: drop or impute those rows first."
        )
    if np.isinf(X).any():
        raise ValueError(f"Input {name} contains infinity or a value too large for {X.dtype!r}.")
    if X.size == 0:
        return
    # finite values, yet the log-densities were not: a value whose square overflows the
    # compute dtype (float32 squares overflow above about 1.8e19)
    where = np.unravel_index(int(np.argmax(np.abs(X))), X.shape)
    value = float(X[where])
    place = f"row {where[0]} of its chunk" + (f", feature {where[1]}" if X.ndim > 1 else "")
    if abs(value) >= _EXTREME:
        raise ValueError(
            f"Input {name} holds the value {value:.6g} ({place}), so large that its square "
            f"overflows the {X.dtype} computation (float32 squares overflow above 1.8e+19). It is most likely an undeclared nodata value (GDAL writes -3.4e+38 for "
            "float32): declare it (nodata=... / --nodata), or drop or mask those rows first."
        )
    # otherwise the caller's own handling applies (a collapsed component, for instance)


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


#: rows summed inside one float32 product before the partial sums go to float64
_F32_SUM_ROWS = 256


def _add_product(out: np.ndarray, A: np.ndarray, B: np.ndarray) -> None:
    """``out += A @ B.T`` (float64 ``out``), summing over the rows (columns of A, B).

    float64 operands: one product. float32: a batch of products over runs of
    ``_F32_SUM_ROWS`` rows whose partial sums are added in float64, since a float32
    product accumulates its whole inner dimension in float32 (measured: the error of
    the statistics grows linearly with the rows summed, and moving the moments from
    the mixture centre to each component's centre amplifies it).
    """
    n = A.shape[1]
    s = _F32_SUM_ROWS
    if A.dtype == np.float64 or n <= s:
        out += A @ B.T
        return
    nb = n // s
    m = nb * s
    parts = np.matmul(
        A[:, :m].reshape(A.shape[0], nb, s).transpose(1, 0, 2),
        B[:, :m].reshape(B.shape[0], nb, s).transpose(1, 2, 0),
    )
    out += parts.sum(axis=0, dtype=np.float64)
    if m < n:
        out += A[:, m:] @ B[:, m:].T


class _Moments:
    """Per-chunk float64 accumulators of the design-matrix moments (see ``_gaussian``)."""

    __slots__ = ("M", "S_tied", "p")

    def __init__(self, p: EStepParams):
        self.p = p
        self.M = np.zeros((p.n_design, p.n_components))
        self.S_tied = np.zeros((p.n_features, p.n_features)) if p.covariance_type == "tied" else None

    def add(self, F: np.ndarray, xt: np.ndarray, resp_t: np.ndarray, w: np.ndarray | None) -> None:
        # one product gives Σ r·(quadratic terms), Σ r·x and N_k for every component
        _add_product(self.M, F, resp_t)
        if self.S_tied is not None:
            # tied scatter weights each row by its total responsibility: 1, or its sample weight
            xw = xt if w is None else xt * w
            _add_product(self.S_tied, xw, xt)

    def into(self, out: dict) -> dict:
        nk, u, s2 = moments_to_stats(self.M, self.S_tied, self.p)
        out["nk"] += nk
        out["u"] += u
        out["s2"] += s2
        return out


def accumulate(out: dict, Xc: np.ndarray, resp: np.ndarray, p: EStepParams, w: np.ndarray | None) -> None:
    """Add one block's statistics to ``out`` (in place).

    ``Xc`` (n, D) is the block centred on ``p.center``; ``resp`` (n, K) the
    responsibilities already multiplied by the sample weights ``w`` (or ``w`` None).
    """
    F = np.empty((p.n_design, Xc.shape[0]), dtype=p.dtype)
    xt = design_t(np.asarray(Xc), p, F)
    acc = _Moments(p)
    acc.add(F, xt, np.asarray(resp, dtype=p.dtype).T, None if w is None else np.asarray(w, dtype=p.dtype))
    acc.into(out)


#: per thread: reusable work buffers of the block kernel, by dtype (see :func:`_workspace`)
_local = threading.local()


@contextlib.contextmanager
def _workspace(dtype: np.dtype, sizes: tuple[int, ...]):
    """Flat work buffers of at least ``sizes`` elements, kept by the thread from task to task.

    A fresh design matrix per task (a few MiB) is a fresh mapping from the system wherever
    glibc's thresholds are fixed, as in dask's worker processes (``MALLOC_TRIM_THRESHOLD_``
    set by ``distributed.nanny.pre-spawn-environ``): measured, the kernel ran 20% slower there
    than in the driver. Kept per thread, at most the largest block seen (about 8 MiB per dtype).
    Nested use in one thread (never the case in daskgmm's kernels) gets fresh buffers.
    """
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    key = np.dtype(dtype).str
    held = cache.pop(key, None)  # taken while in use: a nested user allocates its own
    if held is None or any(h.size < s for h, s in zip(held, sizes)):
        held = tuple(np.empty(s, dtype=dtype) for s in sizes)
    try:
        yield held
    finally:
        cache[key] = held


def _blocks(n: int, p: EStepParams):
    """``(start, stop, F, W, center)`` per block of rows: the design matrix F and the (K, rows)
    buffer W of the log-densities are views of per-thread buffers reused by every block and
    every task (:func:`_workspace`)."""
    rows = min(block_rows(p.n_components, p.n_features, p.covariance_type, p.dtype.itemsize), n)
    center = p.center.astype(p.dtype)
    with _workspace(p.dtype, (p.n_design * rows, p.n_components * rows)) as (f, w):
        F = f[: p.n_design * rows].reshape(p.n_design, rows)
        W = w[: p.n_components * rows].reshape(p.n_components, rows)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            yield start, stop, F[:, : stop - start], W[:, : stop - start], center


def use_compiled(p: EStepParams) -> bool:
    """Whether :func:`chunk_stats` runs the compiled kernel (:mod:`daskgmm._compiled`) for ``p``.

    ``p.kernel`` (the dask config ``daskgmm.kernel``): ``"auto"`` where numba imports,
    ``"numba"`` the same but an error where numba cannot import, ``"numpy"`` never.
    """
    kernel = getattr(p, "kernel", "auto")
    if kernel == "numpy" or p.covariance_type not in _compiled.SUPPORTED:
        return False
    if _compiled.available():
        return True
    if kernel == "numba":
        raise _compiled.unavailable_error()
    return False


@in_task
def chunk_stats(X: np.ndarray, p: EStepParams, sample_weight: np.ndarray | None = None) -> dict:
    """The fused per-chunk task: log-densities → responsibilities → statistics.

    Per block of rows: one product for the log-densities of all components, the
    log-sum-exp, one product for all the statistics. Returns the statistics dict
    (float64) described in :mod:`daskgmm._gaussian`. The compiled kernel
    (:mod:`daskgmm._compiled`, :func:`use_compiled`) does the same in one call per chunk.
    """
    X = np.asarray(X)
    n, d = X.shape
    out = empty_stats(p.n_components, d, p.covariance_type)
    if n == 0:
        return out
    acc = _Moments(p)
    if use_compiled(p):
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: reported below
            M, S_tied, loglik = _compiled.chunk_moments(X, p, sample_weight)
        if not math.isfinite(loglik):
            check_finite_block(X)
        acc.M += M
        if S_tied is not None:
            acc.S_tied += S_tied
        out["n"] = float(n) if sample_weight is None else float(np.sum(sample_weight, dtype=np.float64))
        out["loglik"] = loglik
        return acc.into(out)
    loglik = 0.0
    total = 0.0
    for start, stop, F, W, center in _blocks(n, p):
        xb = X[start:stop]
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: reported below
            xt = design_t(xb, p, F, center)
            resp, log_norm = log_resp_and_norm_t(weighted_log_prob_t(F, xt, p, W))
        w = None
        if sample_weight is not None:
            w64 = np.asarray(sample_weight[start:stop], dtype=np.float64)
            w = w64.astype(p.dtype, copy=False)
            resp *= w
            ll = float(np.dot(w64, log_norm.astype(np.float64)))
            total += float(w64.sum())
        else:
            ll = float(log_norm.sum(dtype=np.float64))
            total += stop - start
        if not math.isfinite(ll):
            check_finite_block(xb)
        loglik += ll
        acc.add(F, xt, resp, w)
    out["n"] = total
    out["loglik"] = loglik
    return acc.into(out)


@in_task
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
    acc = _Moments(p)
    total = 0.0
    for start, stop, F, _, center in _blocks(n, p):
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing values: reported below
            xt = design_t(X[start:stop], p, F, center)
        r = np.array(np.asarray(resp[start:stop]).T, dtype=p.dtype)  # (K, rows), a copy
        w = None
        if sample_weight is not None:
            w64 = np.asarray(sample_weight[start:stop], dtype=np.float64)
            w = w64.astype(p.dtype, copy=False)
            r *= w
            total += float(w64.sum())
        else:
            total += stop - start
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing values: reported below
            acc.add(F, xt, r, w)
    out["n"] = total
    with np.errstate(over="ignore", invalid="ignore"):  # the moments moved to the centres, likewise
        out = acc.into(out)
    if not all(np.isfinite(v).all() for v in out.values()):
        check_finite_block(X)  # a value whose square overflows: named with the likely cause
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


@in_task
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


def multi_chunk_stats(
    X: np.ndarray, ps: Sequence[EStepParams], sample_weight: np.ndarray | None = None
) -> list:
    """Statistics of every candidate ``ps[i]`` on one chunk read once."""
    X = np.asarray(X)
    return [chunk_stats(X, p, sample_weight) for p in ps]


def combine_lists(parts: Sequence[list]) -> list:
    """Sum lists of statistics dicts position by position (fixed order)."""
    return [combine([part[i] for part in parts]) for i in range(len(parts[0]))]


# --------------------------------------------------------------------------
# Prediction: ONE kernel for the estimator, segmentation and the xarray accessor
# --------------------------------------------------------------------------
def label_dtype(n_components: int) -> np.dtype:
    """Smallest label dtype of images: int16, int32 beyond 32767 components."""
    return np.dtype(np.int16) if n_components <= np.iinfo(np.int16).max else np.dtype(np.int32)


def output_dtype(name: Output, n_components: int, dtype, compact: bool = False) -> np.dtype:
    """dtype of the output ``name`` computed in ``dtype`` (float32 or float64).

    Estimator (``compact=False``): ``labels`` int64, the float outputs in ``dtype`` (as
    scikit-learn: float32 input gives float32 ``score_samples``). Images (``compact=True``): ``labels`` int16 (int32 for
    K > 32767), every float output float32.
    """
    if name == "labels":
        return label_dtype(n_components) if compact else np.dtype(np.int64)
    if compact:
        return np.dtype(np.float32)
    return np.dtype(dtype)


def predict_output_spec(
    lead_chunks: tuple, name: Output, n_components: int, dtype, compact: bool = False
) -> tuple[tuple, np.dtype]:
    """Chunks and dtype of the output ``name`` for input chunked ``lead_chunks`` (+ the features).

    ``lead_chunks`` are the chunks of every axis but the feature axis (rows, or the spatial
    axes of an image); ``probabilities`` adds one chunk of the ``n_components``.
    """
    extra = ((n_components,),) if name == "probabilities" else ()
    return tuple(lead_chunks) + extra, output_dtype(name, n_components, dtype, compact)


def invalid_mask(rows: np.ndarray, nodata=None) -> np.ndarray:
    """Rows of ``rows`` (n, features) that are nodata: NaN in any feature, or ``== nodata`` in any."""
    bad = np.zeros(rows.shape[0], dtype=bool)
    if rows.dtype.kind == "f":
        bad |= np.isnan(rows).any(axis=1)
    if nodata is not None:
        if isinstance(nodata, float) and math.isnan(nodata):
            return bad
        if rows.dtype.kind == "f":
            nodata = np.asarray(nodata).astype(rows.dtype)  # e.g. 0.1 as stored in float32
        bad |= (rows == nodata).any(axis=1)
    return bad


def valid_pixels_block(block: np.ndarray, nodata, fraction, seed, index: int, dtype) -> np.ndarray:
    """The valid pixels of one spatial block of an image as (n, bands) rows of ``dtype``.

    With ``fraction``, each valid pixel is kept with that probability, drawn from a
    generator seeded by ``(seed, index)``: the same pixels whatever ran the task.
    """
    pixels = np.asarray(block).reshape(-1, block.shape[-1])
    keep = ~invalid_mask(pixels, nodata)
    if fraction is not None:
        rng = np.random.default_rng([int(seed), int(index)])
        keep &= rng.random(pixels.shape[0]) < fraction
    return np.ascontiguousarray(pixels[keep], dtype=dtype)


def _write(parts: dict, rows: slice, wlp_t: np.ndarray, xb: np.ndarray, resp_and_norm, input_name) -> None:
    """Fill ``parts[name][rows]`` from the weighted log-probabilities ``wlp_t`` (K, rows).

    A non-finite result means a NaN or infinite row: :func:`check_finite_block` names it
    (skipped when ``input_name`` is None: rows whose NaN are integrated out).
    """
    check = input_name is not None
    if "labels" in parts:
        if check and not np.all(np.isfinite(wlp_t.max(axis=0))):
            check_finite_block(xb, input_name)
        parts["labels"][rows] = wlp_t.argmax(axis=0)
    if not any(name in parts for name in ("probabilities", "log_density", "confidence")):
        return
    resp_t, log_norm = resp_and_norm(wlp_t)
    if check and not np.all(np.isfinite(log_norm)):
        check_finite_block(xb, input_name)
    if "probabilities" in parts:
        parts["probabilities"][rows] = resp_t.T
    if "log_density" in parts:
        parts["log_density"][rows] = log_norm
    if "confidence" in parts:
        parts["confidence"][rows] = resp_t.max(axis=0)


def _marginal_resp_and_norm(wlp_t: np.ndarray):
    resp, log_norm = log_resp_and_norm(wlp_t.T)
    return resp.T, log_norm


@in_task
def predict_block(
    X: np.ndarray,
    p,
    outputs: Sequence[Output],
    nodata=None,
    compact: bool = False,
    input_name: str = "X",
) -> dict[str, np.ndarray]:
    """The per-row outputs ``outputs`` of one block, from one E-step (the prediction kernel).

    Parameters
    ----------
    X : ndarray of shape (..., n_features)
        Rows (``(n, D)``) or pixels (``(*spatial, bands)``).
    p : EStepParams, or MarginalParams
        The fitted mixture. :class:`~daskgmm._missing.MarginalParams` (``nan_policy="marginalize"``)
        integrates missing features out, row by row; any object with ``n_components`` and
        ``weighted_log_prob(rows) -> (n, K)`` works the same way.
    outputs : sequence of {"labels", "probabilities", "log_density", "confidence"}
    nodata : scalar or None
        None: every row is predicted, and a NaN or infinite row raises scikit-learn's error.
        A scalar (NaN included): rows with a NaN feature, or a feature equal to ``nodata``, are
        invalid, never computed, and get label -1 and NaN in the float outputs.
    compact : bool
        Output dtypes of images instead of the estimator's (see :func:`output_dtype`).
    input_name : str
        Name of the input in error messages.

    Returns
    -------
    dict ``{name: ndarray of shape X.shape[:-1]}`` (``probabilities``: ``X.shape[:-1] + (K,)``).
    """
    X = np.asarray(X)
    lead = X.shape[:-1]
    rows = X.reshape(-1, X.shape[-1])
    n = rows.shape[0]
    k = p.n_components
    estep = isinstance(p, EStepParams)
    dtype = p.dtype if estep else (np.float32 if rows.dtype == np.float32 else np.float64)
    out = {}
    for name in outputs:
        shape = (n, k) if name == "probabilities" else (n,)
        out[name] = np.full(shape, -1 if name == "labels" else np.nan, output_dtype(name, k, dtype, compact))
    valid = None if nodata is None else ~invalid_mask(rows, nodata)
    if valid is None or valid.all():
        xv, parts = rows, out
    else:
        xv = rows[valid]
        parts = {name: a[valid] for name, a in out.items()}
    if len(xv):
        if estep and use_compiled(p):
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: named below
                finite = _compiled.predict_rows(xv, p, parts)
            if input_name is not None and not finite:  # finite maxima: finite log-densities
                check_finite_block(xv, input_name)
        elif estep:
            for start, stop, F, W, center in _blocks(len(xv), p):
                xb = xv[start:stop]
                with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: reported in _write
                    xt = design_t(xb, p, F, center)
                    wlp_t = weighted_log_prob_t(F, xt, p, W)
                _write(parts, slice(start, stop), wlp_t, xb, log_resp_and_norm_t, input_name)
        else:
            _write(parts, slice(None), p.weighted_log_prob(xv).T, xv, _marginal_resp_and_norm, None)
    if parts is not out:
        for name, a in parts.items():
            out[name][valid] = a
    return {name: a.reshape(lead + a.shape[1:]) for name, a in out.items()}


def predict_output(X: np.ndarray, p, name: Output, nodata=None, compact: bool = False, input_name: str = "X"):
    """One output of :func:`predict_block` (one task per chunk in ``map_blocks`` / ``apply_ufunc``)."""
    return predict_block(X, p, (name,), nodata, compact, input_name)[name]
