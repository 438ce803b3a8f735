"""Per-pixel outputs of a fitted mixture over an image, and their safe Zarr store.

:class:`Segmentation` (what :func:`daskgmm.segment` and :func:`daskgmm.image.predict_image`
return) builds the lazy outputs ``labels``, ``probabilities``, ``log_density`` and
``confidence`` with the one prediction kernel, one task per spatial block shared by every
output; :func:`write_zarr` writes them through the one safe Zarr writer
(:func:`daskgmm._zarr_output.write_zarr`) and :func:`open_segmentation` reads them back, refusing a
store without the completion stamp. See :mod:`daskgmm.image` for the rules (nodata,
component order, dtypes). Outputs of an xarray image carry its coordinates, attributes and CRS,
in memory and in the store (xarray's Zarr layout, :func:`daskgmm._geo.zarr_layout`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskgmm import _geo, _storage, _zarr_output
from daskgmm._gaussian import EStepParams
from daskgmm._graph import shared
from daskgmm._input import Image, compute_dtype
from daskgmm._kernels import predict_block, predict_output_spec
from daskgmm._placement import kernel_setting
from daskgmm._typing import OUTPUTS, Output

ORDER_RULE = (
    "components sorted by their mean in the first band, ties broken by the next bands "
    "(numpy.lexsort of the means); label -1 marks nodata"
)


# --------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------
def model_params(model, image_dtype) -> EStepParams:
    """The prediction kernel's parameters of a fitted model for pixels of ``image_dtype``.

    Parameters
    ----------
    model : fitted GaussianMixture
    image_dtype : numpy dtype
        float32 images compute in float32, every other dtype in float64.

    Returns
    -------
    EStepParams
    """
    dtype = compute_dtype(image_dtype)
    log_weights = model._estep_log_weights() if hasattr(model, "_estep_log_weights") else None
    p = EStepParams(
        model.weights_,
        model.means_,
        model.precisions_cholesky_,
        model.covariance_type,
        dtype,
        log_weights=log_weights,  # a BayesianGaussianMixture's variational terms
    )
    p.kernel = kernel_setting()  # daskgmm.kernel, read here for every worker
    return p


def nodata_rule(nodata):
    """The prediction kernel's ``nodata`` for images: NaN pixels are always nodata.

    Parameters
    ----------
    nodata : scalar or None

    Returns
    -------
    scalar
        ``nodata``, or NaN when it is None.
    """
    return math.nan if nodata is None else nodata


def check_model(model, n_bands: int) -> None:
    """Check that ``model`` is fitted on ``n_bands`` features.

    Parameters
    ----------
    model : GaussianMixture
    n_bands : int

    Returns
    -------
    None

    Raises
    ------
    sklearn.exceptions.NotFittedError, ValueError
        ``model`` is not fitted, or was fitted on another number of features.
    """
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
        """The requested outputs as a dict ``{name: lazy array}`` sharing one task per block.

        Parameters
        ----------
        names : sequence of {"labels", "probabilities", "log_density", "confidence"}
            Default ``("labels",)``; another name raises ValueError.
        wrap : bool, default=True
            Wrap each output in an xarray DataArray when the image is one.

        Returns
        -------
        dict of str to dask.array.Array or xarray.DataArray
            Each of shape (*spatial,), or (*spatial, n_components) for ``probabilities``.
        """
        names = tuple(names)
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise ValueError(f"Unknown output(s) {unknown}; choose among {list(OUTPUTS)}.")
        data = self.image.data
        k = self.n_components
        params = model_params(self.model, data.dtype)
        token = dask.base.tokenize(
            data.name,
            self.model.weights_,
            self.model.means_,
            self.model.precisions_cholesky_,
            names,
            self.nodata,
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
        attrs = _geo.output_attrs(self.image.attrs, self.image.coords)
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
        storage_options: dict | None = None,
    ) -> str:
        """Write ``labels`` (and the asked-for outputs) to a new Zarr group at ``path``, safely.

        See :func:`write_zarr` and :func:`daskgmm._zarr_output.write_zarr`. Returns the path written.

        Parameters
        ----------
        path : str or path-like
        probabilities, log_density, confidence : bool, default=False
            Also write this output.
        overwrite : bool, default=False
            Replace an existing ``path`` once the new store is complete (else FileExistsError).
        attrs : dict, optional
            More group attributes.
        storage_options : dict, optional
            fsspec options for a URL ``path`` (e.g. ``{"anon": False}``), over the environment's.

        Returns
        -------
        str
            The absolute path written.
        """
        names = ["labels"]
        names += [
            n
            for n, on in (
                ("probabilities", probabilities),
                ("log_density", log_density),
                ("confidence", confidence),
            )
            if on
        ]
        return write_zarr(
            self, path, names, overwrite=overwrite, attrs=attrs, storage_options=storage_options
        )


def write_zarr(
    seg: Segmentation,
    path,
    names: Sequence[Output] = ("labels",),
    *,
    overwrite: bool = False,
    attrs: dict | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write the outputs ``names`` of ``seg`` to a new Zarr group at ``path``, safely.

    The store holds the outputs (chunked like the image's spatial chunks; probabilities add
    one chunk holding all K components), the model as JSON, the nodata rule and the component
    order, and for an xarray image its coordinates, attributes and CRS in xarray's layout; see
    :func:`daskgmm._zarr_output.write_zarr` for how a failure never leaves a store that
    looks complete. Returns the path written.

    Parameters
    ----------
    seg : Segmentation
    path : str or path-like
    names : sequence of output names, default=("labels",)
    overwrite : bool, default=False
    attrs : dict, optional
        More group attributes (they override the ones written here).
    storage_options : dict, optional
        fsspec options for a URL ``path``.

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    FileExistsError, ValueError
        ``path`` exists (without ``overwrite``), or is the input image itself.
    """
    meta = {
        "n_components": seg.n_components,
        "nodata": seg.nodata,
        "label_nodata": -1,
        "component_order": ORDER_RULE,
        "spatial_dims": list(seg.image.spatial_dims),
    }
    meta.update(attrs or {})
    dims = {
        name: seg.image.spatial_dims + (("component",) if name == "probabilities" else ()) for name in names
    }
    coords, array_attrs = _geo.zarr_layout(
        {**seg.image.coords, "component": _component_coord(seg.n_components)},
        seg.image.attrs,
        dims,
        extra={"labels": {"nodata": -1}},
    )
    with _storage.using(storage_options):
        return _zarr_output.write_zarr(
            path,
            seg.outputs(names, wrap=False),
            dims=dims,
            model=seg.model,
            attrs=meta,
            source=seg.image.source,
            overwrite=overwrite,
            coords=coords,
            array_attrs=array_attrs,
        )


