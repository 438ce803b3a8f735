"""The fused per-chunk kernel compiled with numba: the whole chunk in one call, without the GIL.

The numpy kernel (:func:`daskgmm._kernels.chunk_stats`) builds a 4 MiB design matrix per block
and makes about 35 numpy calls per block. Measured on 2 cores (500,000×16, K=16, full, 8 chunks
on 2 threads): its blocks live in L3, not in a core's L2, and its two threads ran 1.3-1.5x one
thread, not 2x, switching context 376 times per pass (none on one thread): they hand the GIL to
each other between numpy calls. This kernel does the same arithmetic on blocks of 240 rows that
stay in L2 (the design matrix ``F``, the log-densities ``W``), in one compiled call per chunk
that releases the GIL (``nogil``):

* the design matrix ``F`` (design rows × 240) of the block, built row by row as
  :func:`daskgmm._gaussian.design_t` builds it (quadratic rows, centred rows, a row of ones);
* ``W = coef @ F`` (daskgmm's own tiled product, :func:`daskgmm._numba._product`: 4 components
  × 16 float32 or 8 float64 rows held in vector registers along the design rows, where BLAS
  spent much of a product this small packing its operands), the log-sum-exp over the
  components, the responsibilities (times the sample weights);
* ``Mb = F @ respᵀ`` (BLAS, through numba's ``np.dot``), added to the float64 moments ``M``. In
  float32 a block's product sums its rows in float32 before the float64 sum, as the numpy
  kernel does (``_F32_SUM_ROWS``).
* or, where most responsibilities are exactly 0 (full covariances, float32's exp underflows
  below -87, so well-separated components leave one nonzero responsibility in most rows; see
  :func:`sparse_moments`), the sparse moments: each row goes, centred, into the bucket of each
  component whose responsibility for it is not 0, and a full bucket adds ``Σ v·x xᵀ``,
  ``Σ v·x`` and ``Σ v`` to that component's column of ``M``. The terms left out are exactly 0;
  the dense product does D(D+1)/2+D+1 multiply-adds per row and component, the buckets about
  D²/2 per nonzero responsibility.

The compiled functions themselves are in :mod:`daskgmm._numba` (one file: see why there); this
module decides which path applies and calls them. ``exp`` is a polynomial the compiler
vectorises. Blocks holding a NaN or an infinite log-density take a scalar path with
``math.exp``, so every non-finite case gives what the numpy kernel gives.

Every covariance type: ``full``, ``diag`` and ``spherical`` differ only in the design matrix's
quadratic rows; ``tied`` has none, subtracts the shared precision's ``½|Pᵀx|²`` from every
component's log-density, and accumulates the scatter ``Σ w x xᵀ`` as the numpy kernel does.
numba compiles each kernel and dtype on its first call in a process (a few seconds) and caches
the machine code on disk (``cache=True``: next to :mod:`daskgmm._numba`, or numba's user-wide
cache where that is read-only), so later processes load it instead. The prediction kernel (:func:`predict_rows`)
shares the design matrix and the exponentials.
"""

from __future__ import annotations

import time

import numpy as np

from daskgmm._numba import IMPORT_ERROR, _chunk_moments, _predict, numba

#: rows per block: 240 keeps F (153 rows at D=16) and W in a core's L2, and a float32 product's
#: run of rows summed in float32 no longer than the numpy kernel's (``_F32_SUM_ROWS``, 256). Not
#: 256: rows of F and W 1 KiB (float32) or 2 KiB apart fall in 4 or 2 of L1's 64 sets, so a
#: tile of the product (:func:`daskgmm._numba._product`, 16 rows of F by up to 256 design rows)
#: could not stay in L1. Measured on 2 threads (8 chunks): 500,000×16, K=16 float64 took 68 ms
#: with 256 rows, 110 with 1,024, 138 with 4,096; 2,000,000×3, K=8 (10 design rows) 37, 30 and
#: 34 ms: small design matrices take about 1,000 rows in float64.
BLOCK_ROWS = 240
SMALL_DESIGN_ROWS = 1008
SMALL_DESIGN = 32
#: the sparse moments (:func:`sparse_moments`): a block takes them when at most this share of its
#: responsibilities is nonzero (float32 underflows exp(x) to exactly 0 below x = -87: well
#: separated components leave one nonzero responsibility in most rows)
SPARSE_SHARE = 0.25
#: ... and where the dense product has at least this many design rows × components. float32, full,
#: well separated, 8 chunks on 2 threads (AMD EPYC Zen 3): D=16, K=16 (2,448) took 59-67 ms
#: against 69-80 dense; D=64, K=32 331 against 563; D=16, K=8 (1,224) 45 against 51; D=12, K=16
#: (1,456) even; D=8, K=16 (720) and K=8 slower; diag D=16 with K=16 or 64 even or slower
SPARSE_MIN_PRODUCT = 1024
#: the most memory the sparse moments' buckets take per chunk call, and the most rows a bucket
#: holds (a float32 run summed in float32, as the numpy kernel's ``_F32_SUM_ROWS``)
SPARSE_BUCKET_BYTES = 1 << 20
SPARSE_BUCKET_ROWS = 256
#: covariance types the compiled kernel computes
SUPPORTED = ("full", "tied", "diag", "spherical")


