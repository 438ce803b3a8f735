"""Everything numba compiles for :mod:`daskgmm._compiled` (which holds the Python side: when each
path applies, the arguments, the entry points): the import (which may fail: numba is a
dependency, but one that cannot load, say for a numpy it does not support yet, leaves the numpy
kernel in place), the compile options (:func:`_jit`), the exponentials, the tiled product (its
inner tile written in LLVM IR, :func:`_tile`), the blocks, the sparse moments and the
prediction kernel.

One file on purpose: numba's disk cache keys a kernel on the content of the file that defines
it, and a cached kernel holds the machine code of every function it calls. A function it calls
from another file could change without invalidating it, and a process would run the old code.

The exponentials (:func:`_exp64`, :func:`_exp32`) are a Cody-Waite reduction and a Taylor
polynomial that the compiler vectorises (degree 13 in float64: relative error below 2e-16 on the
range the log-sum-exp uses, ``x <= 0``; degree 7 in float32 arithmetic for float32); ``np.exp``
inside a numba loop calls libm once per value.
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency; a numba that cannot load (say, a numpy it does not support yet)
    import numba  # leaves the numpy kernel in place (daskgmm.kernel = "auto")
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic
except Exception as exc:  # pragma: no cover - exercised only where numba cannot import
    numba = None
    IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
    intrinsic = lambda func: func  # noqa: E731 - never compiled: use_compiled() checks available()
else:
    IMPORT_ERROR = None

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
#: 1.5 * 2**52: y + _SHIFT rounds y to an integer n held in the low bits of the result's bit
#: pattern (_SHIFT_BITS + n), so 2**n is built with integer adds and shifts only (AVX2 has no
#: vector float64->int64 conversion: ``np.int64(math.floor(...))`` kept the loop scalar there,
#: 7.5 ns per exp against 1-2 with the trick, on an AMD EPYC Zen 3); likewise in float32
_SHIFT = 6755399441055744.0
_SHIFT_BITS = np.int64(0x4338000000000000)
_SHIFT32 = np.float32(12582912.0)
_SHIFT_BITS32 = np.int32(0x4B400000)
#: rows whose sums ``Σ_k exp(·)`` (each in [1, K]) are multiplied before one log: K**32 stays
#: below float64's largest value for any K < 2**32
_LOG_RUN = 32
#: the tiled product (:func:`_product`): components per tile (the coefficients packed in panels of
#: this many), vectors of rows per tile (8 float32 or 4 float64 rows each: 32-byte AVX registers,
#: so a tile's 4×2 sums fill 8 of 16), and design rows per pass (a tile's rows of ``F`` stay in L1)
TILE_COMPONENTS = 4
TILE_VECTORS = 2
TILE_DEPTH = 256


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


@intrinsic
def _tile(typingctx, panel, F, W, k0, r0, p0, p1, add):
    """``W[k0 + m, r0 : r0 + n] (+)= Σ_{p0 <= p < p1} panel[p, m]·F[p, r0 : r0 + n]``, for each
    ``m < TILE_COMPONENTS`` with ``k0 + m < W.shape[0]`` and ``n`` the tile's rows: its
    ``TILE_COMPONENTS × TILE_VECTORS`` sums are vectors held in registers along ``p``. Written in
    LLVM IR: numba has no vector type, and LLVM vectorises only innermost loops, so the same loop
    in numba stays scalar. ``add``: start from ``W`` (a later pass over ``p``) instead of 0."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (panel, F, W)):
        return None
    if panel.dtype != F.dtype or W.dtype != F.dtype or F.dtype not in (types.float32, types.float64):
        return None
    lanes = 256 // F.dtype.bitwidth

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3])]
        k0, r0, p0, p1, add = args[3:]
        vec = ir.VectorType(context.get_value_type(F.dtype), lanes)
        intp = context.get_value_type(types.intp)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f{F.dtype.bitwidth}"
        )
        n_k, ld_w = cgutils.unpack_tuple(builder, arrays[2].shape, 2)
        ld_f = cgutils.unpack_tuple(builder, arrays[1].shape, 2)[1]

        def at(array, index, offset, vector=True):  # pointer to array.data[index + offset]
            ptr = builder.gep(array.data, [builder.add(index, ir.Constant(intp, offset))])
            return builder.bitcast(ptr, vec.as_pointer()) if vector else ptr

        zero = ir.Constant(vec, None)
        sums = [
            [cgutils.alloca_once_value(builder, zero) for _ in range(TILE_VECTORS)]
            for _ in range(TILE_COMPONENTS)
        ]
        ks = [builder.add(k0, ir.Constant(intp, m)) for m in range(TILE_COMPONENTS)]
        rows = [builder.add(builder.mul(k, ld_w), r0) for k in ks]  # offsets of W[k, r0]
        inside = [builder.icmp_signed("<", k, n_k) for k in ks]
        for m in range(TILE_COMPONENTS):
            with builder.if_then(builder.and_(add, inside[m])):
                for v in range(TILE_VECTORS):
                    builder.store(builder.load(at(arrays[2], rows[m], v * lanes), align=4), sums[m][v])
        undef = ir.Constant(vec, ir.Undefined)
        first = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        with cgutils.for_range_slice(builder, p0, p1, ir.Constant(intp, 1)) as (p, _):
            f_row = builder.add(builder.mul(p, ld_f), r0)
            f = [builder.load(at(arrays[1], f_row, v * lanes), align=4) for v in range(TILE_VECTORS)]
            c_row = builder.mul(p, ir.Constant(intp, TILE_COMPONENTS))
            for m in range(TILE_COMPONENTS):
                c = builder.load(at(arrays[0], c_row, m, vector=False))
                c = builder.shuffle_vector(
                    builder.insert_element(undef, c, ir.Constant(ir.IntType(32), 0)), undef, first
                )
                for v in range(TILE_VECTORS):
                    builder.store(builder.call(fma, [f[v], c, builder.load(sums[m][v])]), sums[m][v])
        for m in range(TILE_COMPONENTS):
            with builder.if_then(inside[m], likely=True):
                for v in range(TILE_VECTORS):
                    builder.store(builder.load(sums[m][v]), at(arrays[2], rows[m], v * lanes), align=4)
        return context.get_dummy_value()

    return types.void(panel, F, W, types.intp, types.intp, types.intp, types.intp, types.boolean), codegen