def _component_coord(k: int):
    import xarray as xr

    return xr.Variable(("component",), np.arange(k))


def open_segmentation(path, *, as_xarray: bool = False, storage_options: dict | None = None):
    """Open a store written by :meth:`Segmentation.to_zarr` / ``daskgmm segment``.

    Returns ``{"labels": dask array, ... (the outputs written), "model": GaussianMixture,
    "attrs": dict}``, or with ``as_xarray=True`` an :class:`xarray.Dataset` of the outputs with
    the image's coordinates (``x``, ``y``, ``spatial_ref``...) and the group attributes (the
    model as JSON under ``"model"``). Refuses a store that lacks the completion stamp (an
    interrupted write). ``xarray.open_zarr(path)`` opens the same store directly.

    Parameters
    ----------
    path : str or path-like
        A local path or a URL (``s3://bucket/seg.zarr``).
    as_xarray : bool, default=False
        Return an xarray Dataset (lazy, dask-backed) instead of the dict.
    storage_options : dict, optional
        fsspec options for a URL, over the environment's.

    Returns
    -------
    dict or xarray.Dataset
        The arrays written (dask, shapes as written), ``"model"`` and ``"attrs"``; or the Dataset.

    Raises
    ------
    FileNotFoundError, ValueError
        Nothing at ``path``, or no completion stamp.
    """
    from daskgmm._gaussian_mixture import model_class

    with _storage.using(storage_options):
        out = _zarr_output.open_segmentation(path, model_class)
        if not as_xarray:
            return out
        import xarray as xr

        where = _storage.normalise(path)
        options = _storage.current_options() if _storage.is_url(where) else None
        return xr.open_zarr(where, chunks={}, storage_options=options)[
            out["attrs"].get("outputs", ["labels"])
        ]
