"""Geography of image outputs: the coordinates, attributes and CRS of an xarray input, as Zarr
arrays that xarray and rioxarray read back; GeoTIFF input through rioxarray (``daskgmm[geo]``).

Outputs of an xarray image keep its non-band coordinates (``x``, ``y``, 2-D ``lat``/``lon``,
``time``... and the scalar grid-mapping coordinate ``spatial_ref`` as rioxarray writes it, with
its ``crs_wkt``/``GeoTransform`` attributes) and its attributes, less those that describe the
band *values* and would be wrong on labels (:data:`VALUE_ATTRS`: ``_FillValue``, ``scale_factor``,
``units``...). Each output names its grid mapping in ``grid_mapping``.

In a Zarr group the layout is xarray's for Zarr v3 (what ``xarray.Dataset.to_zarr`` writes):
every coordinate is an array of the group with ``dimension_names``; an output lists its non-index
coordinates in its ``coordinates`` attribute; values are CF-encoded by xarray's own encoder
(datetimes as numbers with ``units``). :func:`write_coords` writes them (called by
:func:`daskgmm._zarr_output.write_zarr`), :func:`consolidate` writes consolidated metadata last, so
``xarray.open_zarr`` opens the store in one read and without a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: input attributes that describe the band values (their encoding, scale, units, names), not
#: the grid: left off the outputs (a ``_FillValue`` of 0 would mask label 0 when read back)
VALUE_ATTRS = frozenset(
    {
        "_FillValue",
        "missing_value",
        "fill_value",
        "nodata",
        "scale_factor",
        "add_offset",
        "_Unsigned",
        "valid_range",
        "valid_min",
        "valid_max",
        "units",
        "long_name",
        "standard_name",
        "description",
        "dtype",
        "coordinates",
        "grid_mapping",
    }
)

GEO_EXTRA = "pip install 'daskgmm[geo]'"


def missing_geo_message(what: str = "Reading a GeoTIFF") -> str:
    """What to install when rioxarray is missing."""
    return f"{what} needs rioxarray (and rasterio), which are not installed: {GEO_EXTRA}."


def is_geotiff(path) -> bool:
    """Whether ``path`` names a GeoTIFF (``.tif``/``.tiff``, any case)."""
    return str(path).lower().endswith((".tif", ".tiff"))


def open_geotiff(path, chunks: Any = None):
    """A GeoTIFF as a lazy rioxarray DataArray ``(band, y, x)`` with ``x``/``y`` and ``spatial_ref``.

    ``chunks`` defaults to the whole band axis in one chunk and dask's automatic spatial chunks.
    Raises :class:`ImportError` naming ``daskgmm[geo]`` when rioxarray is missing.
    """
    try:
        import rioxarray
    except ImportError as e:
        raise ImportError(missing_geo_message()) from e
    if chunks is None:
        chunks = {"band": -1, "y": "auto", "x": "auto"}
    return rioxarray.open_rasterio(path, chunks=chunks)


def grid_mapping(coords: Mapping[str, Any], attrs: Mapping[str, Any], encoding=None) -> str | None:
    """The name of the grid-mapping (CRS) coordinate among ``coords``: the input's
    ``grid_mapping`` (attribute or encoding) if it names one, else the first scalar coordinate
    with a ``crs_wkt``, ``spatial_ref`` or ``grid_mapping_name`` attribute (rioxarray's)."""
    for named in (attrs.get("grid_mapping"), (encoding or {}).get("grid_mapping")):
        if isinstance(named, str) and named in coords:
            return named
    for name, c in coords.items():
        if c.ndim == 0 and {"crs_wkt", "spatial_ref", "grid_mapping_name"} & set(c.attrs):
            return str(name)
    return None


def output_attrs(attrs: Mapping[str, Any], coords: Mapping[str, Any], encoding=None) -> dict:
    """The attributes of an output of an image with ``attrs`` and ``coords``: the image's, less
    :data:`VALUE_ATTRS`, plus ``grid_mapping`` when the image has a CRS coordinate."""
    out = {k: v for k, v in attrs.items() if k not in VALUE_ATTRS}
    gm = grid_mapping(coords, attrs, encoding)
    if gm is not None:
        out["grid_mapping"] = gm
    return out


def spatial_coords(obj, spatial_dims: Sequence[str]) -> dict:
    """The coordinates of DataArray ``obj`` over its spatial dims only (scalars included), as
    :func:`daskgmm._input.as_image` keeps them."""
    return {k: c for k, c in obj.coords.items() if set(c.dims) <= set(spatial_dims)}


def attach_group_coords(img):
    """Give ``img`` (a :class:`daskgmm._input.Image` of the Zarr array at ``img.source``) the
    coordinates and attributes xarray reads for that array, when its parent group is a dataset
    xarray wrote (``x``, ``y``, ``spatial_ref``...); else leave it as it is.

    Returns the variable's own missing-value marker (its ``_FillValue``), or None."""
    if img.kind != "zarr" or not img.source:
        return None
    import xarray as xr

    parent, name = os.path.split(os.fspath(img.source).rstrip("/"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not a dataset, or no consolidated metadata: fine
            var = xr.open_zarr(parent, chunks=None, decode_coords="all")[name]
    except Exception:  # not a group, not one xarray reads, no such variable
        return None
    if any(var.sizes.get(d) != n for d, n in zip(img.spatial_dims, img.spatial_shape)):
        return None  # not the same dimensions (a Zarr array without dimension names)
    img.coords = spatial_coords(var, img.spatial_dims)
    img.attrs = dict(var.attrs)
    fill = var.encoding.get("_FillValue")
    return fill.item() if isinstance(fill, np.generic) else fill


def zarr_layout(
    coords: Mapping[str, Any], attrs: Mapping[str, Any], dims: Mapping[str, Sequence[str]], extra=None
) -> tuple[dict, dict]:
    """``(coords, array_attrs)`` for :func:`daskgmm._zarr_output.write_zarr`: xarray's Zarr layout of the
    outputs ``dims`` (name -> dimension names) of an image with ``coords`` and ``attrs``.

    ``coords`` maps coordinate name -> xarray DataArray/Variable; ``extra`` maps more output
    attributes by output name (e.g. ``{"labels": {"nodata": -1}}``). Returns ``coords`` as
    name -> ``(dims, numpy values, attrs)`` (CF-encoded by xarray), restricted to coordinates
    whose dims some output has, and per output its attributes with ``coordinates`` (its
    non-index coordinates) and ``grid_mapping``.
    """
    import xarray as xr

    all_dims = {d for ds in dims.values() for d in ds}
    out_coords = {}
    for name, c in coords.items():
        if not set(c.dims) <= all_dims or name in dims:  # an output keeps its own name
            continue
        var = xr.conventions.encode_cf_variable(xr.Variable(c.dims, np.asarray(c.values), dict(c.attrs)))
        var_attrs = {k: _storable(v) for k, v in var.attrs.items() if k != "_FillValue"}
        out_coords[str(name)] = (tuple(var.dims), np.asarray(var.values), var_attrs)
    base = {k: _storable(v) for k, v in output_attrs(attrs, coords).items()}
    array_attrs = {}
    for out, out_dims in dims.items():
        a = dict(base)
        a.update((extra or {}).get(out, {}))
        listed = [
            n
            for n, (cdims, _, _) in out_coords.items()
            if set(cdims) <= set(out_dims) and cdims != (n,)  # index coordinates are not listed
        ]
        if listed:
            a["coordinates"] = " ".join(sorted(listed))
        array_attrs[out] = a
    return out_coords, array_attrs


def _storable(value):
    """An attribute value as Zarr can store it in JSON: arrays as lists, numpy scalars as
    numbers, at any depth; anything else JSON cannot hold (a set, an object) as its text."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_coords(group, coords: Mapping[str, tuple]) -> None:
    """Write ``coords`` (name -> ``(dims, values, attrs)``, attrs JSON-able) as arrays of the
    Zarr ``group``, with ``dimension_names`` (none for a scalar), one chunk each, float fill NaN."""
    for name, (dims, values, attrs) in coords.items():
        values = np.asarray(values)
        text = values.dtype.kind in "UO"  # as xarray writes text: Zarr's variable-length strings
        arr = group.create_array(
            name,
            shape=values.shape,
            chunks=tuple(max(1, s) for s in values.shape),
            dtype=str if text else values.dtype,
            fill_value=np.nan if values.dtype.kind in "fc" else None,
            dimension_names=list(dims) if dims else None,
            attributes=dict(attrs),
        )
        arr[...] = values.astype(object) if text else values


def consolidate(group) -> None:
    """Write ``group``'s consolidated metadata (xarray opens it in one read, without a warning).
    Zarr's note that consolidated metadata is not yet in the v3 specification is not repeated
    to users: xarray writes and reads it this way."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(group.store, path=group.path)