@_jit
def _panels(coef):
    """``coef`` (K, P) packed for :func:`_product`: (⌈K/TILE_COMPONENTS⌉, P, TILE_COMPONENTS), zero
    past component K."""
    K, P = coef.shape
    panels = np.zeros((-(-K // TILE_COMPONENTS), P, TILE_COMPONENTS), coef.dtype)
    for k in range(K):
        panels[k // TILE_COMPONENTS, :, k % TILE_COMPONENTS] = coef[k]
    return panels


@_jit
def _product(panels, F, W, b):
    """``W[:, :b] = coef @ F[:, :b]`` in tiles (:func:`_tile`) of ``TILE_COMPONENTS`` components
    by ``TILE_VECTORS`` vectors of rows; the rows past the last whole tile (at most 15) one by one.
    ``coef`` given as :func:`_panels`. The tiles read and write memory unchecked: the shapes are
    checked here."""
    T, P, _ = panels.shape
    if P != F.shape[0] or W.shape[0] > T * TILE_COMPONENTS or b > min(F.shape[1], W.shape[1]):
        raise ValueError("_product: the shapes of coef, F and W do not match")
    step = TILE_VECTORS * 32 // F.itemsize
    whole = b - b % step
    for r0 in range(0, whole, step):
        for p0 in range(0, P, TILE_DEPTH):
            for t in range(T):
                _tile(panels[t], F, W, t * TILE_COMPONENTS, r0, p0, min(P, p0 + TILE_DEPTH), p0 > 0)
    for r in range(whole, b):
        for k in range(W.shape[0]):
            panel = panels[k // TILE_COMPONENTS]
            m = k % TILE_COMPONENTS
            acc = panel[0, m] * F[0, r]
            for p in range(1, P):
                acc += panel[p, m] * F[p, r]
            W[k, r] = acc


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
def _log_densities(X, s, b, center, panels, qi, qj, tied_pt, F, W):
    """``W[:, :b]``: log w_k + log N(x | k) of rows ``s .. s + b`` of ``X`` (K, b), through their
    design matrix ``F`` (both kernels' E-step)."""
    _design(X, s, b, center, qi, qj, F)
    _product(panels, F, W, b)
    if tied_pt.shape[0] > 0:
        _tied_quadratic(tied_pt, F, W, b, tied_pt.shape[0])


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
def _block(X, s, b, prm, work, buckets, share):
    """One block of ``b`` rows from row ``s``: its moments added to ``M``; returns its Σ w·log p
    and whether it took the sparse moments: a block whose nonzero responsibilities are at most
    ``share`` of its ``b·K`` takes them (:func:`_scatter`) instead of the product ``F @ respᵀ``."""
    center, panels, qi, qj, tied_pt = prm
    S, w, weighted, single, F, W, Wt, Mb, M, mx, sm, two_n, two_n32 = work
    P = F.shape[0]
    K = Wt.shape[1]
    D = tied_pt.shape[0]  # tied covariances: the features; 0 otherwise
    _log_densities(X, s, b, center, panels, qi, qj, tied_pt, F, W)
    for r in range(b):
        mx[r] = W[0, r]
    for k in range(1, K):
        for r in range(b):
            mx[r] = max(mx[r], W[k, r])
    _exp_sums(W, b, mx, sm, single, two_n, two_n32)
    ll = _loglik(s, b, mx, sm, w, weighted)
    nz = 0  # the nonzero responsibilities
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
def _chunk_moments(X, center, coef, qi, qj, tied_pt, w, weighted, single, rows, bucket_rows, sparse_share):
    n = X.shape[0]
    K, P = coef.shape
    dt = coef.dtype
    Dp = -(-X.shape[1] // 4) * 4  # the buckets' rows: the features padded with zeros to a multiple of 4
    buckets = (  # no rows where no block takes the sparse moments (bucket_rows 0)
        np.zeros((K, Dp, bucket_rows), dt),
        np.empty((K, bucket_rows), dt),
        np.zeros(K, np.int64),
        np.zeros((Dp, bucket_rows), dt),
        np.empty((Dp, Dp), dt),
    )
    M = np.zeros((P, K))
    S = np.zeros((tied_pt.shape[0], tied_pt.shape[0]))
    Mb = np.empty((P, K), dt)
    mx = np.empty(rows, dt)
    sm = np.empty(rows, dt)
    two_n = np.empty(rows, np.float64)
    two_n32 = np.empty(rows, np.float32)
    ll = 0.0
    n_sparse = 0
    prm = (center, _panels(coef), qi, qj, tied_pt)
    F = np.empty((P, rows), dt)
    W = np.empty((K, rows), dt)
    Wt = np.empty((rows, K), dt)
    for s in range(0, n, rows):
        b = min(rows, n - s)
        if b < rows:  # the last rows: arrays of their own size (np.dot takes contiguous arrays)
            F = np.empty((P, b), dt)
            W = np.empty((K, b), dt)
            Wt = np.empty((b, K), dt)
        work = (S, w, weighted, single, F, W, Wt, Mb, M, mx, sm, two_n, two_n32)
        block_ll, sparse = _block(X, s, b, prm, work, buckets, sparse_share)
        ll += block_ll
        n_sparse += sparse
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
    panels = _panels(coef)
    all_finite = True
    for s in range(0, n, rows):
        b = min(rows, n - s)
        F = np.empty((P, b), dt)
        W = np.empty((K, b), dt)
        _log_densities(X, s, b, center, panels, qi, qj, tied_pt, F, W)
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
