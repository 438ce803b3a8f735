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

Writing (:meth:`Segmentation.to_zarr`, ``daskgmm segment``) goes through the one safe Zarr
writer, :func:`daskgmm.io.write_zarr`: a hidden temporary group, the attribute
``daskgmm_complete`` stamped last, a rename into place; :func:`open_segmentation` refuses a
store without that stamp. Zarr chunks are the image's spatial chunks.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import operator
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskgmm import io
from daskgmm._gaussian import EStepParams
from daskgmm._graph import shared
from daskgmm._input import Image, as_image, compute_dtype
from daskgmm._kernels import predict_block, predict_output_spec, valid_pixels_block
from daskgmm._typing import OUTPUTS, Output
from daskgmm.io import COMPLETE_ATTR as COMPLETE_ATTR  # re-exported

logger = logging.getLogger("daskgmm")

ORDER_RULE = (
    "components sorted by their mean in the first band, ties broken by the next bands "
    "(numpy.lexsort of the means); label -1 marks nodata"
)


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
    dtype = compute_dtype(data.dtype)
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
def model_params(model, image_dtype) -> EStepParams:
    """The prediction kernel's parameters of a fitted model for pixels of ``image_dtype``."""
    dtype = compute_dtype(image_dtype)
    return EStepParams(model.weights_, model.means_, model.precisions_cholesky_, model.covariance_type, dtype)


def nodata_rule(nodata):
    """The prediction kernel's ``nodata`` for images: NaN pixels are always nodata."""
    return math.nan if nodata is None else nodata


