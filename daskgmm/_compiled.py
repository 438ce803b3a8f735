"""The fused per-chunk kernel compiled with numba: the whole chunk in one call, without the GIL.

The numpy kernel (:func:`daskgmm._kernels.chunk_stats`) builds a 4 MiB design matrix per block
and makes about 35 numpy calls per block. Measured on 2 cores (500,000×16, K=16, full, 8 chunks
on 2 threads): its blocks live in L3, not in a core's L2, and its two threads ran 1.3-1.5x one
thread, not 2x, switching context 376 times per pass (none on one thread): they hand the GIL to
each other between numpy calls. This kernel does the same arithmetic on blocks of 256 rows that
stay in L2 (the design matrix ``F``, the log-densities ``W``), in one compiled call per chunk
that releases the GIL (``nogil``):

* the design matrix ``F`` (design rows × 256) of the block, built row by row as
  :func:`daskgmm._gaussian.design_t` builds it (quadratic rows, centred rows, a row of ones);
* ``W = coef @ F`` (BLAS, through numba's ``np.dot``), the log-sum-exp over the components, the
  responsibilities (times the sample weights);
* ``Mb = F @ respᵀ`` (BLAS), added to the float64 moments ``M``. In float32 a block's product
  sums 256 rows in float32 before the float64 sum, as the numpy kernel does (``_F32_SUM_ROWS``).
* or, where most responsibilities are exactly 0 (full covariances, float32's exp underflows
  below -87, so well-separated components leave one nonzero responsibility in most rows; see
  :func:`sparse_moments`), the sparse moments: each row goes, centred, into the bucket of each
  component whose responsibility for it is not 0, and a full bucket adds ``Σ v·x xᵀ``,
  ``Σ v·x`` and ``Σ v`` to that component's column of ``M``. The terms left out are exactly 0;
  the dense product does D(D+1)/2+D+1 multiply-adds per row and component, the buckets about
  D²/2 per nonzero responsibility.

``exp`` is a Cody-Waite reduction and a Taylor polynomial, which the compiler vectorises (degree
13 in float64: relative error below 2e-16 on the range the log-sum-exp uses, ``x <= 0``; degree 7
in float32 arithmetic for float32); ``np.exp`` inside a numba loop calls libm once per value.
Blocks holding a NaN or an infinite log-density take a scalar path with ``math.exp``, so every
non-finite case gives what the numpy kernel gives.

Every covariance type: ``full``, ``diag`` and ``spherical`` differ only in the design matrix's
quadratic rows; ``tied`` has none, subtracts the shared precision's ``½|Pᵀx|²`` from every
component's log-density, and accumulates the scatter ``Σ w x xᵀ`` as the numpy kernel does.
numba compiles each kernel and dtype on its first call in a process (a few seconds) and caches
the machine code on disk (``cache=True``: next to this file, or numba's user-wide cache where
that is read-only), so later processes load it instead. The prediction kernel (:func:`predict_rows`)
shares the design matrix and the exponentials.
"""

from __future__ import annotations

import math
import time

import numpy as np

try:  # numba is a dependency; a numba that cannot load (say, a numpy it does not support yet)
    import numba  # leaves the numpy kernel in place (daskgmm.kernel = "auto")
except Exception as exc:  # pragma: no cover - exercised only where numba cannot import
    numba = None
    IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    IMPORT_ERROR = None

