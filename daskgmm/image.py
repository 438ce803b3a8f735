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
writer, :func:`daskgmm._zarr_output.write_zarr`: the attribute ``daskgmm_complete`` stamped
last (after a rename into place on local disk; on an object store after every array under the
final prefix); :func:`open_segmentation` refuses a store without that stamp. Images and outputs
may be local paths or URLs (``s3://...``, with ``storage_options``). Zarr chunks are the image's
spatial chunks.

Geography: outputs of an xarray image (a rioxarray ``(band, y, x)`` raster, whose ``band``
dimension ``feature_axis="auto"`` picks) keep its spatial coordinates, dims, attributes (less
those of the band values) and CRS (``spatial_ref``, named by ``grid_mapping``), lazily and in the
Zarr store, which ``xarray.open_zarr`` and rioxarray read back georeferenced (:mod:`daskgmm._geo`).
"""

from __future__ import annotations

import logging
import math
import os

import dask
import dask.array as da
import numpy as np

from daskgmm import _geo, _storage
from daskgmm._input import Image, as_image, compute_dtype
from daskgmm._kernels import valid_pixels_block
from daskgmm._zarr_output import COMPLETE_ATTR as COMPLETE_ATTR  # re-exported
from daskgmm.segmentation import (  # noqa: F401  (re-exported: daskgmm.image is the documented home)
    ORDER_RULE,
    OUTPUTS,
    Segmentation,
    check_model,
    model_params,
    nodata_rule,
    open_segmentation,
    write_zarr,
)

logger = logging.getLogger("daskgmm")


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


def _feature_axis(image, feature_axis):
    """``feature_axis``, with ``"auto"`` resolved: a DataArray's ``band`` dimension, else -1."""
    if not (isinstance(feature_axis, str) and feature_axis == "auto"):
        return feature_axis
    dims = getattr(image, "dims", None)  # an xarray DataArray's dimension names
    return "band" if isinstance(dims, tuple) and "band" in dims else -1


def _as_image(image, feature_axis) -> Image:
    """:func:`as_image`, plus GeoTIFF paths (``.tif``/``.tiff``, through rioxarray: ``daskgmm[geo]``)
    and ``feature_axis="auto"``."""
    if isinstance(image, Image):
        return image
    source = None
    if isinstance(image, (str, os.PathLike)) and _geo.is_geotiff(image):
        source = os.path.abspath(os.fspath(image))
        image = _geo.open_geotiff(source)
    img = as_image(image, _feature_axis(image, feature_axis))
    if source is not None:
        img.source = source  # an output at the input's path is refused
    return img


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

    Parameters
    ----------
    img : Image
    nodata : scalar, optional
        Pixels equal to it in any band are left out (NaN pixels always are).
    sample : float in (0, 1), optional
        Keep each valid pixel with this probability; None keeps them all.
    seed : int, default=0
        Seeds the sample (with the block index): the same pixels on every run.

    Returns
    -------
    dask.array.Array of shape (n_pixels, n_bands)
        float32 for a float32 image, float64 otherwise; ``n_pixels`` may be NaN (unknown).
    """
    data = img.data
    bands = img.n_bands
    dtype = compute_dtype(data.dtype)
    blocks = data.to_delayed(optimize_graph=False).ravel()
    needs_filter = sample is not None or nodata is not None or data.dtype.kind == "f"
    token = dask.base.tokenize(data.name, nodata, sample, seed)
    if not needs_filter:
        sizes = [
            int(np.prod([c[i] for c, i in zip(data.chunks[:-1], idx)]))
            for idx in np.ndindex(data.numblocks[:-1])
        ]
        parts = [
            da.from_delayed(
                dask.delayed(valid_pixels_block, pure=True)(
                    b, None, None, 0, i, dtype, dask_key_name=f"gmm-pixels-{token}-{i}"
                ),
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
    if hasattr(model, "_permute_extra"):  # BayesianGaussianMixture's posterior arrays
        model._permute_extra(order)
    model.weights_ = model.weights_[order]
    model.means_ = model.means_[order]
    if model.covariance_type != "tied":
        model.covariances_ = model.covariances_[order]
        model.precisions_ = model.precisions_[order]
        model.precisions_cholesky_ = model.precisions_cholesky_[order]


def sort_components(model) -> np.ndarray:
    """Sort ``model``'s components by the means (first band, then the next): see module docs.

    Returns the permutation applied (new label ``i`` was component ``order[i]``).

    Parameters
    ----------
    model : fitted GaussianMixture
        Modified in place: ``weights_``, ``means_`` and the covariance arrays are permuted.

    Returns
    -------
    order : ndarray of shape (n_components,)
    """
    order = np.lexsort(model.means_.T[::-1])
    _permute_components(model, order)
    return order


def fit_image(
    image,
    n_components: int,
    *,
    feature_axis: int | str | None = "auto",
    nodata=None,
    sample: float | None = None,
    random_state=None,
    model_class=None,
    **gmm_params,
):
    """Fit a :class:`~daskgmm.GaussianMixture` on the valid pixels of ``image``.

    ``model_class=daskgmm.BayesianGaussianMixture`` fits the variational mixture instead
    (``n_components`` is then an upper bound); with its default Dirichlet-process prior the
    components keep their fitted (stick-breaking) order instead of being sorted.

    Same arguments as :func:`segment`; returns the fitted model with its components in
    the documented order.

    Parameters
    ----------
    image : array-like of shape (*spatial, n_bands), or Image
    n_components : int
    feature_axis, nodata, sample, random_state, **gmm_params
        As in :func:`segment`.

    Returns
    -------
    GaussianMixture
        Fitted and sorted (:func:`sort_components`); ``n_pixels_fit_`` counts its pixels.

    Raises
    ------
    TypeError, ValueError
        A bad ``sample`` or ``random_state``; fewer pixels than ``max(2, n_components)``.
    """
    from daskgmm._gaussian_mixture import GaussianMixture
    from daskgmm._input import default_row_chunk

    img = _as_image(image, feature_axis)
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
    cls = GaussianMixture if model_class is None else model_class
    model = cls(n_components=n_components, random_state=model_seed, **gmm_params)
    model.fit(pixels)
    if getattr(model, "weight_concentration_prior_type", None) != "dirichlet_process":
        sort_components(model)  # a Dirichlet process's components are ordered sticks: kept as fitted
    model.n_pixels_fit_ = n_valid
    return model


def predict_image(
    model,
    image,
    *,
    feature_axis: int | str | None = "auto",
    nodata=None,
    storage_options: dict | None = None,
) -> Segmentation:
    """Apply a fitted model to an image (for example another tile), lazily.

    Returns a :class:`Segmentation` (``labels, model = predict_image(...)`` works too).

    Parameters
    ----------
    model : fitted GaussianMixture
    image : array-like of shape (*spatial, n_bands) (bands on ``feature_axis``)
    feature_axis, nodata, storage_options
        As in :func:`segment`.

    Returns
    -------
    Segmentation

    Raises
    ------
    sklearn.exceptions.NotFittedError, ValueError
        ``model`` is not fitted, or was fitted on another number of features than bands.
    """
    with _storage.using(storage_options):
        img = _as_image(image, feature_axis)
    check_model(model, img.n_bands)
    return Segmentation(model=model, image=img, nodata=nodata)


def segment(
    image,
    n_components: int,
    *,
    feature_axis: int | str | None = "auto",
    nodata=None,
    sample: float | None = None,
    random_state=None,
    storage_options: dict | None = None,
    **gmm_params,
) -> Segmentation:
    """Segment a multi-band image into per-pixel classes with a Gaussian mixture.

    Parameters
    ----------
    image : array-like of shape (*spatial, n_bands) (bands on ``feature_axis``)
        numpy or dask array, Zarr array or path to one, xarray DataArray, or the path of a
        GeoTIFF (``.tif``/``.tiff``, read lazily through rioxarray: ``pip install 'daskgmm[geo]'``).
    n_components : int
        Number of classes K.
    feature_axis : int, str or None, default="auto"
        Axis holding the bands (a dimension name for a DataArray, e.g. ``"band"``);
        None for a single-band image. ``"auto"``: the ``band`` dimension of a DataArray that
        has one (rioxarray's ``(band, y, x)``), else the last axis.
    nodata : scalar, optional
        Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are left out of
        the fit and labelled -1.
    sample : float in (0, 1], optional
        Fit on this seeded random fraction of the valid pixels (kept in memory for the EM
        passes), then predict every pixel. None fits on all valid pixels.
    random_state : int, RandomState or None
        Seeds the pixel sample and the model's initialisation.
    storage_options : dict, optional
        fsspec options (credentials, ``client_kwargs={"endpoint_url": ...}``) for an image given
        as a URL (``s3://bucket/image.zarr``), over what the environment provides.
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
    with _storage.using(storage_options):
        img = _as_image(image, feature_axis)
    model = fit_image(
        img, n_components, nodata=nodata, sample=sample, random_state=random_state, **gmm_params
    )
    return Segmentation(model=model, image=img, nodata=nodata)