def check_model(model, n_bands: int) -> None:
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

    def outputs(self, names: Sequence[Output] = ("labels",), wrap: bool = True) -> dict:
        """The requested outputs as a dict ``{name: lazy array}`` sharing one task per block."""
        names = tuple(names)
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise ValueError(f"Unknown output(s) {unknown}; choose among {list(OUTPUTS)}.")
        data = self.image.data
        k = self.n_components
        params = model_params(self.model, data.dtype)
        token = dask.base.tokenize(
            data.name, self.model.weights_, self.model.means_, self.model.precisions_cholesky_, names, self.nodata
        )
        p = shared(params, name=f"gmm-segment-params-{token}")
        spatial = data.chunks[:-1]
        nsp = len(spatial)
        core = da.map_blocks(
            predict_block,
            data,
            p,
            names,
            nodata_rule(self.nodata),
            compact=True,
            input_name="image",
            drop_axis=nsp,
            chunks=spatial,
            dtype=object,
            meta=np.empty((0,) * nsp, dtype=object),
            name=f"gmm-segment-{token}",
        )
        out = {}
        for name in names:
            chunks, dtype = predict_output_spec(spatial, name, k, params.dtype, compact=True)
            arr = da.map_blocks(
                operator.getitem,
                core,
                name,
                chunks=chunks,
                dtype=dtype,
                new_axis=[nsp] if name == "probabilities" else None,
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

        See :func:`write_zarr` and :func:`daskgmm.io.write_zarr`. Returns the path written.
        """
        names = ["labels"]
        names += [n for n, on in (("probabilities", probabilities), ("log_density", log_density), ("confidence", confidence)) if on]
        return write_zarr(self, path, names, overwrite=overwrite, attrs=attrs)


def predict_image(model, image, *, feature_axis: int | str | None = -1, nodata=None) -> Segmentation:
    """Apply a fitted model to an image (for example another tile), lazily.

    Returns a :class:`Segmentation` (``labels, model = predict_image(...)`` works too).
    """
    img = image if isinstance(image, Image) else as_image(image, feature_axis)
    check_model(model, img.n_bands)
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


def write_zarr(seg: Segmentation, path, names: Sequence[Output] = ("labels",), *, overwrite: bool = False,
               attrs: dict | None = None) -> str:
    """Write the outputs ``names`` of ``seg`` to a new Zarr group at ``path``, safely.

    The store holds the outputs (chunked like the image's spatial chunks; probabilities add
    one chunk holding all K components), the model as JSON, the nodata rule and the component
    order; see :func:`daskgmm.io.write_zarr` for how a failure never leaves a store that
    looks complete. Returns the path written.
    """
    meta = {
        "n_components": seg.n_components,
        "nodata": seg.nodata,
        "label_nodata": -1,
        "component_order": ORDER_RULE,
        "spatial_dims": list(seg.image.spatial_dims),
    }
    meta.update(attrs or {})
    dims = {name: seg.image.spatial_dims + (("component",) if name == "probabilities" else ()) for name in names}
    return io.write_zarr(
        path,
        seg.outputs(names, wrap=False),
        dims=dims,
        model=seg.model,
        attrs=meta,
        source=seg.image.source,
        overwrite=overwrite,
    )


def open_segmentation(path) -> dict:
    """Open a store written by :meth:`Segmentation.to_zarr` / ``daskgmm segment``.

    Returns ``{"labels": dask array, ... (the outputs written), "model": GaussianMixture,
    "attrs": dict}``. Refuses a store that lacks the completion stamp (an interrupted write).
    """
    from daskgmm._gaussian_mixture import GaussianMixture

    return io.open_segmentation(path, GaussianMixture)


# --------------------------------------------------------------------------
# a generated raster with known classes (tests, the scale run)
# --------------------------------------------------------------------------
def raster_classes(n_classes: int, n_bands: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class means and noise scales of :func:`make_raster` (uint16 band values)."""
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


def class_map_block(y0: int, x0: int, ny: int, nx: int, n_classes: int, seed: int, cell: int) -> np.ndarray:
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


def raster_block(block_info=None, *, n_classes, seed, cell, means, scales, nodata):
    info = block_info[None]
    (y0, y1), (x0, x1), _ = info["array-location"]
    ny, nx = y1 - y0, x1 - x0
    classes = class_map_block(y0, x0, ny, nx, n_classes, seed, cell)
    rng = np.random.default_rng([seed, y0, x0])
    values = means[classes] + rng.standard_normal((ny, nx, means.shape[1]), dtype=np.float32) * scales[classes]
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

    Classes form a Voronoi mosaic of cells of about ``cell`` pixels; each pixel is its
    class mean plus Gaussian noise (:func:`raster_classes`). With ``nodata``, horizontal
    stripes are set to ``nodata`` in every band. Runs as a lazy dask computation (on the
    current scheduler), so memory stays bounded.

    Returns ``{"means", "scales", "path"}``.
    """
    import zarr

    means, scales = raster_classes(n_classes, n_bands, seed)
    h, w = shape
    arr = da.map_blocks(
        raster_block,
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
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True.")
    z = zarr.create_array(
        path,
        shape=(h, w, n_bands),
        chunks=(chunks[0], chunks[1], n_bands),
        dtype=np.uint16,
        overwrite=overwrite,
        dimension_names=["y", "x", "band"],
    )
    da.store(arr, z, lock=False)
    z.attrs.update({"n_classes": n_classes, "seed": seed, "nodata": nodata})
    return {"means": means, "scales": scales, "path": path}


def true_classes(shape, n_classes: int, seed: int = 0, cell: int = 64) -> np.ndarray:
    """The true class map of a small :func:`make_raster` raster (in memory)."""
    return class_map_block(0, 0, shape[0], shape[1], n_classes, seed, cell)


# --------------------------------------------------------------------------
# command line: daskgmm segment
# --------------------------------------------------------------------------
def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _feature_axis(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        return text  # a dimension name (Zarr arrays with dimension names)


def add_parser(subparsers) -> None:
    """Register ``daskgmm segment`` on the CLI's subparsers."""
    from daskgmm.cli import add_cluster_arguments

    p = subparsers.add_parser(
        "segment",
        help="segment a multi-band Zarr raster into per-pixel classes, written to a Zarr group",
        description="Fit a Gaussian mixture on the valid pixels of IMAGE (or a --sample of them), "
        "label every pixel, and write OUT, a Zarr group with 'labels' (and the asked-for outputs), "
        "chunked like IMAGE. " + ORDER_RULE + ".",
    )
    p.add_argument("image", help="Zarr array (or group with --array) of shape (*spatial, bands)")
    p.add_argument("out", help="output Zarr group (refused if it exists, unless --overwrite)")
    p.add_argument("--n-components", "-k", type=int, required=True)
    p.add_argument("--array", help="array name inside a Zarr group")
    p.add_argument("--feature-axis", type=_feature_axis, default=-1, help="axis holding the bands: an integer, a Zarr dimension name, or 'none' for one band (default -1)")
    p.add_argument("--nodata", type=_number, default=None, help="pixels equal to this in any band are left out and labelled -1")
    p.add_argument("--sample", type=float, default=None, help="fit on this fraction of the valid pixels (e.g. 0.01)")
    p.add_argument("--seed", type=int, default=None, help="seed of the pixel sample and the initialisation")
    p.add_argument("--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"])
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--save-model", metavar="PATH", help="also write the fitted model here (.npz, no pickle)")
    p.add_argument("--probabilities", action="store_true", help="also write per-pixel probabilities (float32, ..., K)")
    p.add_argument("--log-density", action="store_true", help="also write the per-pixel log-density (an anomaly map)")
    p.add_argument("--confidence", action="store_true", help="also write the largest probability per pixel")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once the new one is complete)")
    p.add_argument("--json", action="store_true", help="print a JSON summary (timings, pixels per second)")
    add_cluster_arguments(p)
    p.set_defaults(func=run)

    b = subparsers.add_parser(
        "segment-bench",
        help="scale run: generate a uint16 raster with known classes, segment it on a memory-limited "
        "local cluster (fit and predict+write timed apart, memory watched), check, delete",
    )
    b.add_argument("workdir", help="directory for the generated raster and the output (deleted afterwards)")
    b.add_argument("--height", type=int, default=20_000)
    b.add_argument("--width", type=int, default=20_000)
    b.add_argument("--bands", type=int, default=4)
    b.add_argument("--classes", type=int, default=5)
    b.add_argument("--chunk", type=int, default=2000, help="spatial chunk side of the generated Zarr raster")
    b.add_argument("--sample", type=float, default=0.01)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--memory-limit", default="3GiB", help="per worker")
    b.add_argument("--keep", action="store_true", help="keep the raster and the output")
    b.set_defaults(func=run_bench)


