"""Synthetic data with known parameters: the demo, the benchmarks, the notebooks and the tests.

Three kinds of data, each with its generating parameters returned beside it:

* :func:`make_mixture`: rows of a Gaussian mixture with full covariances, in memory
  (``X, labels, weights, means, covariances``).
* :func:`make_blobs`, :func:`blobs_array`, :func:`write_blobs_zarr`: isotropic components
  (one standard deviation per component), in memory, as a lazy dask array of seeded blocks, or
  written to a Zarr store block by block for out-of-core sizes.
* :func:`make_raster` / :func:`true_classes`: a ``(y, x, band)`` uint16 raster with a known
  class map, written to Zarr chunk by chunk.

Every function is seeded, and the same arguments give the same numbers. Options such as
``matmul``, ``concentration`` or ``seed_by`` select between the random streams that earlier
versions of the demo, benchmarks and tests drew, so the figures and tests built on them keep
their exact values. Only numpy, dask, zarr and :mod:`daskgmm.io` are used here. ``overwrite=True`` replaces only
an array these functions wrote (the ``daskgmm_dataset`` attribute), never another path.
"""

from __future__ import annotations

import os
from typing import Literal, NamedTuple

import dask.array as da
import numpy as np

from daskgmm.io import check_replaceable

#: attribute of the arrays these writers make: overwrite=True replaces only such an array
STAMP = "daskgmm_dataset"

SeedLike = int | np.random.RandomState | np.random.Generator | None


class Mixture(NamedTuple):
    """Rows of a mixture and the parameters they were drawn from."""

    X: np.ndarray  #: (n_samples, n_features)
    labels: np.ndarray  #: (n_samples,) the component of each row
    weights: np.ndarray  #: (n_components,)
    means: np.ndarray  #: (n_components, n_features)
    covariances: np.ndarray  #: (n_components, n_features, n_features), or (n_components,) variances for blobs


class Blobs(NamedTuple):
    """The generating parameters of :func:`blobs_array` / :func:`write_blobs_zarr`."""

    weights: np.ndarray  #: (n_components,)
    means: np.ndarray  #: (n_components, n_features)
    scales: np.ndarray  #: (n_components,) standard deviation of every feature in a component


def _rng(seed: SeedLike):
    """An int or None seeds a legacy ``RandomState``; a ``RandomState`` or ``Generator`` is used as is."""
    if isinstance(seed, (np.random.RandomState, np.random.Generator)):
        return seed
    return np.random.RandomState(seed)


def _integers(rng, high: int, size: int) -> np.ndarray:
    return (
        rng.randint(high, size=size)
        if isinstance(rng, np.random.RandomState)
        else rng.integers(high, size=size)
    )