#: chunks whose statistics this process computed with the compiled kernel, and blocks of them
#: that took the sparse moments (tests read them)
chunks_computed = 0
sparse_blocks = 0


def available() -> bool:
    """Whether numba imported in this process."""
    return numba is not None


def unavailable_error() -> RuntimeError:
    """The error of ``daskgmm.kernel = "numba"`` where numba cannot be imported."""
    return RuntimeError(
        f"daskgmm.kernel is 'numba', but numba cannot be imported in this process ({IMPORT_ERROR}). "
        "Install numba (pip install numba) where the tasks run, or set daskgmm.kernel to 'auto' or 'numpy'."
    )


def describe(setting: str = "auto") -> str:
    """Which kernel a fit runs under the ``daskgmm.kernel`` setting, in words (benchmark reports)."""
    if setting == "numpy":
        return "numpy (daskgmm.kernel = 'numpy')"
    if numba is None:
        return f"numpy (numba cannot be imported: {IMPORT_ERROR})"
    return f"compiled with numba {numba.__version__}"


def warm() -> float:
    """Seconds to make both dtypes' compiled kernels (statistics and prediction) ready in this
    process: numba compiles them on their first call, or loads the machine code from its disk
    cache."""
    from daskgmm._gaussian import EStepParams

    t0 = time.perf_counter()
    X = np.linspace(-1.0, 1.0, 8).reshape(4, 2)
    for dtype in (np.float64, np.float32):
        p = EStepParams(np.full(2, 0.5), X[:2], np.stack([np.eye(2)] * 2), "full", dtype)
        chunk_moments(X.astype(dtype), p)
        predict_rows(X.astype(dtype), p, {"labels": np.empty(4, np.int64)})
    return time.perf_counter() - t0


