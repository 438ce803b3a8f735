"""Segmentation of multi-band rasters: pixels → features → labels, nodata, Zarr output.

An image is any array with one *feature* (band) axis and one or more spatial axes:
``(y, x, band)`` photos, ``(band, y, x)`` rasters as rioxarray reads them, ``(z, y, x, channel)``
microscopy stacks. :func:`segment` fits a :class:`~daskgmm.GaussianMixture` on the valid
pixels (all of them, or a seeded random fraction) and predicts every pixel lazily, one task
per spatial block of the image, so every output keeps the image's spatial chunks.

Rules
-----
* **nodata**: a pixel is *invalid* when any band is NaN, or equals ``nodata`` in any band.
  Invalid pixels never enter the fit and are labelled ``-1`` (NaN in the float outputs).
  Infinite values are not nodata: they raise an error, as in :class:`~daskgmm.GaussianMixture`.
* **component order**: after fitting, components are sorted by their mean in the first band,
  ties broken by the second band, and so on (``numpy.lexsort`` on the means). Label 0 is the
  darkest class in band 0, label K-1 the brightest, so a label means the same thing across
  runs and tiles fitted the same way. All fitted arrays of the model are permuted together,
  so ``model.predict(pixels)`` equals the label map.
* **outputs**: ``labels`` int16 (int32 when K > 32767), ``probabilities`` float32 with the
  components as a last axis, ``log_density`` float32 (log of the mixture density: low values
  are anomalies), ``confidence`` float32 (the largest probability).

Writing (:meth:`Segmentation.to_zarr`, ``daskgmm segment``) goes to a hidden temporary Zarr
group next to the destination, stamps the attribute ``daskgmm_complete`` last, and renames
the group into place; :func:`open_segmentation` refuses a store without that stamp. Zarr chunks
are the dask chunks of the outputs (the image's spatial chunks), so each task writes whole
Zarr chunks and no two tasks ever write the same chunk.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskgmm._gaussian import EStepParams, design_t, log_resp_and_norm_t, weighted_log_prob_t
from daskgmm._graph import shared
from daskgmm._kernels import _blocks, check_finite_block, in_task

logger = logging.getLogger("daskgmm")

OUTPUTS = ("labels", "probabilities", "log_density", "confidence")
COMPLETE_ATTR = "daskgmm_complete"
ORDER_RULE = (
    "components sorted by their mean in the first band, ties broken by the next bands "
    "(numpy.lexsort of the means); label -1 marks nodata"
)
#: bytes of one spatial chunk when daskgmm chunks an in-memory image
_IMAGE_CHUNK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------
# input: any image → dask array with the features last, one chunk along them
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
            raise ValueError(f"feature_axis={feature_axis!r} is not a dimension of the image (dims: {tuple(dims)}).")
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
    import xarray as xr
    import zarr

    from daskgmm._input import _open_zarr_path, check_dtype

    source = None
    kind = "dask"
    dims = None
    coords: dict = {}
    attrs: dict = {}
    name = None
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        image = _open_zarr_path(image)
    if isinstance(image, zarr.Array):
        arr = da.from_zarr(image)
        kind = "zarr"
        names = getattr(image.metadata, "dimension_names", None)
        if names and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            dims = tuple(names)
    elif isinstance(image, xr.DataArray):
        kind = "xarray"
        dims = image.dims
        attrs = dict(image.attrs)
        name = image.name
        arr = image.data if isinstance(image.data, da.Array) else None
        raw = image
    elif isinstance(image, da.Array):
        arr = image
    else:
        arr = None
        raw = np.asarray(image)
        kind = "numpy"
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
        fa = _axis_index(feature_axis, ndim, dims if kind in ("xarray", "zarr") else None)
    dtype = (arr if arr is not None else raw).dtype
    check_dtype(dtype, "image")

    if dims is not None:  # xarray, or Zarr with dimension names
        spatial_dims = tuple(d for i, d in enumerate(dims) if i != fa)
        if kind == "xarray":
            coords = {k: c for k, c in raw.coords.items() if set(c.dims) <= set(spatial_dims)}
    else:
        n_spatial = ndim - (0 if single else 1)
        spatial_dims = ("y", "x") if n_spatial == 2 else tuple(f"dim_{i}" for i in range(n_spatial))

    if arr is None:  # in memory: chunk spatially, about _IMAGE_CHUNK_BYTES per block
        values = np.asarray(raw.data if kind == "xarray" else raw)
        if single:
            values = values[..., None]
        else:
            values = np.moveaxis(values, fa, -1)
        bands = values.shape[-1]
        chunks = dask.array.core.normalize_chunks(
            ("auto",) * (values.ndim - 1) + (bands,), values.shape, limit=_IMAGE_CHUNK_BYTES, dtype=values.dtype
        )
        arr = da.from_array(values, chunks=chunks)
    else:
        arr = arr[..., None] if single else da.moveaxis(arr, fa, -1)
    if len(arr.chunks[-1]) != 1:
        logger.debug("bringing the band axis to one chunk")
        arr = arr.rechunk({arr.ndim - 1: -1})
    if any(math.isnan(c) for cs in arr.chunks for c in cs):
        raise ValueError(
            "The image has unknown chunk sizes; call image.compute_chunk_sizes() first."
        )
    if arr.shape[-1] < 1 or any(s == 0 for s in arr.shape[:-1]):
        raise ValueError(f"The image is empty (shape {arr.shape} with the bands last).")
    return Image(arr, kind, spatial_dims, coords, attrs, name, source, single)


# --------------------------------------------------------------------------
# per-block kernels (they run on the workers)
# --------------------------------------------------------------------------
def invalid_mask(pixels: np.ndarray, nodata=None) -> np.ndarray:
    """Rows of ``pixels`` (n, bands) that are nodata: NaN in any band, or ``== nodata`` in any band."""
    bad = np.zeros(pixels.shape[0], dtype=bool)
    if pixels.dtype.kind == "f":
        bad |= np.isnan(pixels).any(axis=1)
    if nodata is not None:
        if isinstance(nodata, float) and math.isnan(nodata):
            return bad
        if pixels.dtype.kind == "f":
            nodata = np.asarray(nodata).astype(pixels.dtype)  # e.g. 0.1 as stored in float32
        bad |= (pixels == nodata).any(axis=1)
    return bad


def valid_pixels_block(block: np.ndarray, nodata, fraction, seed, index: int, dtype) -> np.ndarray:
    """The valid pixels of one spatial block as (n, bands) rows of ``dtype``.

    With ``fraction``, each valid pixel is kept with that probability, drawn from a
    generator seeded by ``(seed, index)``: the same pixels whatever ran the task.
    """
    pixels = np.asarray(block).reshape(-1, block.shape[-1])
    keep = ~invalid_mask(pixels, nodata)
    if fraction is not None:
        rng = np.random.default_rng([int(seed), int(index)])
        keep &= rng.random(pixels.shape[0]) < fraction
    return np.ascontiguousarray(pixels[keep], dtype=dtype)


def label_dtype(n_components: int) -> np.dtype:
    return np.dtype(np.int16) if n_components <= np.iinfo(np.int16).max else np.dtype(np.int32)


@in_task
def segment_pixels(block: np.ndarray, p: EStepParams, outputs: tuple, nodata=None) -> dict:
    """All requested outputs for one block of shape (*spatial, bands), from one E-step.

    Returns a dict ``{name: array}``: ``labels`` (*spatial) int16/int32 with -1 for nodata;
    ``probabilities`` (*spatial, K) float32; ``log_density`` and ``confidence`` (*spatial)
    float32, NaN for nodata. Works through the valid pixels in cache-sized row blocks with
    the estimator's E-step kernel (one BLAS thread per task).
    """
    block = np.asarray(block)
    spatial = block.shape[:-1]
    d = block.shape[-1]
    k = p.n_components
    pixels = block.reshape(-1, d)
    n = pixels.shape[0]
    out: dict[str, np.ndarray] = {}
    if "labels" in outputs:
        out["labels"] = np.full(n, -1, dtype=label_dtype(k))
    if "probabilities" in outputs:
        out["probabilities"] = np.full((n, k), np.nan, dtype=np.float32)
    for name in ("log_density", "confidence"):
        if name in outputs:
            out[name] = np.full(n, np.nan, dtype=np.float32)
    need_resp = any(o in outputs for o in ("probabilities", "log_density", "confidence"))
    valid = ~invalid_mask(pixels, nodata)
    if valid.all():
        where, xv = slice(None), pixels
    else:
        where = np.flatnonzero(valid)
        xv = pixels[where]
    parts: dict[str, np.ndarray] = {name: a[where] if not valid.all() else a for name, a in out.items()}
    for start, stop, F, center in _blocks(len(xv), p):
        xb = xv[start:stop]
        with np.errstate(invalid="ignore", over="ignore"):  # inf rows: reported below
            xt = design_t(xb, p, F, center)
            wlp = weighted_log_prob_t(F, xt, p)  # (K, rows)
        if "labels" in parts:
            if not np.all(np.isfinite(wlp.max(axis=0))):
                check_finite_block(xb, "image")
            parts["labels"][start:stop] = wlp.argmax(axis=0)
        if not need_resp:
            continue
        resp, log_norm = log_resp_and_norm_t(wlp)
        if not np.all(np.isfinite(log_norm)):
            check_finite_block(xb, "image")
        if "probabilities" in parts:
            parts["probabilities"][start:stop] = resp.T
        if "log_density" in parts:
            parts["log_density"][start:stop] = log_norm
        if "confidence" in parts:
            parts["confidence"][start:stop] = resp.max(axis=0)
    if not valid.all():
        for name, a in parts.items():
            out[name][where] = a
    return {
        name: a.reshape(spatial + ((k,) if name == "probabilities" else ())) for name, a in out.items()
    }


def _pick(parts: dict, name: str) -> np.ndarray:
    return parts[name]


def _apply_kernel(x: np.ndarray, p: EStepParams, what: str, nodata) -> np.ndarray:
    """One output for an array of shape (..., bands) (used by the xarray accessor)."""
    return segment_pixels(x, p, (what,), nodata)[what]


# --------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------
def _int_seed(random_state) -> int:
    if random_state is None:
        return int(np.random.default_rng().integers(2**31 - 1))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    raise TypeError(f"random_state must be an int, a numpy RandomState or None; got {random_state!r}.")


def _check_sample(sample) -> float | None:
    if sample is None:
        return None
    if isinstance(sample, bool) or not isinstance(sample, (int, float, np.floating, np.integer)):
        raise TypeError(f"sample must be a fraction in (0, 1] or None; got {sample!r}.")
    sample = float(sample)
    if not 0.0 < sample <= 1.0:
        raise ValueError(
            f"sample={sample} is not a fraction in (0, 1]: it is the share of valid pixels the "
            "fit sees (e.g. 0.01 for 1%), or None for all of them."
        )
    return None if sample == 1.0 else sample


def pixel_table(img: Image, nodata=None, sample: float | None = None, seed: int = 0) -> da.Array:
    """Valid (and optionally sampled) pixels as a lazy (n_pixels, bands) dask array.

    One row chunk per spatial block. When no filtering is needed (integer image, no
    nodata, no sampling) the chunk sizes are known; otherwise they are unknown until
    computed (the estimator learns them in one pass).
    """
    data = img.data
    bands = img.n_bands
    dtype = np.float32 if data.dtype == np.float32 else np.float64
    blocks = data.to_delayed(optimize_graph=False).ravel()
    needs_filter = sample is not None or nodata is not None or data.dtype.kind == "f"
    token = dask.base.tokenize(data.name, nodata, sample, seed)
    if not needs_filter:
        sizes = [int(np.prod([c[i] for c, i in zip(data.chunks[:-1], idx)])) for idx in np.ndindex(data.numblocks[:-1])]
        parts = [
            da.from_delayed(
                dask.delayed(valid_pixels_block, pure=True)(b, None, None, 0, i, dtype, dask_key_name=f"gmm-pixels-{token}-{i}"),
                shape=(n, bands),
                dtype=dtype,
            )
            for i, (b, n) in enumerate(zip(blocks, sizes))
        ]
    else:
        parts = [
            da.from_delayed(
                dask.delayed(valid_pixels_block, pure=True)(
                    b, nodata, sample, seed, i, dtype, dask_key_name=f"gmm-pixels-{token}-{i}"
                ),
                shape=(np.nan, bands),
                dtype=dtype,
            )
            for i, b in enumerate(blocks)
        ]
    return da.concatenate(parts, axis=0)


def _permute_components(model, order: np.ndarray) -> None:
    """Reorder the fitted components of ``model`` in place (all arrays consistently)."""
    model.weights_ = model.weights_[order]
    model.means_ = model.means_[order]
    if model.covariance_type != "tied":
        model.covariances_ = model.covariances_[order]
        model.precisions_ = model.precisions_[order]
        model.precisions_cholesky_ = model.precisions_cholesky_[order]


def sort_components(model) -> np.ndarray:
    """Sort ``model``'s components by the means (first band, then the next): see module docs.

    Returns the permutation applied (new label ``i`` was component ``order[i]``).
    """
    order = np.lexsort(model.means_.T[::-1])
    _permute_components(model, order)
    return order


def fit_image(
    image,
    n_components: int,
    *,
    feature_axis: int | str | None = -1,
    nodata=None,
    sample: float | None = None,
    random_state=None,
    **gmm_params,
):
    """Fit a :class:`~daskgmm.GaussianMixture` on the valid pixels of ``image``.

    Same arguments as :func:`segment`; returns the fitted model with its components in
    the documented order.
    """
    from daskgmm._gaussian_mixture import GaussianMixture
    from daskgmm._input import default_row_chunk

    img = image if isinstance(image, Image) else as_image(image, feature_axis)
    fraction = _check_sample(sample)
    seed = _int_seed(random_state)
    if random_state is None or isinstance(random_state, np.random.RandomState):
        model_seed = random_state
    else:
        model_seed = int(random_state)
    pixels = pixel_table(img, nodata, fraction, seed)
    if fraction is not None:
        # the sample is small by design: keep it in (cluster) memory for the EM passes,
        # in a few large row chunks rather than one small chunk per image block
        pixels = pixels.persist()
    if any(math.isnan(c) for c in pixels.chunks[0]):
        pixels = pixels.compute_chunk_sizes()
    n_valid = int(pixels.shape[0])
    if fraction is not None and n_valid > 0:
        rows = default_row_chunk(n_valid, img.n_bands, pixels.dtype.itemsize)
        if rows > max(pixels.chunks[0]):
            pixels = pixels.rechunk({0: rows}).persist()
    if n_valid < max(2, n_components):
        what = f"a {sample} sample of the valid pixels" if fraction is not None else "the valid pixels"
        raise ValueError(
            f"Only {n_valid} pixel(s) to fit ({what}) but n_components={n_components}: there must "
            "be at least as many pixels as components. Check nodata (all pixels may be nodata), "
            "or increase sample."
        )
    logger.info("fitting %d components on %d pixels of %d bands", n_components, n_valid, img.n_bands)
    model = GaussianMixture(n_components=n_components, random_state=model_seed, **gmm_params)
    model.fit(pixels)
    sort_components(model)
    model.n_pixels_fit_ = n_valid
    return model


# --------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------
def _model_params(model, dtype) -> EStepParams:
    return EStepParams(model.weights_, model.means_, model.precisions_cholesky_, model.covariance_type, dtype)


def _check_model(model, n_bands: int) -> None:
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    if model.means_.shape[1] != n_bands:
        raise ValueError(
            f"The image has {n_bands} band(s) but the model was fitted on {model.means_.shape[1]} "
            "feature(s). Check feature_axis (which axis holds the bands)."
        )


@dataclass
class Segmentation:
    """Lazy per-pixel outputs of a fitted mixture over an image.

    Unpacks as ``labels, model = segment(...)``. Every output is built on demand, keeps
    the image's spatial shape and chunks, and is lazy (a dask array, or an xarray
    DataArray over one for xarray input); outputs computed together (``dask.compute`` or
    :meth:`to_zarr`) share one E-step per block.

    Attributes
    ----------
    model : GaussianMixture
        The fitted model, components in the documented order.
    image : Image
        The normalised input.
    nodata : scalar or None
    """

    model: Any
    image: Image
    nodata: Any = None

    def __iter__(self):
        yield self.labels
        yield self.model

    @property
    def n_components(self) -> int:
        return int(self.model.n_components)

    def outputs(self, names: Sequence[str] = ("labels",), wrap: bool = True) -> dict:
        """The requested outputs as a dict ``{name: lazy array}`` sharing one task per block."""
        names = tuple(names)
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise ValueError(f"Unknown output(s) {unknown}; choose among {list(OUTPUTS)}.")
        data = self.image.data
        k = self.n_components
        params = _model_params(self.model, np.float32 if data.dtype == np.float32 else np.float64)
        token = dask.base.tokenize(
            data.name, self.model.weights_, self.model.means_, self.model.precisions_cholesky_, names, self.nodata
        )
        p = shared(params, name=f"gmm-segment-params-{token}")
        spatial = data.chunks[:-1]
        nsp = len(spatial)
        core = da.map_blocks(
            segment_pixels,
            data,
            p,
            names,
            self.nodata,
            drop_axis=nsp,
            chunks=spatial,
            dtype=object,
            meta=np.empty((0,) * nsp, dtype=object),
            name=f"gmm-segment-{token}",
        )
        out = {}
        for name in names:
            if name == "probabilities":
                chunks, dtype, new_axis = spatial + ((k,),), np.float32, [nsp]
            else:
                chunks, dtype, new_axis = spatial, (label_dtype(k) if name == "labels" else np.float32), None
            arr = da.map_blocks(
                _pick,
                core,
                name,
                chunks=chunks,
                dtype=dtype,
                new_axis=new_axis,
                meta=np.empty((0,) * len(chunks), dtype=dtype),
                name=f"gmm-segment-{name}-{token}",
            )
            out[name] = self._wrap(arr, name) if wrap else arr
        return out

    def _wrap(self, arr: da.Array, name: str):
        if self.image.kind != "xarray":
            return arr
        import xarray as xr

        dims = self.image.spatial_dims + (("component",) if name == "probabilities" else ())
        coords = dict(self.image.coords)
        if name == "probabilities":
            coords["component"] = np.arange(self.n_components)
        attrs = dict(self.image.attrs)
        if name == "labels":
            attrs["nodata"] = -1
        return xr.DataArray(arr, dims=dims, coords=coords, attrs=attrs, name=name)

    @property
    def labels(self):
        """Component per pixel, int16 (int32 for K > 32767), -1 for nodata."""
        return self.outputs(("labels",))["labels"]

    @property
    def probabilities(self):
        """Posterior probability of each component, (*spatial, K) float32, NaN for nodata."""
        return self.outputs(("probabilities",))["probabilities"]

    @property
    def log_density(self):
        """Log of the mixture density per pixel (an anomaly map), float32, NaN for nodata."""
        return self.outputs(("log_density",))["log_density"]

    @property
    def confidence(self):
        """Largest posterior probability per pixel, float32, NaN for nodata."""
        return self.outputs(("confidence",))["confidence"]

    def to_zarr(
        self,
        path,
        *,
        probabilities: bool = False,
        log_density: bool = False,
        confidence: bool = False,
        overwrite: bool = False,
        attrs: dict | None = None,
    ) -> str:
        """Write ``labels`` (and the asked-for outputs) to a new Zarr group at ``path``, safely.

        See :func:`write_zarr`.
        """
        names = ["labels"]
        names += [n for n, on in (("probabilities", probabilities), ("log_density", log_density), ("confidence", confidence)) if on]
        return write_zarr(self, path, names, overwrite=overwrite, attrs=attrs)


def predict_image(model, image, *, feature_axis: int | str | None = -1, nodata=None) -> Segmentation:
    """Apply a fitted model to an image (for example another tile), lazily.

    Returns a :class:`Segmentation` (``labels, model = predict_image(...)`` works too).
    """
    img = image if isinstance(image, Image) else as_image(image, feature_axis)
    _check_model(model, img.n_bands)
    return Segmentation(model=model, image=img, nodata=nodata)


def segment(
    image,
    n_components: int,
    *,
    feature_axis: int | str | None = -1,
    nodata=None,
    sample: float | None = None,
    random_state=None,
    **gmm_params,
) -> Segmentation:
    """Segment a multi-band image into per-pixel classes with a Gaussian mixture.

    Parameters
    ----------
    image : array-like of shape (*spatial, n_bands) (bands on ``feature_axis``)
        numpy or dask array, Zarr array or path to one, or xarray DataArray.
    n_components : int
        Number of classes K.
    feature_axis : int, str or None, default=-1
        Axis holding the bands (a dimension name for a DataArray, e.g. ``"band"``);
        None for a single-band image.
    nodata : scalar, optional
        Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are left out of
        the fit and labelled -1.
    sample : float in (0, 1], optional
        Fit on this seeded random fraction of the valid pixels (kept in memory for the EM
        passes), then predict every pixel. None fits on all valid pixels.
    random_state : int, RandomState or None
        Seeds the pixel sample and the model's initialisation.
    **gmm_params
        Any other :class:`~daskgmm.GaussianMixture` parameter (``covariance_type``, ``max_iter``...).

    Returns
    -------
    Segmentation
        Lazy ``labels`` (image's spatial shape and chunks, int16, -1 for nodata), the fitted
        ``model`` (components sorted by their mean in the first band), and on demand
        ``probabilities``, ``log_density``, ``confidence``; ``.to_zarr(path)`` writes them.
        Unpacks as ``labels, model``.
    """
    img = as_image(image, feature_axis)
    model = fit_image(
        img, n_components, nodata=nodata, sample=sample, random_state=random_state, **gmm_params
    )
    return Segmentation(model=model, image=img, nodata=nodata)


# --------------------------------------------------------------------------
# Zarr output: temporary group, completion stamp, rename
# --------------------------------------------------------------------------
def _regular_chunks(chunks: tuple) -> tuple:
    """Zarr chunk shape for dask ``chunks``, or raise if they are not regular."""
    shape = []
    for cs in chunks:
        first = cs[0]
        if any(c != first for c in cs[:-1]) or cs[-1] > first:
            return ()
        shape.append(int(first))
    return tuple(shape)


def model_json(model) -> dict:
    """The fitted model as JSON-able data (parameters and arrays; no pickle)."""
    from daskgmm.io import model_to_dict

    arrays, meta = model_to_dict(model)
    meta["arrays"] = {k: np.asarray(v).tolist() for k, v in arrays.items()}
    return meta


def model_from_json(meta: dict):
    """Inverse of :func:`model_json`."""
    from daskgmm.io import model_from_dict

    return model_from_dict(meta["arrays"], meta)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def write_zarr(seg: Segmentation, path, names: Sequence[str] = ("labels",), *, overwrite: bool = False, attrs: dict | None = None) -> str:
    """Write the outputs ``names`` of ``seg`` to a Zarr group at ``path`` without ever leaving
    a store that looks complete after a failure.

    The group is written under a hidden temporary name in the same directory
    (``.NAME.partial-<id>``), the attribute ``daskgmm_complete`` is set last, and the group
    is renamed to ``path``. A failure removes the temporary group; a killed process leaves
    only the hidden temporary name, which :func:`open_segmentation` refuses. With
    ``overwrite``, an existing ``path`` is replaced only once the new store is complete.

    Arrays are chunked exactly like the image's spatial chunks (probabilities add one
    chunk holding all K components), so each dask task writes whole Zarr chunks.

    Returns the path written.
    """
    import zarr

    from daskgmm import __version__

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; choose another output or pass overwrite=True (--overwrite).")
    if seg.image.source and os.path.abspath(seg.image.source).rstrip(os.sep) == path.rstrip(os.sep):
        raise ValueError("The output path is the input image itself; choose another output path.")
    parent, base = os.path.split(path.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}.partial-{uuid.uuid4().hex[:12]}")
    arrays = seg.outputs(names, wrap=False)
    try:
        group = zarr.open_group(tmp, mode="w")
        sources, targets = [], []
        for name, arr in arrays.items():
            chunks = _regular_chunks(arr.chunks)
            if not chunks:
                # irregular dask chunks cannot map one-to-one onto Zarr chunks: make them regular
                regular = tuple(max(cs) for cs in arr.chunks)
                arr = arr.rechunk(regular)
                chunks = regular
                logger.info("output %s rechunked to regular chunks %s for Zarr", name, regular)
            fill = -1 if name == "labels" else np.nan
            dims = seg.image.spatial_dims + (("component",) if name == "probabilities" else ())
            target = group.create_array(
                name,
                shape=arr.shape,
                chunks=chunks,
                dtype=arr.dtype,
                fill_value=fill,
                dimension_names=list(dims),
            )
            sources.append(arr)
            targets.append(target)
        t0 = time.perf_counter()
        da.store(sources, targets, lock=False, compute=True)
        logger.info("wrote %s in %.1fs", names, time.perf_counter() - t0)
        meta = {
            "daskgmm_version": __version__,
            "n_components": seg.n_components,
            "nodata": _jsonable(seg.nodata),
            "label_nodata": -1,
            "outputs": list(names),
            "component_order": ORDER_RULE,
            "spatial_dims": list(seg.image.spatial_dims),
            "source": seg.image.source,
            "model": model_json(seg.model),
        }
        if attrs:
            meta.update(attrs)
        group.attrs.update(meta)
        group.attrs[COMPLETE_ATTR] = True  # last: the store is complete from here on
        trash = None
        if os.path.exists(path):
            trash = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:12]}")
            os.rename(path, trash)
        os.rename(tmp, path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def open_segmentation(path) -> dict:
    """Open a store written by :func:`write_zarr` / ``daskgmm segment``.

    Returns ``{"labels": dask array, ... (the outputs written), "model": GaussianMixture,
    "attrs": dict}``. Refuses a store that lacks the completion stamp (an interrupted write).
    """
    import zarr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No segmentation at {path!r}.")
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    if not attrs.get(COMPLETE_ATTR):
        raise ValueError(
            f"{path!r} is not a complete daskgmm segmentation (no '{COMPLETE_ATTR}' stamp): its "
            "write was interrupted or it was not written by daskgmm. Run the segmentation again."
        )
    out: dict[str, Any] = {name: da.from_zarr(group[name]) for name in attrs.get("outputs", ["labels"])}
    out["model"] = model_from_json(attrs["model"])
    out["attrs"] = attrs
    return out