# --------------------------------------------------------------------------
# full covariances, in memory
# --------------------------------------------------------------------------
def make_mixture(
    n_samples: int = 600,
    n_features: int = 3,
    n_components: int = 3,
    seed: SeedLike = 0,
    *,
    separation: float = 4.0,
    weights=None,
    means=None,
    covariances=None,
    concentration: float = 5.0,
    cov_scale: float = 0.4,
    ridge: float = 0.3,
    matmul: bool = False,
    dtype=np.float64,
) -> Mixture:
    """Samples of a Gaussian mixture with full covariances and known parameters.

    The parameters not given are drawn, in this order: ``weights ~ Dirichlet(concentration)``,
    ``means ~ Uniform(-separation, separation)``, ``covariances = A Aᵀ + ridge·I`` with
    ``A ~ Normal(0, cov_scale²)`` of shape (n_components, n_features, n_features). Then every
    row's component (``labels``, drawn with probabilities ``weights``) and its standard normal
    noise, transformed by the component's Cholesky factor. One component at a time, so memory
    stays at a few copies of ``X``.

    Parameters
    ----------
    n_samples, n_features, n_components : int
        The shape of ``X`` and the number of components (they must agree with any given
        ``weights``, ``means`` or ``covariances``).
    seed : int, None, numpy.random.RandomState or numpy.random.Generator
        An int or None seeds a ``RandomState`` (the stream of the test suite); a
        ``RandomState`` or ``Generator`` is drawn from directly and left advanced, so the
        caller can go on drawing from it.
    separation : float
        Half the side of the box the means are drawn in.
    weights : array-like of shape (n_components,), optional
    means : array-like of shape (n_components, n_features), optional
    covariances : array-like of shape (n_components, n_features, n_features), optional
        Given parameters are used as they are, and nothing is drawn for them.
    concentration, cov_scale, ridge : float
        As above.
    matmul : bool
        Apply the Cholesky factors with a matrix product (BLAS; faster for many features;
        the stream of ``daskgmm bench``) instead of ``numpy.einsum`` (the tests' and the
        quickstart's stream). The two agree to rounding, not bit for bit.
    dtype : numpy dtype
        dtype of ``X`` (the draws are float64).

    Returns
    -------
    Mixture
        ``(X, labels, weights, means, covariances)``.
    """
    rng = _rng(seed)
    k, d = n_components, n_features
    if weights is None:
        weights = rng.dirichlet(np.full(k, concentration))
    if means is None:
        means = rng.uniform(-separation, separation, size=(k, d))
    if covariances is None:
        A = rng.normal(size=(k, d, d)) * cov_scale
        covariances = np.einsum("kij,klj->kil", A, A) + ridge * np.eye(d)
    weights, means, covariances = (np.asarray(a, dtype=np.float64) for a in (weights, means, covariances))
    if weights.shape != (k,) or means.shape != (k, d) or covariances.shape != (k, d, d):
        raise ValueError(
            f"weights {weights.shape}, means {means.shape} and covariances {covariances.shape} do not fit "
            f"n_components={k}, n_features={d}: expected ({k},), ({k}, {d}) and ({k}, {d}, {d})."
        )
    labels = rng.choice(k, size=n_samples, p=weights)
    chol = np.linalg.cholesky(covariances)
    X = rng.standard_normal((n_samples, d))
    for j in range(k):
        idx = np.flatnonzero(labels == j)
        if matmul:
            X[idx] = X[idx] @ chol[j].T + means[j]
        else:
            X[idx] = means[j] + np.einsum("ij,nj->ni", chol[j], X[idx])
    return Mixture(X.astype(dtype, copy=False), labels, weights, means, covariances)


# --------------------------------------------------------------------------
# isotropic components: in memory, lazy, on disk
# --------------------------------------------------------------------------
def make_blobs(
    n_samples: int,
    n_features: int,
    n_components: int,
    seed: SeedLike = 0,
    *,
    separation: float = 4.0,
    scale_range: tuple[float, float] = (0.7, 1.3),
) -> Mixture:
    """Equally likely isotropic Gaussian components, in memory, from one random stream.

    Draws ``means ~ Uniform(-separation, separation)``, the labels (uniform), one standard
    deviation per component ``~ Uniform(*scale_range)``, then the noise. ``seed`` is as in
    :func:`make_mixture`: pass one ``RandomState`` to several calls to continue its stream.
    Not the numbers of :func:`blobs_array`, which draws every block from its own seed.

    Parameters
    ----------
    n_samples, n_features, n_components : int
        The shape of ``X`` and the number of components.
    seed : int, None, numpy.random.RandomState or numpy.random.Generator, default=0
        As in :func:`make_mixture`.
    separation : float, default=4.0
        Half the side of the box the means are drawn in.
    scale_range : (float, float), default=(0.7, 1.3)
        Bounds of the per-component standard deviations.

    Returns
    -------
    Mixture
        ``X`` float64 of shape (n_samples, n_features), ``labels`` (n_samples,), equal
        ``weights``, ``means`` (n_components, n_features); ``covariances`` are the
        per-component variances, shape (n_components,).
    """
    rng = _rng(seed)
    means = rng.uniform(-separation, separation, size=(n_components, n_features))
    labels = _integers(rng, n_components, n_samples)
    scale = rng.uniform(*scale_range, size=(n_components, 1))
    X = means[labels] + rng.standard_normal((n_samples, n_features)) * scale[labels]
    weights = np.full(n_components, 1.0 / n_components)
    return Mixture(X, labels, weights, means, scale[:, 0] ** 2)


def blob_parameters(
    n_features: int,
    n_components: int,
    seed: int = 0,
    *,
    separation: float = 3.0,
    scale_range: tuple[float, float] = (0.5, 1.5),
    concentration: float | None = None,
) -> Blobs:
    """The generating parameters of :func:`blobs_array` (same arguments).

    From ``RandomState(seed)``: ``weights ~ Dirichlet(concentration)`` (equal weights, and
    nothing drawn, when ``concentration`` is None), ``means ~ Uniform(-separation,
    separation)``, ``scales ~ Uniform(*scale_range)``.

    Parameters
    ----------
    n_features, n_components : int
    seed : int, default=0
    separation : float, default=3.0
        Half the side of the box the means are drawn in.
    scale_range : (float, float), default=(0.5, 1.5)
        Bounds of the per-component standard deviations.
    concentration : float, optional
        Dirichlet concentration of the weights; None for equal weights.

    Returns
    -------
    Blobs
        ``weights`` (n_components,), ``means`` (n_components, n_features), ``scales``
        (n_components,).
    """
    rng = np.random.RandomState(seed)
    if concentration is None:
        weights = np.full(n_components, 1.0 / n_components)
    else:
        weights = rng.dirichlet(np.full(n_components, concentration))
    means = rng.uniform(-separation, separation, size=(n_components, n_features))
    scales = rng.uniform(*scale_range, size=n_components)
    return Blobs(weights, means, scales)


