"""The xarray ``.gmm`` accessor: Gaussian mixtures over a named feature dimension.

Importing :mod:`daskgmm` registers it::

    import daskgmm, rioxarray
    da = rioxarray.open_rasterio("tile.tif", chunks={"x": 2048, "y": 2048})   # (band, y, x)
    model = da.gmm.fit(6, feature_dim="band", nodata=0, sample=0.01, random_state=0)
    labels = da.gmm.predict(model, feature_dim="band", nodata=0)             # (y, x), lazy

Prediction is :func:`xarray.apply_ufunc` with ``dask="parallelized"`` over the one
prediction kernel (:func:`daskgmm._kernels.predict_block`, as for :mod:`daskgmm.image`):
outputs keep every other dimension, its coordinates (``spatial_ref``, the CRS, included), chunks
and the attributes of the grid (those of the band values, ``_FillValue``, ``scale_factor``...,
are left off: :data:`daskgmm._geo.VALUE_ATTRS`). A feature
dimension split over several chunks is brought to one chunk for you (``.chunk({feature_dim: -1})``);
the other dimensions are never rechunked.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from daskgmm import _geo
from daskgmm import image as _image
from daskgmm._kernels import output_dtype, predict_output
from daskgmm._typing import Output


class GMMAccessor:  # registered by daskgmm._accessor_hook (import daskgmm)
    """``DataArray.gmm``: ``fit``, ``predict``, ``predict_proba``, ``score_samples``, ``segment``."""

    def __init__(self, obj: xr.DataArray):
        self._obj = obj

    def _prepared(self, feature_dim: str) -> xr.DataArray:
        obj = self._obj
        if feature_dim not in obj.dims:
            raise ValueError(
                f"feature_dim={feature_dim!r} is not a dimension of this DataArray (dims: {obj.dims}). "
                "Pass the name of the dimension that holds the bands/features, e.g. feature_dim='band'."
            )
        if obj.chunks is not None and len(obj.chunks[obj.get_axis_num(feature_dim)]) > 1:
            obj = obj.chunk({feature_dim: -1})
        return obj

    def fit(
        self,
        n_components: int,
        *,
        feature_dim: str = "band",
        nodata=None,
        sample: float | None = None,
        random_state=None,
        **gmm_params,
    ):
        """Fit a :class:`~daskgmm.GaussianMixture` on the valid pixels (see :func:`daskgmm.segment`).

        Returns the fitted model, components sorted by their mean along the first feature.

        Parameters
        ----------
        n_components : int
            Number of classes K.
        feature_dim : str, default="band"
            Dimension holding the bands/features (brought to one chunk if split).
        nodata : scalar, optional
            Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are nodata:
            never fitted, labelled -1 when predicted.
        sample : float in (0, 1], optional
            Fit on this seeded random fraction of the valid pixels; None fits on all.
        random_state : int, RandomState or None
            Seeds the pixel sample and the model's initialisation.
        **gmm_params
            Any other :class:`~daskgmm.GaussianMixture` parameter.

        Returns
        -------
        GaussianMixture
            Fitted, components sorted by their mean along the first feature.

        Raises
        ------
        TypeError, ValueError
            ``feature_dim`` is not a dimension, a bad ``sample`` or ``random_state``, or fewer
            valid pixels than ``max(2, n_components)``.
        """
        return _image.fit_image(
            self._prepared(feature_dim),
            n_components,
            feature_axis=feature_dim,
            nodata=nodata,
            sample=sample,
            random_state=random_state,
            **gmm_params,
        )

    def _apply(self, model, what: Output, feature_dim: str, nodata) -> xr.DataArray:
        obj = self._prepared(feature_dim)
        _image.check_model(model, obj.sizes[feature_dim])
        params = _image.model_params(model, obj.dtype)
        k = int(model.n_components)
        probabilities = what == "probabilities"
        out = xr.apply_ufunc(
            predict_output,
            obj,
            kwargs={
                "p": params,
                "name": what,
                "nodata": _image.nodata_rule(nodata),
                "compact": True,
                "input_name": "image",
            },
            input_core_dims=[[feature_dim]],
            output_core_dims=[["component"] if probabilities else []],
            dask="parallelized",
            output_dtypes=[output_dtype(what, k, params.dtype, compact=True)],
            dask_gufunc_kwargs={"output_sizes": {"component": k}} if probabilities else None,
            keep_attrs=True,
        )
        if probabilities:
            out = out.assign_coords(component=np.arange(k))
        # the grid's attributes and CRS (grid_mapping), not those of the band values (_FillValue...)
        out.attrs = _geo.output_attrs(obj.attrs, out.coords, obj.encoding)
        if what == "labels":
            out.attrs["nodata"] = -1
        return out.rename(what)

    def predict(self, model, *, feature_dim: str = "band", nodata=None) -> xr.DataArray:
        """Component per pixel (int16, -1 for nodata), without the feature dimension.

        Parameters
        ----------
        model : fitted GaussianMixture
            Fitted on as many features as ``feature_dim`` has entries.
        feature_dim : str, default="band"
            Dimension holding the bands/features; it is absent from the output.
        nodata : scalar, optional
            Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are nodata.

        Returns
        -------
        xarray.DataArray
            Named ``labels``, int16 (int32 for K > 32767), -1 for nodata, lazy over dask
            input; the other dimensions, coordinates and attributes are kept.

        Raises
        ------
        ValueError
            ``feature_dim`` is not a dimension, or the model has another number of features.
        sklearn.exceptions.NotFittedError
            ``model`` is not fitted.
        """
        return self._apply(model, "labels", feature_dim, nodata)

    def predict_proba(self, model, *, feature_dim: str = "band", nodata=None) -> xr.DataArray:
        """Posterior probabilities (float32) with a new last dimension ``component``.

        Parameters
        ----------
        model : fitted GaussianMixture
            Fitted on as many features as ``feature_dim`` has entries.
        feature_dim : str, default="band"
            Dimension holding the bands/features; it is absent from the output.
        nodata : scalar, optional
            Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are nodata.

        Returns
        -------
        xarray.DataArray
            Named ``probabilities``, float32, the other dimensions then ``component``
            (size K, coordinates 0..K-1); NaN for nodata.

        Raises
        ------
        ValueError
            ``feature_dim`` is not a dimension, or the model has another number of features.
        sklearn.exceptions.NotFittedError
            ``model`` is not fitted.
        """
        return self._apply(model, "probabilities", feature_dim, nodata)

    def score_samples(self, model, *, feature_dim: str = "band", nodata=None) -> xr.DataArray:
        """Log of the mixture density per pixel (float32, NaN for nodata).

        Parameters
        ----------
        model : fitted GaussianMixture
            Fitted on as many features as ``feature_dim`` has entries.
        feature_dim : str, default="band"
            Dimension holding the bands/features; it is absent from the output.
        nodata : scalar, optional
            Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are nodata.

        Returns
        -------
        xarray.DataArray
            Named ``log_density``, float32, the other dimensions; low values are anomalies.

        Raises
        ------
        ValueError
            ``feature_dim`` is not a dimension, or the model has another number of features.
        sklearn.exceptions.NotFittedError
            ``model`` is not fitted.
        """
        return self._apply(model, "log_density", feature_dim, nodata)

    def segment(
        self,
        n_components: int,
        *,
        feature_dim: str = "band",
        nodata=None,
        sample: float | None = None,
        random_state=None,
        **gmm_params,
    ):
        """Fit and label in one call: :func:`daskgmm.segment` with ``feature_axis=feature_dim``.

        Returns a :class:`~daskgmm.image.Segmentation` whose outputs are DataArrays
        (``labels, model = da.gmm.segment(...)``; ``.to_zarr(path)`` writes them).

        Parameters
        ----------
        n_components : int
            Number of classes K.
        feature_dim : str, default="band"
            Dimension holding the bands/features (brought to one chunk if split).
        nodata : scalar, optional
            Pixels equal to ``nodata`` in any band, and pixels with a NaN band, are nodata:
            never fitted, labelled -1 when predicted.
        sample : float in (0, 1], optional
            Fit on this seeded random fraction of the valid pixels; None fits on all.
        random_state : int, RandomState or None
            Seeds the pixel sample and the model's initialisation.
        **gmm_params
            Any other :class:`~daskgmm.GaussianMixture` parameter.

        Returns
        -------
        Segmentation
            Lazy DataArray outputs (``labels``, ``probabilities``, ``log_density``,
            ``confidence``) and the fitted ``model``.

        Raises
        ------
        TypeError, ValueError
            ``feature_dim`` is not a dimension, a bad ``sample`` or ``random_state``, or fewer
            valid pixels than ``max(2, n_components)``.
        """
        return _image.segment(
            self._prepared(feature_dim),
            n_components,
            feature_axis=feature_dim,
            nodata=nodata,
            sample=sample,
            random_state=random_state,
            **gmm_params,
        )
