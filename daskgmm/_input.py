"""The one input funnel: parameter checks and input coercion at the boundary.

numpy, dask, Zarr (arrays, local paths and URLs: :mod:`daskgmm._storage`) and xarray are unwrapped in one place
(:func:`_unwrap`), then shaped for their use:

* :func:`to_dask`: rows for the estimator, one 2-D dask array of float32/float64 with the
  feature axis in a single chunk;
* :func:`as_image`: pixels for segmentation, (*spatial, bands) with the bands in one chunk,
  the input dtype kept (the prediction kernel computes in float).

Metadata checks (ndim, dtype, sizes) are eager; value checks (NaN, inf) ride along the
first pass over the data (see :mod:`daskgmm._kernels`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskgmm._storage import open_zarr_array, zarr_source  # open_zarr_array: re-exported

logger = logging.getLogger("daskgmm")

#: default size of one chunk when daskgmm chunks an in-memory array (bytes)
DEFAULT_CHUNK_BYTES = 32 * 2**20
#: bytes of one spatial chunk when daskgmm chunks an in-memory image
IMAGE_CHUNK_BYTES = 64 * 2**20


@dataclass
class Input:
    """Normalised input: a dask array plus what is needed to shape outputs like the input."""

    data: da.Array
    kind: str  # "numpy" | "dask" | "zarr" | "xarray"
    n_samples: int
    n_features: int
    sample_dim: str | None = None
    sample_coords: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # path of a Zarr store, when known

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float32 stays float32; every other numeric dtype computes in float64."""
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def check_dtype(dtype: np.dtype, what: str = "X") -> np.dtype:
    """Return the compute dtype for input ``dtype``, or raise a clear error."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {what} has dtype {dtype}. Pass real-valued features.")
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{what} has dtype {dtype}, which is not numeric: GaussianMixture needs numbers. "
            f"Convert it first, for example with X.astype('float64')."
        )
    return compute_dtype(dtype)


def check_shape(shape: tuple, what: str = "X") -> None:
    if len(shape) != 2:
        raise ValueError(
            f"Expected 2D array, got {len(shape)}D array instead (shape={shape}). {what} must have "
            "shape (n_samples, n_features): reshape with X.reshape(-1, 1) for a single feature, "
            "or X.reshape(1, -1) for a single sample."
        )
    n, d = shape
    if d is not None and not (isinstance(d, float) and math.isnan(d)) and d < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={shape}) while a minimum of 1 is required.")


def check_min_samples(n_samples: int, shape: tuple, minimum: int = 2) -> None:
    if n_samples < minimum:
        raise ValueError(
            f"Found array with {n_samples} sample(s) (shape={shape}) while a minimum of "
            f"{minimum} is required."
        )


def _n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_row_chunk(n_samples: int, n_features: int, itemsize: int) -> int:
    """Rows per chunk for in-memory input.

    At most ``DEFAULT_CHUNK_BYTES`` per chunk; for large arrays about four chunks per
    core, so that every core works and a slow core does not hold up the iteration,
    with the chunk count a multiple of the cores. A chunk keeps enough work to
    amortise the fixed cost of a task (about a millisecond): at least 20,000 rows at
    D <= 16, fewer for wider rows since the work per row grows as D².
    """
    n = max(int(n_samples), 1)
    d = max(int(n_features), 1)
    rows = max(1, DEFAULT_CHUNK_BYTES // (d * itemsize))
    ncores = _n_cores()
    min_rows = max(1_000, int(20_000 * min(1.0, (16.0 / d) ** 2)))
    rows = min(rows, max(min_rows, -(-n // (4 * ncores))))
    n_chunks = -(-n // rows)
    if 1 < n_chunks and n_chunks % ncores:
        n_chunks += ncores - n_chunks % ncores  # equal shares per core
        rows = -(-n // n_chunks)
    return int(min(rows, n))


def _open_zarr_path(path: str | os.PathLike):
    return open_zarr_array(path)[0]  # local paths and URLs (daskgmm._storage)


def _is_xarray(X) -> bool:
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        return False
    return isinstance(X, xr.DataArray)


def _is_zarr_array(X) -> bool:
    try:
        import zarr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(X, zarr.Array)


@dataclass
class _Unwrapped:
    """An input before shaping: a dask array (dask, Zarr), a DataArray, or anything in memory."""

    obj: Any
    kind: str  # "numpy" | "dask" | "zarr" | "xarray"
    source: str | None = None  # the path given, when a path was given
    dims: tuple | None = None  # dimension names (xarray; Zarr arrays that have them)
    store: str | None = None  # the store of a Zarr array


def check_chunks_present(z, where: str | None = None) -> None:
    """Refuse a Zarr array whose store lacks chunks (read as the fill value): one key listing at
    open, no data read; allowed by the dask config ``daskgmm.allow_missing_chunks``."""
    have, want = int(z.nchunks_initialized), int(z.nchunks)
    if have < want and not dask.config.get("daskgmm.allow_missing_chunks", False):
        raise ValueError(
            f"The Zarr array {where or str(z.store_path)!r} has {want - have} of its {want} chunks missing "
            f"from its store; Zarr would read them as the fill value {z.fill_value}, data that were never "
            "there. Rewrite it if a copy or write was interrupted; if those chunks hold only the fill value "
            "(Zarr skips writing such chunks), pass --allow-missing-chunks (in Python: "
            'dask.config.set({"daskgmm.allow_missing_chunks": True})).'
        )


def _unwrap(X) -> _Unwrapped:
    """Paths -> Zarr arrays -> dask arrays (with their dimension names); other libraries'
    array-API arrays -> numpy (:func:`from_array_api`); the rest as given."""
    source = None
    if isinstance(X, (str, os.PathLike)):
        source = os.fspath(X)
        X = _open_zarr_path(X)
    if _is_zarr_array(X):
        check_chunks_present(X, source)
        names = getattr(X.metadata, "dimension_names", None)
        dims = None
        if names and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            dims = tuple(names)
        try:
            store = zarr_source(X)
        except Exception:  # pragma: no cover
            store = None
        return _Unwrapped(da.from_zarr(X), "zarr", source, dims, store)
    if _is_xarray(X):
        return _Unwrapped(X, "xarray", source, tuple(X.dims))
    if isinstance(X, da.Array):
        return _Unwrapped(X, "dask", source)
    return _Unwrapped(from_array_api(X), "numpy", source)


def to_dask(
    X,
    *,
    chunk_rows: int | None = None,
    estimator=None,
    reset: bool = True,
    min_samples: int = 2,
) -> Input:
    """Normalise ``X`` (numpy, list, DataFrame, dask, zarr, path, xarray) to :class:`Input`.

    ``estimator`` and ``reset`` are passed to scikit-learn's ``validate_data`` for
    in-memory input, which records/checks ``n_features_in_`` and feature names.
    """
    u = _unwrap(X)
    kind = u.kind
    source = u.source
    sample_dim = None
    sample_coords: dict[str, Any] = {}
    if kind == "zarr":
        arr = u.obj
        source = source or u.store
    elif kind == "xarray":
        X = u.obj
        if X.ndim != 2:
            check_shape(X.shape)
        sample_dim = X.dims[0]
        sample_coords = {name: c for name, c in X.coords.items() if c.dims == (sample_dim,)}
        data = X.data
        arr = data if isinstance(data, da.Array) else _chunk_in_memory(np.asarray(data), chunk_rows)
    elif kind == "dask":
        arr = u.obj
    else:
        Xn = _validate_in_memory(u.obj, estimator, reset, min_samples)
        arr = _chunk_in_memory(Xn, chunk_rows)

    check_shape(arr.shape)
    dtype = check_dtype(arr.dtype)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if chunk_rows is not None and kind != "numpy":
        arr = arr.rechunk({0: chunk_rows})
    if len(arr.chunks[1]) != 1:
        arr = arr.rechunk({1: -1})
    if any(math.isnan(c) for c in arr.chunks[0]):
        # unknown chunk sizes (e.g. after boolean indexing): one pass to learn them
        arr = arr.compute_chunk_sizes()
    n_samples, n_features = (int(s) for s in arr.shape)
    if n_features < 1:
        check_shape((n_samples, 0))
    if kind != "numpy":
        check_min_samples(n_samples, (n_samples, n_features), min_samples)
        if estimator is not None:
            check_n_features(estimator, n_features, reset)
    return Input(
        data=arr,
        kind=kind,
        n_samples=n_samples,
        n_features=n_features,
        sample_dim=sample_dim,
        sample_coords=sample_coords,
        source=source,
    )


def as_array(X):
    """numpy, dask, Zarr (array or path), xarray or array-like -> a numpy or dask array, uncomputed."""
    u = _unwrap(X)
    if u.kind == "xarray":
        data = u.obj.data
        return data if isinstance(data, da.Array) else np.asarray(data)
    return u.obj if u.kind in ("zarr", "dask") else np.asarray(u.obj)


# --------------------------------------------------------------------------
# images: any array with a feature (band) axis -> (*spatial, bands), bands in one chunk
# --------------------------------------------------------------------------
@dataclass
class Image:
    """A normalised image: ``data`` is (*spatial, n_bands) with the bands in one chunk."""

    data: da.Array
    kind: str  # numpy | dask | zarr | xarray
    spatial_dims: tuple = ()
    coords: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    name: str | None = None
    source: str | None = None
    single_band: bool = False

    @property
    def n_bands(self) -> int:
        return int(self.data.shape[-1])

    @property
    def spatial_shape(self) -> tuple:
        return tuple(int(s) for s in self.data.shape[:-1])

    @property
    def spatial_chunks(self) -> tuple:
        return self.data.chunks[:-1]


def _axis_index(feature_axis, ndim: int, dims: Sequence[str] | None = None) -> int:
    if isinstance(feature_axis, str):
        if dims is None:
            raise TypeError(
                f"feature_axis={feature_axis!r} is a dimension name, which only an xarray "
                "DataArray or a Zarr array with dimension names has; pass an integer axis."
            )
        if feature_axis not in dims:
            raise ValueError(
                f"feature_axis={feature_axis!r} is not a dimension of the image (dims: {tuple(dims)})."
            )
        return list(dims).index(feature_axis)
    if isinstance(feature_axis, bool) or not isinstance(feature_axis, (int, np.integer)):
        raise TypeError(f"feature_axis must be an int, a dimension name or None; got {feature_axis!r}.")
    if not -ndim <= feature_axis < ndim:
        raise ValueError(f"feature_axis={feature_axis} is out of range for an image with {ndim} dimensions.")
    return int(feature_axis) % ndim


def as_image(image, feature_axis: int | str | None = -1) -> Image:
    """Normalise ``image`` (numpy, dask, Zarr array or path, xarray) to :class:`Image`.

    ``feature_axis=None`` means a single-band image: every axis is spatial.
    """
    u = _unwrap(image)
    kind, dims = u.kind, u.dims
    coords: dict = {}
    attrs: dict = {}
    name = None
    if kind == "xarray":
        raw = u.obj
        attrs = dict(raw.attrs)
        name = raw.name
        arr = raw.data if isinstance(raw.data, da.Array) else None
    elif kind in ("zarr", "dask"):
        arr = u.obj
    else:
        arr = None
        raw = np.asarray(u.obj)
        if raw.dtype == object:
            raise ValueError("The image must be a numeric array; got an array of Python objects.")

    ndim = (arr if arr is not None else raw).ndim
    single = feature_axis is None
    if single:
        if ndim < 1:
            raise ValueError("The image must have at least one spatial dimension.")
        fa = None
    else:
        if ndim < 2:
            raise ValueError(
                f"The image has {ndim} dimension(s); it needs at least one spatial axis and the "
                "feature (band) axis. For a single-band image pass feature_axis=None."
            )
        fa = _axis_index(feature_axis, ndim, dims)
    check_dtype((arr if arr is not None else raw).dtype, "image")

    if dims is not None:  # xarray, or Zarr with dimension names
        spatial_dims = tuple(d for i, d in enumerate(dims) if i != fa)
        if kind == "xarray":
            coords = {k: c for k, c in raw.coords.items() if set(c.dims) <= set(spatial_dims)}
    else:
        n_spatial = ndim - (0 if single else 1)
        spatial_dims = ("y", "x") if n_spatial == 2 else tuple(f"dim_{i}" for i in range(n_spatial))

    if arr is None:  # in memory: chunk spatially, about IMAGE_CHUNK_BYTES per block
        values = np.asarray(raw.data if kind == "xarray" else raw)
        values = values[..., None] if single else np.moveaxis(values, fa, -1)
        bands = values.shape[-1]
        chunks = da.core.normalize_chunks(
            ("auto",) * (values.ndim - 1) + (bands,),
            values.shape,
            limit=IMAGE_CHUNK_BYTES,
            dtype=values.dtype,
        )
        arr = da.from_array(values, chunks=chunks)
    else:
        arr = arr[..., None] if single else da.moveaxis(arr, fa, -1)
    if len(arr.chunks[-1]) != 1:
        logger.debug("bringing the band axis to one chunk")
        arr = arr.rechunk({arr.ndim - 1: -1})
    if any(math.isnan(c) for cs in arr.chunks for c in cs):
        raise ValueError("The image has unknown chunk sizes; call image.compute_chunk_sizes() first.")
    if arr.shape[-1] < 1 or any(s == 0 for s in arr.shape[:-1]):
        raise ValueError(f"The image is empty (shape {arr.shape} with the bands last).")
    return Image(arr, kind, spatial_dims, coords, attrs, name, u.source, single)


def from_array_api(X, what: str = "X"):
    """``X`` as a numpy array when it is another library's array-API array (else unchanged).

    daskgmm computes with NumPy and Dask on the CPU, also under scikit-learn's
    ``array_api_dispatch``: array-API inputs (array-api-strict, PyTorch, CuPy, ...) are
    converted here, at the boundary, through DLPack or ``__array__``, and results
    are NumPy arrays. Arrays that cannot reach host memory get an error saying what to pass.
    """
    if isinstance(X, (np.ndarray, np.generic, da.Array)) or not (
        hasattr(X, "__array_namespace__") or hasattr(X, "__dlpack__")  # PyTorch tensors have only the latter
    ):
        return X
    try:
        return np.from_dlpack(X)
    except Exception:  # not every library or device exports DLPack to the CPU
        pass
    try:
        return np.asarray(X)
    except Exception as e:
        device = getattr(X, "device", None)
        raise TypeError(
            f"{what} is a {type(X).__module__}.{type(X).__name__} on device {device!r}, which cannot be "
            "converted to a NumPy array here. daskgmm computes with NumPy and Dask on the CPU: pass a "
            "NumPy array, a dask array, or a CPU array that supports DLPack (for example "
            "X.cpu().numpy() for PyTorch, X.get() for CuPy)."
        ) from e


def _validate_in_memory(X, estimator, reset: bool, min_samples: int) -> np.ndarray:
    from sklearn.utils.validation import check_array, validate_data

    kwargs = dict(dtype=[np.float64, np.float32], ensure_min_samples=min_samples, ensure_all_finite=False)
    if estimator is not None:
        X = validate_data(estimator, X, reset=reset, **kwargs)
    else:
        X = check_array(X, **kwargs)
    return from_array_api(X)  # under array_api_dispatch scikit-learn keeps the input's namespace


def _chunk_in_memory(X: np.ndarray, chunk_rows: int | None) -> da.Array:
    n, d = X.shape
    rows = chunk_rows or default_row_chunk(n, d, X.dtype.itemsize)
    return da.from_array(X, chunks=(rows, d))


def check_n_features(estimator, n_features: int, reset: bool) -> None:
    if reset:
        estimator.n_features_in_ = n_features
        return
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and n_features != expected:
        raise ValueError(
            f"X has {n_features} features, but {type(estimator).__name__} is expecting "
            f"{expected} features as input."
        )


# --------------------------------------------------------------------------
# Initial parameters given by the user (scikit-learn's checks and wording)
# --------------------------------------------------------------------------
def _check_shape_param(param: np.ndarray, shape: tuple, name: str) -> None:
    if param.shape != shape:
        raise ValueError(f"The parameter '{name}' should have the shape of {shape}, but got {param.shape}")


def _as_float_array(value, name: str, keep_float32: bool = False) -> np.ndarray:
    """``value`` as float64 (float32 stays float32 with ``keep_float32``), finite, or an error."""
    arr = np.asarray(from_array_api(value, f"The parameter '{name}'"))
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"The parameter '{name}' must be numeric, got dtype {arr.dtype}.")
    arr = arr.astype(np.float32 if keep_float32 and arr.dtype == np.float32 else np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"The parameter '{name}' contains NaN or infinity.")
    return arr


def check_weights(weights, n_components: int) -> np.ndarray:
    """scikit-learn's checks of ``weights_init``; float32 weights are summed in float32 and
    checked with its float32 tolerance (1e-6 instead of 1e-8). Returns float64."""
    weights = _as_float_array(weights, "weights", keep_float32=True)
    _check_shape_param(weights, (n_components,), "weights")
    if np.any(weights < 0.0) or np.any(weights > 1.0):
        raise ValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max value "
            f"{weights.max():.5f}, min value {weights.min():.5f}"
        )
    atol = 1e-6 if weights.dtype == np.float32 else 1e-8
    if not np.allclose(abs(1.0 - weights.sum()), 0.0, atol=atol):
        raise ValueError(
            f"The parameter 'weights' should be normalized, but got sum(weights) = {weights.sum():.5f}"
        )
    return weights.astype(np.float64)


def check_means(means, n_components: int, n_features: int) -> np.ndarray:
    means = _as_float_array(means, "means")
    _check_shape_param(means, (n_components, n_features), "means")
    return means


def check_precisions(precisions, covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    name = f"{covariance_type} precision"
    precisions = _as_float_array(precisions, name)
    shapes = {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }
    _check_shape_param(precisions, shapes[covariance_type], name)
    if covariance_type in ("full", "tied"):
        mats = precisions if covariance_type == "full" else precisions[None]
        for m in mats:
            if not (np.allclose(m, m.T) and np.all(np.linalg.eigvalsh(m) > 0.0)):
                raise ValueError(f"'{name}' should be symmetric, positive-definite")
    elif np.any(precisions <= 0.0):
        raise ValueError(f"'{name}' should be positive")
    return precisions


def _check_weight_values(finite: bool, low: float, total: float) -> None:
    if not finite:
        raise ValueError("sample_weight contains NaN or infinity: weights must be finite.")
    if low < 0:
        raise ValueError("Negative values in sample_weight: weights must be >= 0.")
    if total <= 0:
        raise ValueError("sample_weight sums to zero: at least one row needs a positive weight.")


def check_sample_weight(sample_weight, inp: Input) -> da.Array | None:
    """Per-row weights as a float64 dask array chunked like the rows of ``inp`` (or None).

    A dask array is checked in one pass over the weights only (not X): NaN/inf,
    negative values, zero sum.
    """
    if sample_weight is None:
        return None
    import dask

    n = inp.n_samples
    sample_weight = from_array_api(sample_weight, "sample_weight")
    if isinstance(sample_weight, da.Array):
        w = sample_weight.astype(np.float64)
        if w.ndim != 1 or w.shape[0] != n:
            raise ValueError(f"sample_weight.shape == {w.shape}, expected {(n,)}!")
        finite, low, total = dask.compute(da.isfinite(w).all(), w.min(), w.sum())
        _check_weight_values(bool(finite), float(low), float(total))
        return w.rechunk((inp.data.chunks[0],))
    w = np.asarray(sample_weight)
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numeric, got dtype {w.dtype}.")
    w = w.astype(np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight.shape == {w.shape}, expected {(n,)}!")
    _check_weight_values(bool(np.all(np.isfinite(w))), float(w.min()) if w.size else 0.0, float(w.sum()))
    return da.from_array(w, chunks=(inp.data.chunks[0],))


def check_n_samples(n_samples: int, n_components: int) -> None:
    """scikit-learn's error when there are fewer rows than components."""
    if n_samples < n_components:
        raise ValueError(
            "Expected n_samples >= n_components "
            f"but got n_components = {n_components}, n_samples = {n_samples}"
        )


def wrap_rows(out, inp: Input, what: str, n_components: int):
    """Per-row output shaped like the input: numpy for numpy input (computed), the dask array
    for dask/Zarr, a DataArray named ``what`` over the sample dimension for xarray."""
    if inp.kind == "numpy":
        return out.compute()
    if inp.kind == "xarray":
        import xarray as xr

        dims = (inp.sample_dim,) if out.ndim == 1 else (inp.sample_dim, "component")
        coords: dict[str, Any] = dict(inp.sample_coords)
        if out.ndim == 2:
            coords["component"] = np.arange(n_components)
        return xr.DataArray(out, dims=dims, coords=coords, name=what)
    return out