def _blobs_block(block_info=None, *, means, scales, weights, seed, chunk_rows, seed_by):
    """One block of :func:`blobs_array`: a pure function of its position and the seed."""
    start, stop = block_info[None]["array-location"][0]
    if seed_by == "chunk":
        rng = np.random.RandomState([seed, start // chunk_rows])
    else:
        rng = np.random.RandomState([seed, start % (2**32 - 1), start // (2**32 - 1)])
    n = stop - start
    k = len(means)
    labels = rng.randint(k, size=n) if weights is None else rng.choice(k, size=n, p=weights)
    out = rng.standard_normal((n, means.shape[1]))
    out *= scales[labels, None]
    out += means[labels]
    return out


def blobs_array(
    n_samples: int,
    n_features: int,
    n_components: int,
    chunk_rows: int,
    seed: int = 0,
    *,
    separation: float = 3.0,
    scale_range: tuple[float, float] = (0.5, 1.5),
    concentration: float | None = None,
    seed_by: Literal["chunk", "row"] = "chunk",
) -> tuple[da.Array, Blobs]:
    """A lazy float64 dask array of isotropic mixture rows, in blocks of ``chunk_rows``.

    Every block is drawn on its own, from ``RandomState([seed, i])`` with ``i`` the block's
    index (``seed_by="chunk"``, the demo's stream) or from a seed made of its first row
    (``seed_by="row"``, the out-of-core benchmark's stream): a block's task needs no other
    block and no data from the driver, so any size can be generated on the workers. Each
    row's component is drawn uniformly (``concentration=None``) or with the drawn weights.
    The parameters are those of :func:`blob_parameters`.

    Parameters
    ----------
    n_samples, n_features, n_components : int
    chunk_rows : int
        Rows per block (the last block holds the rest).
    seed : int, default=0
    separation, scale_range, concentration
        As in :func:`blob_parameters`.
    seed_by : {"chunk", "row"}, default="chunk"
        How each block's random stream is seeded (see above).

    Returns
    -------
    X : dask.array.Array of shape (n_samples, n_features)
        float64, chunked ``(chunk_rows, n_features)``.
    params : Blobs
        ``weights``, ``means``, ``scales``.

    Raises
    ------
    ValueError
        ``seed_by`` is neither ``"chunk"`` nor ``"row"``.
    """
    if seed_by not in ("chunk", "row"):
        raise ValueError(f"seed_by must be 'chunk' or 'row', got {seed_by!r}.")
    params = blob_parameters(
        n_features,
        n_components,
        seed,
        separation=separation,
        scale_range=scale_range,
        concentration=concentration,
    )
    n_full, rest = divmod(n_samples, chunk_rows)
    rows = (chunk_rows,) * n_full + ((rest,) if rest else ())
    X = da.map_blocks(
        _blobs_block,
        chunks=(rows, (n_features,)),
        dtype=np.float64,
        meta=np.empty((0, 0)),
        means=params.means,
        scales=params.scales,
        weights=None if concentration is None else params.weights,
        seed=seed,
        chunk_rows=chunk_rows,
        seed_by=seed_by,
    )
    return X, params


def write_blobs_zarr(
    path,
    n_samples: int,
    n_features: int,
    n_components: int,
    chunk_rows: int,
    seed: int = 0,
    *,
    compressed: bool = True,
    overwrite: bool = False,
    **options,
) -> Blobs:
    """Write :func:`blobs_array` to a new Zarr array at ``path``, one block per Zarr chunk.

    Runs on the current Dask scheduler; no block passes through the driver. ``compressed=False``
    stores the chunks uncompressed (what the out-of-core benchmark reads); ``options`` are those
    of :func:`blobs_array`. Returns the generating parameters (``.means`` for the true means).

    Parameters
    ----------
    path : str or path-like
        The new Zarr array, float64 of shape (n_samples, n_features), chunks
        ``(chunk_rows, n_features)``.
    n_samples, n_features, n_components, chunk_rows, seed
        As in :func:`blobs_array`.
    compressed : bool, default=True
        Use Zarr's default compressor; False stores the chunks raw.
    overwrite : bool, default=False
        Replace an existing ``path``.
    **options
        ``separation``, ``scale_range``, ``concentration``, ``seed_by`` of :func:`blobs_array`.

    Returns
    -------
    Blobs
        ``weights``, ``means``, ``scales``.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import zarr

    X, params = blobs_array(n_samples, n_features, n_components, chunk_rows, seed, **options)
    path = os.fspath(path)
    check_replaceable(path, overwrite, STAMP)
    z = zarr.create_array(
        path,
        shape=(n_samples, n_features),
        chunks=(chunk_rows, n_features),
        dtype="f8",
        compressors="auto" if compressed else None,
        overwrite=overwrite,
        config={"write_empty_chunks": True},  # no chunk missing from the store
    )
    da.store(X, z, lock=False)
    z.attrs[STAMP] = "write_blobs_zarr"
    return params


# --------------------------------------------------------------------------
# a raster with known classes
# --------------------------------------------------------------------------
def raster_classes(n_classes: int, n_bands: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class means and noise scales of :func:`make_raster` (uint16 band values).

    Parameters
    ----------
    n_classes, n_bands : int
    seed : int, default=0
        Seeds a ``RandomState``.

    Returns
    -------
    means : ndarray of shape (n_classes, n_bands)
        Drawn from ``Uniform(2000, 50000)``.
    scales : ndarray of shape (n_classes, n_bands)
        Noise standard deviations, drawn from ``Uniform(300, 1200)``.
    """
    rng = np.random.RandomState(seed)
    means = rng.uniform(2000, 50000, size=(n_classes, n_bands))
    scales = rng.uniform(300, 1200, size=(n_classes, n_bands))
    return means, scales


def _cell_hash(gy: np.ndarray, gx: np.ndarray, seed: int):
    """Deterministic per-cell jitter (u, v in [0, 1)) and class, from the cell index alone."""
    h = (gy.astype(np.int64) * 73856093) ^ (gx.astype(np.int64) * 19349663) ^ (int(seed) * 83492791)
    h = (h * 2654435761 + 12345) % (2**31 - 1)
    u = (h % 4096) / 4096.0
    v = ((h // 4096) % 4096) / 4096.0
    return u, v, (h // 16777216) % 1000003


def _nearest_cell_class(yy: np.ndarray, xx: np.ndarray, n_classes: int, seed: int, cell: int) -> np.ndarray:
    """Class of the nearest jittered cell centre among the 3 x 3 cells around each point."""
    iy, ix = np.floor_divide(yy, cell).astype(np.int64), np.floor_divide(xx, cell).astype(np.int64)
    best = np.full(np.broadcast(yy, xx).shape, np.inf)
    out = np.zeros(best.shape, dtype=np.int16)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            gy, gx = np.broadcast_arrays(iy + dy, ix + dx)
            u, v, c = _cell_hash(gy, gx, seed)
            d2 = (yy - (gy + u) * cell) ** 2 + (xx - (gx + v) * cell) ** 2
            closer = d2 < best
            best[closer] = d2[closer]
            out[closer] = (c % n_classes)[closer]
    return out


#: the class map is drawn on a grid of this many pixels (per side), then repeated
_CLASS_GRID = 4


def _class_map(y0: int, x0: int, ny: int, nx: int, n_classes: int, seed: int, cell: int) -> np.ndarray:
    """True classes of the pixels ``[y0, y0+ny) x [x0, x0+nx)``: a Voronoi-like mosaic of
    jittered cell centres, evaluated on a global grid of ``_CLASS_GRID`` pixels. A function of
    the pixel coordinates only, so blocks agree wherever they are cut."""
    f = _CLASS_GRID
    gy = np.arange(y0 // f, (y0 + ny - 1) // f + 1)
    gx = np.arange(x0 // f, (x0 + nx - 1) // f + 1)
    coarse = _nearest_cell_class((gy * f + f / 2)[:, None], (gx * f + f / 2)[None, :], n_classes, seed, cell)
    ry = np.arange(y0, y0 + ny) // f - y0 // f
    rx = np.arange(x0, x0 + nx) // f - x0 // f
    return coarse[ry[:, None], rx[None, :]]


def _raster_block(block_info=None, *, n_classes, seed, cell, means, scales, nodata):
    info = block_info[None]
    (y0, y1), (x0, x1), _ = info["array-location"]
    ny, nx = y1 - y0, x1 - x0
    classes = _class_map(y0, x0, ny, nx, n_classes, seed, cell)
    rng = np.random.default_rng([seed, y0, x0])
    values = (
        means[classes] + rng.standard_normal((ny, nx, means.shape[1]), dtype=np.float32) * scales[classes]
    )
    out = np.clip(np.rint(values), 1, 65535).astype(np.uint16)
    if nodata is not None:
        # a nodata stripe: the first row of every 7th block row of cells
        out[(np.arange(y0, y1) % (7 * cell)) < cell // 4] = nodata
    return out


def make_raster(
    path,
    shape: tuple[int, int] = (2000, 2000),
    n_bands: int = 4,
    n_classes: int = 5,
    chunks: tuple[int, int] = (1000, 1000),
    seed: int = 0,
    cell: int = 64,
    nodata: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Generate a (y, x, band) uint16 Zarr raster with known classes, chunk by chunk.

    Classes form a Voronoi mosaic of cells of about ``cell`` pixels (:func:`true_classes`);
    each pixel is its class mean plus Gaussian noise (:func:`raster_classes`). With ``nodata``,
    horizontal stripes are set to ``nodata`` in every band. Runs as a lazy dask computation (on
    the current scheduler), so memory stays bounded.

    Returns ``{"means", "scales", "path"}``.

    Parameters
    ----------
    path : str or path-like
        The new Zarr array, uint16 of shape (height, width, n_bands), dimension names
        ``("y", "x", "band")``, attributes ``n_classes``, ``seed`` and ``nodata``.
    shape : (int, int), default=(2000, 2000)
        (height, width) in pixels.
    n_bands : int, default=4
    n_classes : int, default=5
    chunks : (int, int), default=(1000, 1000)
        Spatial chunks (each holds every band).
    seed : int, default=0
        Seeds the class means, the class map and the noise.
    cell : int, default=64
        Approximate size in pixels of a class cell.
    nodata : int, optional
        Value of the nodata stripes; None writes none.
    overwrite : bool, default=False
        Replace an existing ``path``.

    Returns
    -------
    dict
        ``means`` and ``scales`` of shape (n_classes, n_bands) (:func:`raster_classes`),
        ``path`` as written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import zarr

    means, scales = raster_classes(n_classes, n_bands, seed)
    h, w = shape
    arr = da.map_blocks(
        _raster_block,
        chunks=da.core.normalize_chunks((chunks[0], chunks[1], n_bands), (h, w, n_bands)),
        dtype=np.uint16,
        meta=np.empty((0, 0, 0), np.uint16),
        n_classes=n_classes,
        seed=seed,
        cell=cell,
        means=means.astype(np.float32),
        scales=scales.astype(np.float32),
        nodata=nodata,
    )
    path = os.fspath(path)
    check_replaceable(path, overwrite, STAMP)
    z = zarr.create_array(
        path,
        shape=(h, w, n_bands),
        chunks=(chunks[0], chunks[1], n_bands),
        dtype=np.uint16,
        overwrite=overwrite,
        dimension_names=["y", "x", "band"],
        config={"write_empty_chunks": True},  # nodata-only chunks too: no chunk missing
    )
    da.store(arr, z, lock=False)
    z.attrs.update({"n_classes": n_classes, "seed": seed, "nodata": nodata, STAMP: "make_raster"})
    return {"means": means, "scales": scales, "path": path}


def true_classes(
    shape, n_classes: int, seed: int = 0, cell: int = 64, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """The true class map (int16) of the window of ``shape`` pixels starting at ``origin``
    (row, column) of a :func:`make_raster` raster, in memory.

    Parameters
    ----------
    shape : (int, int)
        (height, width) of the window.
    n_classes : int
    seed : int, default=0
    cell : int, default=64
        The ``seed`` and ``cell`` given to :func:`make_raster`.
    origin : (int, int), default=(0, 0)
        (row, column) of the window's first pixel.

    Returns
    -------
    ndarray of shape (height, width)
        int16 classes in ``[0, n_classes)``.
    """
    return _class_map(origin[0], origin[1], shape[0], shape[1], n_classes, seed, cell)


__all__ = [
    "Mixture",
    "Blobs",
    "make_mixture",
    "make_blobs",
    "blob_parameters",
    "blobs_array",
    "write_blobs_zarr",
    "raster_classes",
    "make_raster",
    "true_classes",
]