def _open_image(path: str, array: str | None):
    from daskgmm._input import open_zarr_array

    try:
        return open_zarr_array(path, array)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e


def run(args) -> int:
    """``daskgmm segment``: fit, then write OUT safely; prints a summary."""
    from daskgmm.cli import connect

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not args.overwrite:
        raise SystemExit(f"error: {args.out!r} already exists; pass --overwrite to replace it")
    if args.sample is not None and not 0.0 < args.sample <= 1.0:
        raise SystemExit(f"error: --sample {args.sample} must be a fraction in (0, 1], e.g. 0.01")
    znode, source = _open_image(args.image, args.array)
    if os.path.abspath(source).rstrip(os.sep) == out.rstrip(os.sep) or os.path.abspath(args.image) == out:
        raise SystemExit("error: OUT is the input image; choose another output path")
    try:
        img = as_image(znode, args.feature_axis)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from e
    img.source = source
    n_pixels = int(np.prod(img.spatial_shape))
    with connect(args) as client:
        if client.dashboard_link:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            model = fit_image(
                img,
                args.n_components,
                nodata=args.nodata,
                sample=args.sample,
                random_state=args.seed,
                covariance_type=args.covariance_type,
                max_iter=args.max_iter,
                tol=args.tol,
            )
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e
        fit_s = time.perf_counter() - t0
        seg = Segmentation(model=model, image=img, nodata=args.nodata)
        t1 = time.perf_counter()
        seg.to_zarr(
            out,
            probabilities=args.probabilities,
            log_density=args.log_density,
            confidence=args.confidence,
            overwrite=args.overwrite,
            attrs={"command": "daskgmm segment", "sample": args.sample, "seed": args.seed},
        )
        write_s = time.perf_counter() - t1
    if args.save_model:
        model.save(args.save_model)
    summary = {
        "n_pixels": n_pixels,
        "n_pixels_fit": int(model.n_pixels_fit_),
        "n_bands": img.n_bands,
        "n_components": int(model.n_components),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "fit_seconds": fit_s,
        "predict_write_seconds": write_s,
        "fit_pixels_per_second": model.n_pixels_fit_ / fit_s if fit_s > 0 else None,
        "predict_pixels_per_second": n_pixels / write_s if write_s > 0 else None,
        "out": out,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"fitted {model.n_components} components on {model.n_pixels_fit_:,} pixels in {fit_s:.1f}s "
            f"(converged: {model.converged_}, {model.n_iter_} iterations); labelled {n_pixels:,} pixels "
            f"and wrote {out} in {write_s:.1f}s ({n_pixels / max(write_s, 1e-9):,.0f} pixels/s)"
        )
    return 0