#: rows per block: 256 keeps F (153 rows at D=16) and W in a core's L2, and it is the float32
#: products' run of rows summed in float32 (``daskgmm._kernels._F32_SUM_ROWS``). Measured on 2
#: threads (8 chunks): 500,000×16, K=16 float64 took 68 ms with 256 rows, 110 with 1,024, 138
#: with 4,096; 2,000,000×3, K=8 (10 design rows) 37, 30 and 34 ms: small design matrices take
#: 1,024 rows in float64 (float32 keeps 256 for its sums).
BLOCK_ROWS = 256
SMALL_DESIGN_ROWS = 1024
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
#: the most memory the sparse moments' buckets take per chunk call
SPARSE_BUCKET_BYTES = 1 << 20
#: covariance types the compiled kernel computes
SUPPORTED = ("full", "tied", "diag", "spherical")

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: below this, exp(x) is 0 (np.exp gives a subnormal down to -745; a responsibility of 1e-308
#: next to the largest one, 1, changes no sum)
_EXP_ZERO = -708.0
#: the same in float32 (smallest normal float32: 1.2e-38 = exp(-87.3))
_EXP_ZERO32 = np.float32(-87.0)
_LOG2E32 = np.float32(_LOG2E)
_LN2_HI32 = np.float32(0.693359375)  # ln 2 to 10 bits: n * _LN2_HI32 is exact for |n| < 2**14
_LN2_LO32 = np.float32(-2.12194440e-4)
#: rows whose sums ``Σ_k exp(·)`` (each in [1, K]) are multiplied before one log: K**32 stays
#: below float64's largest value for any K < 2**32
_LOG_RUN = 32
#: 1.5 * 2**52: y + _SHIFT rounds y to an integer n held in the low bits of the result's bit
#: pattern (_SHIFT_BITS + n), so 2**n is built with integer adds and shifts only (AVX2 has no
#: vector float64->int64 conversion: ``np.int64(math.floor(...))`` kept the loop scalar there,
#: 7.5 ns per exp against 1-2 with the trick, on an AMD EPYC Zen 3); likewise in float32
_SHIFT = 6755399441055744.0
_SHIFT_BITS = np.int64(0x4338000000000000)
_SHIFT32 = np.float32(12582912.0)
_SHIFT_BITS32 = np.int32(0x4B400000)


def _jit(func=None, *, contract: bool = False, reassoc: bool = False):
    """numba's ``njit`` without the GIL, with its disk cache where numba finds a writable place.

    ``contract``: a multiply and an add may be fused into one FMA instruction (one rounding
    instead of two, so never less accurate); the exponentials' polynomial took 2.1 ns per value
    in float64 with it against 3.3 without, and 0.8 against 1.1 ns in float32 (AMD EPYC Zen 3,
    AVX2). ``reassoc`` (with ``contract``): a sum's terms may be added in another order, so that
    a sum over a run of values vectorises (one partial sum per vector lane, added at the end);
    only the sparse moments' sums (:func:`_flush`) take it. Neither lets the compiler assume
    finite values, so NaN and infinity propagate as without them."""
    if func is None:
        return lambda f: _jit(f, contract=contract, reassoc=reassoc)
    if numba is None:  # pragma: no cover - never called: use_compiled() checks available()
        return func
    options = dict(nogil=True, boundscheck=False, error_model="numpy")
    if contract or reassoc:
        options["fastmath"] = {"contract", "reassoc"} if reassoc else {"contract"}
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # no writable cache directory (say, a read-only image and home): compile per process
        return numba.njit(**options)(func)


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


@_jit(contract=True)
def _exp64(W, b, two_n):
    """``W[:, :b] = exp(W[:, :b])`` for finite ``W <= 0`` (the log-densities less their maximum).

    Three loops per row of ``W``, each over one view of its memory so that it vectorises: the
    reduction and polynomial (with ``t``, whose bits hold ``n``, kept in ``two_n``), ``2**n``
    built from those bits as integers, and the product.
    """
    bits = two_n.view(np.int64)
    for k in range(W.shape[0]):
        for r in range(b):
            x = np.float64(W[k, r])
            y = max(x, _EXP_ZERO)
            t = y * _LOG2E + _SHIFT  # n = round(y / ln 2) in t's low bits, no float->int conversion
            n = t - _SHIFT
            y = y - n * _LN2_HI - n * _LN2_LO  # |y| <= ln(2)/2
            p = 1.0 / 6227020800  # Taylor coefficients 1/13! ... 1/0!, by Horner's rule
            p = p * y + 1.0 / 479001600
            p = p * y + 1.0 / 39916800
            p = p * y + 1.0 / 3628800
            p = p * y + 1.0 / 362880
            p = p * y + 1.0 / 40320
            p = p * y + 1.0 / 5040
            p = p * y + 1.0 / 720
            p = p * y + 1.0 / 120
            p = p * y + 1.0 / 24
            p = p * y + 1.0 / 6
            p = p * y + 0.5
            p = p * y + 1.0
            p = p * y + 1.0
            W[k, r] = p if x > _EXP_ZERO else 0.0
            two_n[r] = t
        for r in range(b):
            bits[r] = (bits[r] - _SHIFT_BITS + 1023) << 52  # 2**n
        for r in range(b):
            W[k, r] *= two_n[r]


@_jit(contract=True)
def _exp32(W, b, two_n):
    """:func:`_exp64` in float32 arithmetic (degree 7: truncation below 6e-9, under float32's 6e-8)."""
    bits = two_n.view(np.int32)
    for k in range(W.shape[0]):
        for r in range(b):
            x = np.float32(W[k, r])
            y = max(x, _EXP_ZERO32)
            t = y * _LOG2E32 + _SHIFT32
            n = t - _SHIFT32
            y = y - n * _LN2_HI32 - n * _LN2_LO32
            p = np.float32(1.0 / 5040)
            p = p * y + np.float32(1.0 / 720)
            p = p * y + np.float32(1.0 / 120)
            p = p * y + np.float32(1.0 / 24)
            p = p * y + np.float32(1.0 / 6)
            p = p * y + np.float32(0.5)
            p = p * y + np.float32(1.0)
            p = p * y + np.float32(1.0)
            W[k, r] = p if x > _EXP_ZERO32 else np.float32(0.0)
            two_n[r] = t
        for r in range(b):
            bits[r] = (bits[r] - _SHIFT_BITS32 + np.int32(127)) << np.int32(23)
        for r in range(b):
            W[k, r] *= two_n[r]


@_jit
def _design(X, s, b, center, qi, qj, F):
    """``F[:, :b]``: the design matrix of rows ``s .. s + b`` of ``X`` (as ``design_t`` builds it)."""
    P = F.shape[0]
    lin = qi.shape[0]
    for r in range(b):  # centred rows, transposed: the design rows lin .. lin + D - 1
        for i in range(X.shape[1]):
            F[lin + i, r] = X[s + r, i] - center[i]
    for o in range(lin):  # quadratic rows
        i = qi[o]
        j = qj[o]
        for r in range(b):
            F[o, r] = F[lin + i, r] * F[lin + j, r]
    for r in range(b):
        F[P - 1, r] = 1.0


@_jit
def _exp_sums(W, b, mx, sm, single, two_n, two_n32):
    """``W[:, :b] = exp(W - mx)`` and ``sm = Σ_k W`` per row, for ``mx`` the rows' maxima.

    A non-finite maximum (a NaN or infinite log-density) is taken as 0 and its block computed
    value by value with ``math.exp``: the numpy kernel's arithmetic. Returns whether every
    maximum was finite.
    """
    K = W.shape[0]
    finite = True
    for r in range(b):
        if not math.isfinite(mx[r]):
            finite = False
    if finite:
        for k in range(K):
            for r in range(b):
                W[k, r] -= mx[r]
        if single:  # float32 arithmetic
            _exp32(W, b, two_n32)
        else:
            _exp64(W, b, two_n)
    else:
        for r in range(b):
            if not math.isfinite(mx[r]):
                mx[r] = 0.0
        for k in range(K):
            for r in range(b):
                W[k, r] = math.exp(W[k, r] - mx[r])
    for r in range(b):
        sm[r] = 0.0
    for k in range(K):
        for r in range(b):
            sm[r] += W[k, r]
    return finite


@_jit
def _exp_sums_rows(V, b, mx, sm, single, two_n, two_n32):
    """:func:`_exp_sums` for log-densities laid out one row per data row, ``V`` (rows, K): the
    maxima and sums run along each row, the exponentials over the block's ``b·K`` values as one
    run."""
    K = V.shape[1]
    finite = True
    for r in range(b):
        m = V[r, 0]
        for k in range(1, K):
            m = max(m, V[r, k])
        mx[r] = m
        if not math.isfinite(m):
            finite = False
    if finite:
        for r in range(b):
            for k in range(K):
                V[r, k] -= mx[r]
        run = V[:b].reshape(1, b * K)
        if single:
            _exp32(run, b * K, two_n32)
        else:
            _exp64(run, b * K, two_n)
    else:
        for r in range(b):
            if not math.isfinite(mx[r]):
                mx[r] = 0.0
            for k in range(K):
                V[r, k] = math.exp(V[r, k] - mx[r])
    for r in range(b):
        t = V[r, 0]
        for k in range(1, K):
            t += V[r, k]
        sm[r] = t
    return finite


@_jit
def _tied_quadratic(tied_pt, F, W, b, D):
    """``W -= ½|Pᵀx|²`` per row (tied covariances: the precision shared by the components; the
    design matrix holds only the centred rows and the ones)."""
    Y = np.empty((D, b), F.dtype)
    np.dot(tied_pt, F[:D], Y)
    for r in range(b):
        q = 0.0
        for i in range(D):
            q += Y[i, r] * Y[i, r]
        for k in range(W.shape[0]):
            W[k, r] -= 0.5 * q


@_jit
def _loglik(s, b, mx, sm, w, weighted):
    """The block's ``Σ w·log p`` from its maxima ``mx`` and sums ``sm``; ``sm`` becomes the factor
    that turns the exponentials into responsibilities (times the weights)."""
    ll = 0.0
    if weighted:
        for r in range(b):
            ll += w[s + r] * (math.log(sm[r]) + mx[r])
            sm[r] = w[s + r] / sm[r]
    else:  # Σ log sm = log Π sm, one log per _LOG_RUN rows (each sm is in [1, K])
        prod = 1.0
        for r in range(b):
            ll += mx[r]
            prod *= sm[r]
            if r % _LOG_RUN == _LOG_RUN - 1:
                ll += math.log(prod)
                prod = 1.0
            sm[r] = 1.0 / sm[r]
        ll += math.log(prod)
    return ll


@_jit(reassoc=True)
def _gram(Xvt, Bt, n, G):
    """``G[i, l] = Σ_j Xvt[i, j]·Bt[l, j]`` over ``j < n``, for ``l >= i`` in tiles of 4×2 (rows
    padded with zeros to a multiple of 4): eight running sums share each tile's six loads, and
    each vectorises along ``j``. 6 ns per row against 22 for BLAS's sgemm of the same 16×256 by
    256×16 (AMD EPYC Zen 3, one thread)."""
    Dp = Bt.shape[0]
    for ib in range(0, Dp, 4):
        x0 = Xvt[ib]
        x1 = Xvt[ib + 1]
        x2 = Xvt[ib + 2]
        x3 = Xvt[ib + 3]
        for lb in range(ib, Dp, 2):
            y0 = Bt[lb]
            y1 = Bt[lb + 1]
            t00 = t01 = t10 = t11 = t20 = t21 = t30 = t31 = y0[0] - y0[0]  # 0 in the dtype
            for j in range(n):
                a = y0[j]
                c = y1[j]
                t00 += x0[j] * a
                t01 += x0[j] * c
                t10 += x1[j] * a
                t11 += x1[j] * c
                t20 += x2[j] * a
                t21 += x2[j] * c
                t30 += x3[j] * a
                t31 += x3[j] * c
            G[ib, lb] = t00
            G[ib, lb + 1] = t01
            G[ib + 1, lb] = t10
            G[ib + 1, lb + 1] = t11
            G[ib + 2, lb] = t20
            G[ib + 2, lb + 1] = t21
            G[ib + 3, lb] = t30
            G[ib + 3, lb + 1] = t31


@_jit(reassoc=True)
def _flush(Bt, V, n, Xvt, G, M, k, qi, qj):
    """Adds bucket ``k``'s ``n`` rows (centred, transposed: ``Bt`` features × rows, their
    responsibilities ``V``) to the moments' column ``M[:, k]``: ``Σ v·x_i·x_j`` on the quadratic
    design rows (full covariances: ``qi <= qj``), ``Σ v·x`` on the linear ones, ``Σ v`` on the row
    of ones, each summed in the buckets' dtype first (float32 runs of at most 256 rows, as the
    dense product's)."""
    lin = qi.shape[0]
    D = M.shape[0] - lin - 1
    t = V[0] - V[0]  # 0 in the dtype
    for j in range(n):
        t += V[j]
    M[M.shape[0] - 1, k] += t
    for i in range(D):
        xi = Xvt[i]
        bi = Bt[i]
        t = V[0] - V[0]
        for j in range(n):
            a = bi[j] * V[j]
            xi[j] = a
            t += a
        M[lin + i, k] += t
    _gram(Xvt, Bt, n, G)
    for o in range(lin):
        M[o, k] += G[qi[o], qj[o]]


@_jit
def _scatter(X, s, b, center, Wt, buckets, M, qi, qj):
    """The sparse moments of a block: each row with a nonzero responsibility for component
    ``k`` goes, centred, into ``k``'s bucket; a full bucket is added to ``M`` (:func:`_flush`).

    The terms the dense product ``F @ respᵀ`` adds and this does not are exactly zero (a
    responsibility of 0 times a finite design value). What is left in the buckets at the end
    of the chunk is added by :func:`_flush_all`."""
    Bt, V, cnt, Xvt, G = buckets
    K = Wt.shape[1]
    D = X.shape[1]
    cap = V.shape[1]
    for r in range(b):
        for k in range(K):
            v = Wt[r, k]
            if v != 0:
                j = cnt[k]
                for i in range(D):
                    Bt[k, i, j] = X[s + r, i] - center[i]
                V[k, j] = v
                if j + 1 == cap:
                    _flush(Bt[k], V[k], cap, Xvt, G, M, k, qi, qj)
                    cnt[k] = 0
                else:
                    cnt[k] = j + 1


@_jit
def _flush_all(buckets, M, qi, qj):
    Bt, V, cnt, Xvt, G = buckets
    for k in range(cnt.shape[0]):
        if cnt[k] > 0:
            _flush(Bt[k], V[k], cnt[k], Xvt, G, M, k, qi, qj)
            cnt[k] = 0


@_jit
def _block(
    X,
    s,
    b,
    center,
    coef,
    qi,
    qj,
    tied_pt,
    S,
    w,
    weighted,
    single,
    F,
    W,
    Wt,
    Mb,
    M,
    mx,
    sm,
    two_n,
    two_n32,
    buckets,
    share,
):
    """One block of ``b`` rows from row ``s``: its moments added to ``M``; returns its Σ w·log p
    and whether it took the sparse moments.

    ``W`` with no columns (:func:`rows_major`): the log-densities are computed straight into
    ``Wt`` (``Fᵀ @ coefᵀ``, ``coef`` given transposed), one row per data row. A block whose
    nonzero responsibilities are at most ``share`` of its ``b·K`` takes the sparse
    moments (:func:`_scatter`) instead of the product ``F @ respᵀ``."""
    P = F.shape[0]
    K = Wt.shape[1]
    D = tied_pt.shape[0]  # tied covariances: the features; 0 otherwise
    _design(X, s, b, center, qi, qj, F)
    nz = 0  # the nonzero responsibilities
    if W.shape[1] == 0:
        np.dot(F.T, coef, Wt)  # (b, K): coef is coefᵀ here
        _exp_sums_rows(Wt, b, mx, sm, single, two_n, two_n32)
        ll = _loglik(s, b, mx, sm, w, weighted)
        for r in range(b):
            for k in range(K):
                v = Wt[r, k] * sm[r]
                Wt[r, k] = v
                nz += v != 0
    else:
        np.dot(coef, F, W)  # log w_k + log N(x | k), (K, b)
        if D > 0:
            _tied_quadratic(tied_pt, F, W, b, D)
        for r in range(b):
            mx[r] = W[0, r]
        for k in range(1, K):
            for r in range(b):
                mx[r] = max(mx[r], W[k, r])
        _exp_sums(W, b, mx, sm, single, two_n, two_n32)
        ll = _loglik(s, b, mx, sm, w, weighted)
        for r in range(b):
            for k in range(K):
                v = W[k, r] * sm[r]  # responsibilities (times the weights), (b, K)
                Wt[r, k] = v
                nz += v != 0
    sparse = share > 0 and nz <= share * b * K
    if sparse:
        _scatter(X, s, b, center, Wt, buckets, M, qi, qj)
    else:
        np.dot(F, Wt, Mb)  # Σ F respᵀ over the block
        for o in range(P):
            for k in range(K):
                M[o, k] += Mb[o, k]
    if D > 0:  # tied: the scatter Σ w x xᵀ, each row weighted by its total responsibility
        xs = F[:D]
        if weighted:
            xs = F[:D].copy()
            for i in range(D):
                for r in range(b):
                    xs[i, r] *= w[s + r]
        Sb = np.empty((D, D), F.dtype)
        np.dot(xs, F[:D].T, Sb)
        for i in range(D):
            for j in range(D):
                S[i, j] += Sb[i, j]
    return ll, sparse


@_jit
def _chunk_moments(
    X, center, coef, qi, qj, tied_pt, w, weighted, single, rows, rows_major, bucket_rows, sparse_share
):
    n = X.shape[0]
    K, P = coef.shape
    dt = coef.dtype
    Dp = -(-X.shape[1] // 4) * 4  # the buckets' rows: the features padded with zeros to a multiple of 4
    cap = bucket_rows if sparse_share > 0 else 0
    buckets = (
        np.zeros((K, Dp, cap), dt),
        np.empty((K, cap), dt),
        np.zeros(K, np.int64),
        np.zeros((Dp, cap), dt),
        np.empty((Dp, Dp), dt),
    )
    M = np.zeros((P, K))
    S = np.zeros((tied_pt.shape[0], tied_pt.shape[0]))
    Mb = np.empty((P, K), dt)
    mx = np.empty(rows, dt)
    sm = np.empty(rows, dt)
    runs = rows * K if rows_major else rows  # the exponentials' run: a block's values, or a row of W
    two_n = np.empty(runs, np.float64)
    two_n32 = np.empty(runs, np.float32)
    ll = 0.0
    n_sparse = 0
    coef_t = np.ascontiguousarray(coef.T) if rows_major else coef
    wcols = 0 if rows_major else rows
    F = np.empty((P, rows), dt)
    W = np.empty((K, wcols), dt)
    Wt = np.empty((rows, K), dt)
    for s in range(0, n, rows):
        b = min(rows, n - s)
        if b < rows:  # the last rows: arrays of their own size (np.dot takes contiguous arrays)
            F = np.empty((P, b), dt)
            W = np.empty((K, 0 if rows_major else b), dt)
            Wt = np.empty((b, K), dt)
        args = (tied_pt, S, w, weighted, single, F, W, Wt, Mb, M, mx, sm, two_n, two_n32)
        block_ll, sparse = _block(X, s, b, center, coef_t, qi, qj, *args, buckets, sparse_share)
        ll += block_ll
        n_sparse += sparse
    if cap > 0:
        _flush_all(buckets, M, qi, qj)
    return M, S, ll, n_sparse


@_jit
def _predict(X, center, coef, qi, qj, tied_pt, single, rows, want_norm, labels, probs, lognorm, conf):
    """Per row of ``X``: the label (if ``labels`` has rows), and with ``want_norm`` the log
    density, the responsibilities (if ``probs`` has rows) and the largest one (if ``conf``
    has rows); returns whether every row's largest log-density was finite."""
    n = X.shape[0]
    K, P = coef.shape
    dt = coef.dtype
    mx = np.empty(rows, dt)
    sm = np.empty(rows, dt)
    two_n = np.empty(rows, np.float64)
    two_n32 = np.empty(rows, np.float32)
    all_finite = True
    for s in range(0, n, rows):
        b = min(rows, n - s)
        F = np.empty((P, b), dt)
        W = np.empty((K, b), dt)
        _design(X, s, b, center, qi, qj, F)
        np.dot(coef, F, W)
        if tied_pt.shape[0] > 0:
            _tied_quadratic(tied_pt, F, W, b, tied_pt.shape[0])
        for r in range(b):
            mx[r] = W[0, r]
        if labels.shape[0] > 0:
            for r in range(b):
                labels[s + r] = 0
            for k in range(1, K):
                for r in range(b):
                    if W[k, r] > mx[r]:  # the first largest, as numpy's argmax
                        mx[r] = W[k, r]
                        labels[s + r] = k
        else:
            for k in range(1, K):
                for r in range(b):
                    mx[r] = max(mx[r], W[k, r])
        if not want_norm:
            for r in range(b):
                if not math.isfinite(mx[r]):
                    all_finite = False
            continue
        if not _exp_sums(W, b, mx, sm, single, two_n, two_n32):
            all_finite = False
        for r in range(b):
            lognorm[s + r] = math.log(sm[r]) + mx[r]
            sm[r] = 1.0 / sm[r]
        if probs.shape[0] > 0:
            for r in range(b):
                for k in range(K):
                    probs[s + r, k] = W[k, r] * sm[r]
        if conf.shape[0] > 0:
            for r in range(b):
                best = W[0, r]
                for k in range(1, K):
                    best = max(best, W[k, r])
                conf[s + r] = best * sm[r]
    return all_finite


def _tied_pt(p) -> np.ndarray:
    """Tied covariances: the transposed Cholesky factor of the shared precision (D, D) in the
    compute dtype; an empty (0, 0) array for the other types."""
    if p.covariance_type == "tied":
        return p.tied_pt
    return np.empty((0, 0), p.dtype)


def _arguments(X, p) -> tuple:
    """``(X, (center, coef, qi, qj, tied_pt), single, rows)``: what both compiled kernels take.

    ``X`` C-contiguous, float32 or float64 (other dtypes cast to ``p.dtype``); the centre in the
    compute dtype, so the subtraction runs in the wider of the two dtypes, as the numpy kernel's.
    """
    X = np.asarray(X)
    X = np.ascontiguousarray(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else p.dtype)
    qi, qj = quadratic_rows(p.covariance_type, p.n_features)
    single = p.dtype == np.float32
    rows = SMALL_DESIGN_ROWS if not single and p.n_design <= SMALL_DESIGN else BLOCK_ROWS
    return X, (p.center.astype(p.dtype), p.coef, qi, qj, _tied_pt(p)), single, rows


def rows_major(p) -> bool:
    """Whether :func:`chunk_moments` computes the log-densities one row per data row,
    ``Fᵀ @ coefᵀ`` (rows × K), rather than ``coef @ F`` (K × rows): float32 with more design rows
    than :data:`SMALL_DESIGN`, not tied.

    OpenBLAS's sgemm took 77-106 ns per row for the first against 124-137 for the second (256×153
    by 153×16, one thread, AMD EPYC Zen 3, AVX2), and the responsibilities are then already in the
    layout of the moments' product, with no transposition. float64's dgemm was not faster that way
    (170-213 against 164-252 ns), nor were small design matrices (10 rows)."""
    return p.dtype == np.float32 and p.n_design > SMALL_DESIGN and p.covariance_type != "tied"


def sparse_moments(p) -> tuple[int, float]:
    """``(bucket_rows, share)``: a block whose nonzero responsibilities are at most ``share`` of
    its rows × K takes the sparse moments, with buckets of ``bucket_rows`` rows per component;
    ``(0, 0.0)`` where no block does.

    Full covariances only, and only where the dense product ``F @ respᵀ`` has at least
    :data:`SPARSE_MIN_PRODUCT` design rows × components: below that, and for the other types'
    short design matrices, it costs no more than the buckets. The buckets (components × features × rows) take at most :data:`SPARSE_BUCKET_BYTES`,
    with at most :data:`BLOCK_ROWS` rows (a float32 run summed in float32 stays as long as the
    dense product's) and at least 16."""
    if p.covariance_type != "full" or p.n_design * p.n_components < SPARSE_MIN_PRODUCT:
        return 0, 0.0
    per_row = p.n_components * (-(-p.n_features // 4) * 4) * np.dtype(p.dtype).itemsize
    rows = min(BLOCK_ROWS, SPARSE_BUCKET_BYTES // per_row)
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
    M, S, ll, n_sparse = _chunk_moments(X, *prm, w, weighted, single, rows, rows_major(p), *sparse_moments(p))
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