def quadratic_rows(covariance_type: str, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``(qi, qj)``: design row ``o`` holds ``x[qi[o]] * x[qj[o]]`` (the order of ``design_t``)."""
    if covariance_type == "full":
        qi, qj = np.triu_indices(n_features)
    elif covariance_type == "tied":  # no quadratic rows: the shared precision's term is apart
        qi = qj = np.arange(0)
    else:
        qi = qj = np.arange(n_features)
    return np.ascontiguousarray(qi, dtype=np.int64), np.ascontiguousarray(qj, dtype=np.int64)


def _tied_pt(p) -> np.ndarray:
    """Tied covariances: the transposed Cholesky factor of the shared precision (D, D) in the
    compute dtype; an empty (0, 0) array for the other types."""
    if p.covariance_type == "tied":
        return p.tied_pt
    return np.empty((0, 0), p.dtype)


def rows_per_block(p) -> int:
    """The compiled kernel's rows per block for ``p``: :data:`BLOCK_ROWS`, or
    :data:`SMALL_DESIGN_ROWS` in float64 with at most :data:`SMALL_DESIGN` design rows."""
    return SMALL_DESIGN_ROWS if p.dtype != np.float32 and p.n_design <= SMALL_DESIGN else BLOCK_ROWS


def _arguments(X, p) -> tuple:
    """``(X, (center, coef, qi, qj, tied_pt), single, rows)``: what both compiled kernels take.

    ``X`` C-contiguous, float32 or float64 (other dtypes cast to ``p.dtype``); the centre in the
    compute dtype, so the subtraction runs in the wider of the two dtypes, as the numpy kernel's.
    """
    X = np.asarray(X)
    X = np.ascontiguousarray(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else p.dtype)
    qi, qj = quadratic_rows(p.covariance_type, p.n_features)
    single = p.dtype == np.float32
    return X, (p.center.astype(p.dtype), p.coef, qi, qj, _tied_pt(p)), single, rows_per_block(p)


def sparse_moments(p) -> tuple[int, float]:
    """``(bucket_rows, share)``: a block whose nonzero responsibilities are at most ``share`` of
    its rows × K takes the sparse moments, with buckets of ``bucket_rows`` rows per component;
    ``(0, 0.0)`` where no block does.

    Full covariances only, and only where the dense product ``F @ respᵀ`` has at least
    :data:`SPARSE_MIN_PRODUCT` design rows × components: below that, and for the other types'
    short design matrices, it costs no more than the buckets. The buckets (components ×
    features × rows) take at most :data:`SPARSE_BUCKET_BYTES`, with at most
    :data:`SPARSE_BUCKET_ROWS` rows and at least 16."""
    if p.covariance_type != "full" or p.n_design * p.n_components < SPARSE_MIN_PRODUCT:
        return 0, 0.0
    per_row = p.n_components * (-(-p.n_features // 4) * 4) * np.dtype(p.dtype).itemsize
    rows = min(SPARSE_BUCKET_ROWS, SPARSE_BUCKET_BYTES // per_row)
    if rows < 16:
        return 0, 0.0
    return 1 << (int(rows).bit_length() - 1), SPARSE_SHARE


def chunk_moments(X: np.ndarray, p, sample_weight: np.ndarray | None = None) -> tuple:
    """``(M, S_tied, loglik)`` of one chunk: the float64 design-matrix moments ``M = Σ F respᵀ``
    (design rows × K, the numpy kernel's ``_Moments.M``), for tied covariances the scatter
    ``Σ w x xᵀ`` (``_Moments.S_tied``; None otherwise), and ``Σ w·log p(x)``.

    ``X`` (n, D) float32 or float64 (other dtypes are cast to ``p.dtype``); ``p`` an
    :class:`~daskgmm._gaussian.EStepParams` of a :data:`SUPPORTED` covariance type.
    """
    global chunks_computed, sparse_blocks
    chunks_computed += 1
    X, prm, single, rows = _arguments(X, p)
    if sample_weight is None:
        w, weighted = np.empty(0), False
    else:
        w, weighted = np.ascontiguousarray(sample_weight, dtype=np.float64), True
    M, S, ll, n_sparse = _chunk_moments(X, *prm, w, weighted, single, rows, *sparse_moments(p))
    sparse_blocks += n_sparse
    return M, (S if p.covariance_type == "tied" else None), float(ll)


def predict_rows(X: np.ndarray, p, out: dict) -> bool:
    """The prediction kernel's E-step, compiled: fills ``out`` (``{name: array}`` for the outputs
    of :func:`daskgmm._kernels.predict_block`, one row per row of ``X``) and returns whether every
    row's largest log-density was finite (False: a NaN or infinite row, which the caller names).

    The kernel writes labels as int64 and the float outputs in ``p.dtype``: an array of ``out``
    in that dtype is written in place, any other is filled from a copy.
    """
    X, prm, single, rows = _arguments(X, p)
    n, k = X.shape[0], p.n_components
    shapes = {"labels": (n,), "probabilities": (n, k), "log_density": (n,), "confidence": (n,)}
    kinds = {"labels": np.dtype(np.int64)}
    bufs = {}
    for name, shape in shapes.items():
        dtype = kinds.get(name, p.dtype)
        target = out.get(name)
        if target is not None and target.dtype == dtype and target.flags.c_contiguous:
            bufs[name] = target
        else:  # not asked for (empty), or asked for in another dtype (filled below)
            bufs[name] = np.empty(shape if target is not None else (0,) * len(shape), dtype)
    if "log_density" not in out and set(out) - {"labels"}:
        bufs["log_density"] = np.empty(n, p.dtype)  # the exponentials' by-product
    finite = _predict(
        X,
        *prm,
        single,
        rows,
        bool(set(out) - {"labels"}),
        bufs["labels"],
        bufs["probabilities"],
        bufs["log_density"],
        bufs["confidence"],
    )
    for name, target in out.items():
        if bufs[name] is not target:
            target[...] = bufs[name]
    return bool(finite)