def scale_run(
    workdir: str,
    *,
    height: int = 20_000,
    width: int = 20_000,
    bands: int = 4,
    classes: int = 5,
    chunk: int = 2000,
    sample: float = 0.01,
    nodata: int | None = 0,
    workers: int = 2,
    memory_limit: str = "3GiB",
    seed: int = 0,
    keep: bool = False,
) -> dict:
    """Generate a raster with known classes in ``workdir``, segment it on a local cluster with
    memory limits, time the fit and the predict+write separately, watch memory, check the labels
    against the true classes on a few windows, and delete the stores (unless ``keep``)."""
    from distributed import Client, LocalCluster
    from sklearn.metrics import adjusted_rand_score

    from daskgmm._ooc_bench import MemoryWatch

    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "raster.zarr")
    out = os.path.join(workdir, "classes.zarr")
    n_pixels = height * width
    report: dict[str, Any] = {
        "shape": [height, width, bands],
        "dtype": "uint16",
        "gigabytes": n_pixels * bands * 2 / 1e9,
        "chunks": [chunk, chunk, bands],
        "classes": classes,
        "sample": sample,
        "workers": workers,
        "threads_per_worker": 1,
        "memory_limit": memory_limit,
    }
    try:
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster, Client(cluster) as client:
            if not os.path.exists(src):
                t0 = time.perf_counter()
                make_raster(src, (height, width), bands, classes, (chunk, chunk), seed, nodata=nodata)
                report["generate_seconds"] = time.perf_counter() - t0
            with MemoryWatch(client) as watch:
                img = as_image(src)
                t0 = time.perf_counter()
                model = fit_image(img, classes, nodata=nodata, sample=sample, random_state=seed)
                fit_s = time.perf_counter() - t0
                seg = Segmentation(model=model, image=img, nodata=nodata)
                t1 = time.perf_counter()
                seg.to_zarr(out, overwrite=True)
                write_s = time.perf_counter() - t1
            report.update(
                n_pixels=n_pixels,
                n_pixels_fit=int(model.n_pixels_fit_),
                n_iter=int(model.n_iter_),
                converged=bool(model.converged_),
                fit_seconds=fit_s,
                fit_image_pixels_per_second=n_pixels / fit_s,
                predict_write_seconds=write_s,
                predict_write_pixels_per_second=n_pixels / write_s,
                total_pixels_per_second=n_pixels / (fit_s + write_s),
                peak_worker_rss_mib=watch.peak_worker / 2**20,
                peak_driver_rss_mib=watch.peak_driver / 2**20,
                worker_paused=watch.paused,
                worker_restarted=watch.restarted,
            )
        # the labels against the true classes, on a few windows
        import zarr

        labels = zarr.open_group(out, mode="r")["labels"]
        aris = []
        rng = np.random.default_rng(seed)
        for _ in range(4):
            y0 = int(rng.integers(0, max(1, height - 500)))
            x0 = int(rng.integers(0, max(1, width - 500)))
            lab = labels[y0 : y0 + 500, x0 : x0 + 500]
            truth = class_map_block(y0, x0, lab.shape[0], lab.shape[1], classes, seed, 64)
            ok = lab >= 0
            aris.append(float(adjusted_rand_score(truth[ok], lab[ok])))
        report["adjusted_rand_index_windows"] = aris
    finally:
        if not keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    return report


def run_bench(args) -> int:
    """``daskgmm segment-bench``: :func:`scale_run`, printed as JSON."""
    report = scale_run(
        args.workdir, height=args.height, width=args.width, bands=args.bands, classes=args.classes,
        chunk=args.chunk, sample=args.sample, workers=args.workers, memory_limit=args.memory_limit,
        keep=args.keep,
    )
    print(json.dumps(report, indent=1))
    return 0
