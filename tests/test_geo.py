"""Outputs keep their geography (issue 16): a rioxarray ``(band, y, x)`` raster with a CRS,
segmented through the Python API, the ``.gmm`` accessor and ``daskgmm segment`` (GeoTIFF and a
Zarr group written by xarray), reads back with ``xarray.open_zarr`` and rioxarray with the same
coordinates, CRS and transform; labels equal scikit-learn's ``predict`` with the fitted
parameters on the same pixels."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import _geo, cli
from daskgmm import image as im

rioxarray = pytest.importorskip("rioxarray")
rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402  (comes with rasterio)

# rioxarray's own use of affine (``affine * ...``), not this package's
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

TRANSFORM = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)  # 10 m pixels, UTM 33N
CRS = "EPSG:32633"


def make_bands(height=60, width=80, seed=0) -> np.ndarray:
    """(3, height, width) uint16: three classes in vertical stripes, well apart in every band,
    and a nodata (0) corner."""
    rng = np.random.default_rng(seed)
    classes = (np.arange(width)[None, :] * 3 // width).repeat(height, axis=0)
    bands = np.stack([classes * 500 + 400 + 100 * b + rng.normal(0, 40, classes.shape) for b in range(3)])
    bands = bands.astype(np.uint16)
    bands[:, :6, :7] = 0
    return bands


def rio_tile(bands: np.ndarray) -> xr.DataArray:
    """A (band, y, x) DataArray as rioxarray reads a GeoTIFF: x/y pixel centres, spatial_ref,
    value attributes, plus a 2-D non-index coordinate."""
    _, h, w = bands.shape
    x = TRANSFORM.c + TRANSFORM.a * (np.arange(w) + 0.5)
    y = TRANSFORM.f + TRANSFORM.e * (np.arange(h) + 0.5)
    arr = xr.DataArray(
        bands,
        dims=("band", "y", "x"),
        coords={"band": [1, 2, 3], "y": y, "x": x, "row_id": (("y", "x"), np.arange(h * w).reshape(h, w))},
        attrs={"AREA_OR_POINT": "Area", "_FillValue": 0, "scale_factor": 1.0, "add_offset": 0.0},
        name="reflectance",
    )
    arr = arr.rio.write_crs(CRS).rio.write_transform(TRANSFORM)
    return arr.chunk({"band": -1, "y": 30, "x": 40})


def sklearn_labels(model, bands: np.ndarray) -> np.ndarray:
    """scikit-learn's predict with ``model``'s fitted parameters, on every pixel; -1 where any band is 0."""
    ref = SkGaussianMixture(model.n_components, covariance_type=model.covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(ref, name, np.asarray(getattr(model, name), dtype=np.float64))
    pixels = bands.reshape(bands.shape[0], -1).T.astype(np.float64)
    valid = (pixels != 0).all(axis=1)
    out = np.full(len(pixels), -1)
    out[valid] = ref.predict(pixels[valid])
    return out.reshape(bands.shape[1:])


def write_geotiff(path, bands: np.ndarray, nodata=0) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=bands.dtype.name,
        crs=CRS,
        transform=TRANSFORM,
        nodata=nodata,
    ) as f:
        f.write(bands)


def open_quietly(path) -> xr.Dataset:
    """``xarray.open_zarr`` with every warning an error (no 'consolidated metadata' warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def assert_same_grid(labels: xr.DataArray, like: xr.DataArray) -> None:
    np.testing.assert_array_equal(labels["x"].values, like["x"].values)
    np.testing.assert_array_equal(labels["y"].values, like["y"].values)
    assert labels.rio.crs == like.rio.crs and labels.rio.crs.to_epsg() == 32633
    assert labels.rio.transform() == TRANSFORM
    assert labels.attrs["grid_mapping"] == "spatial_ref"


def test_rioxarray_tile_round_trips_with_crs_coords_and_attrs(tmp_path):
    bands = make_bands()
    arr = rio_tile(bands)
    seg = daskgmm.segment(arr, 3, nodata=0, random_state=0)  # feature_axis "auto": the band dim
    # lazy results are xarray with the grid and the CRS
    assert seg.labels.dims == ("y", "x") and "spatial_ref" in seg.labels.coords
    assert seg.labels.rio.crs.to_epsg() == 32633 and seg.labels.rio.transform() == TRANSFORM
    assert "_FillValue" not in seg.labels.attrs and seg.labels.attrs["AREA_OR_POINT"] == "Area"

    out = tmp_path / "classes.zarr"
    seg.to_zarr(out, probabilities=True, confidence=True)
    ds = open_quietly(out)
    assert ds["labels"].dims == ("y", "x") and ds["probabilities"].dims == ("y", "x", "component")
    assert ds["labels"].dtype == np.int16  # not decoded to float: -1 is a label, not a mask
    for name in ("labels", "probabilities", "confidence"):
        assert_same_grid(ds[name], arr)
    assert ds["labels"].attrs == {
        "AREA_OR_POINT": "Area",
        "grid_mapping": "spatial_ref",
        "nodata": -1,
    }  # the band values' _FillValue, scale_factor, add_offset are left off
    assert set(ds.coords) == {"x", "y", "component", "spatial_ref", "row_id"}
    np.testing.assert_array_equal(ds["row_id"].values, arr["row_id"].values)
    np.testing.assert_array_equal(ds["component"].values, [0, 1, 2])
    assert ds["spatial_ref"].attrs["crs_wkt"] == arr["spatial_ref"].attrs["crs_wkt"]

    lab = ds["labels"].values
    np.testing.assert_array_equal(lab, sklearn_labels(seg.model, bands))
    assert (lab[:6, :7] == -1).all() and (lab >= 0).sum() == lab.size - 42
    assert sorted(np.unique(lab[lab >= 0])) == [0, 1, 2]
    # the consolidated metadata holds the completion stamp; the dict API is unchanged
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["attributes"][im.COMPLETE_ATTR] is True
    assert set(meta["consolidated_metadata"]["metadata"]) >= {"labels", "x", "y", "spatial_ref"}
    back = im.open_segmentation(out)
    np.testing.assert_array_equal(back["labels"].compute(), lab)
    as_xr = im.open_segmentation(out, as_xarray=True)
    assert isinstance(as_xr, xr.Dataset) and as_xr.labels.rio.crs == arr.rio.crs
    assert as_xr.attrs["model"]["class"] == "GaussianMixture"

    # rioxarray writes the label map back out as a GeoTIFF on the same grid
    ds["labels"].rio.to_raster(tmp_path / "labels.tif")
    with rasterio.open(tmp_path / "labels.tif") as f:
        assert f.crs.to_epsg() == 32633 and f.transform == TRANSFORM
        np.testing.assert_array_equal(f.read(1), lab)


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")  # zarr, on xarray's write
def test_accessor_outputs_write_back_through_xarray_unmasked(tmp_path):
    """The input's _FillValue=0 is the band values' fill: on labels it would turn label 0 into
    NaN when xarray reads them back. Accessor outputs leave it off and keep the CRS."""
    bands = make_bands(seed=1)
    arr = rio_tile(bands)
    model = arr.gmm.fit(3, nodata=0, random_state=0)
    labels = arr.gmm.predict(model, nodata=0)
    assert "_FillValue" not in labels.attrs and labels.rio.crs.to_epsg() == 32633
    labels.to_dataset().to_zarr(tmp_path / "acc.zarr", zarr_format=3, consolidated=True)
    back = open_quietly(tmp_path / "acc.zarr")["labels"]
    assert back.dtype == np.int16 and back.rio.transform() == TRANSFORM
    np.testing.assert_array_equal(back.values, sklearn_labels(model, bands))


def test_missing_rioxarray_names_the_extra(monkeypatch, tmp_path):
    """Without rioxarray, a GeoTIFF input is refused before any work, naming the extra."""
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, np.ones((2, 8, 8), np.uint8))
    monkeypatch.setitem(sys.modules, "rioxarray", None)  # `import rioxarray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'daskgmm\[geo\]'"):
        _geo.open_geotiff(tif)
    with pytest.raises(SystemExit, match=r"GeoTIFF needs rioxarray .*pip install 'daskgmm\[geo\]'"):
        cli.main(["segment", str(tif), str(tmp_path / "out.zarr"), "-k", "2"])
    assert not (tmp_path / "out.zarr").exists()
    assert "daskgmm[geo]" in _geo.missing_geo_message()


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")  # zarr, on xarray's write
def test_cli_segment_geotiff_and_xarray_group(tmp_path, cluster, capsys):
    """``daskgmm segment`` on a GeoTIFF (bands on 'band', nodata from the file) and on a Zarr
    group written by xarray: OUT has the input's grid and CRS; --overwrite replaces it."""
    bands = make_bands(seed=2)
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, bands)
    scene = rioxarray.open_rasterio(tif)
    address = cluster.scheduler_address
    out = tmp_path / "classes.zarr"
    args = ["segment", str(tif), str(out), "-k", "3", "--seed", "0", "--scheduler", address, "--json"]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["nodata"] == 0 and summary["n_bands"] == 3 and summary["n_pixels_fit"] == 60 * 80 - 42
    ds = open_quietly(out)
    assert_same_grid(ds["labels"], scene)
    model = im.open_segmentation(out)["model"]
    np.testing.assert_array_equal(ds["labels"].values, sklearn_labels(model, bands))
    with pytest.raises(SystemExit, match="already exists"):
        cli.main(args)
    assert cli.main([*args, "--overwrite", "--probabilities"]) == 0
    assert_same_grid(open_quietly(out)["probabilities"], scene)

    # a Zarr group written by xarray (rioxarray's variable, CRS as grid_mapping): --array VARIABLE
    group = tmp_path / "scene.zarr"
    scene.rename("reflectance").to_dataset().to_zarr(group, zarr_format=3, consolidated=True)
    out2 = tmp_path / "classes2.zarr"
    cmd = ["segment", str(group), str(out2), "-k", "3", "--array", "reflectance", "--feature-axis", "band"]
    assert cli.main([*cmd, "--seed", "0", "--scheduler", address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["nodata"] == 0  # its _FillValue
    ds2 = open_quietly(out2)
    assert_same_grid(ds2["labels"], scene)
    model2 = im.open_segmentation(out2)["model"]
    np.testing.assert_array_equal(ds2["labels"].values, sklearn_labels(model2, bands))


def test_geotiff_path_in_the_python_api(tmp_path):
    """``segment("scene.tif", ...)`` reads it through rioxarray (bands on 'band'); the output
    keeps the file's grid and CRS, and may not be written over the file."""
    bands = make_bands(seed=3)
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, bands)
    seg = daskgmm.segment(str(tif), 3, nodata=0, random_state=0)
    assert seg.labels.rio.crs.to_epsg() == 32633 and seg.labels.rio.transform() == TRANSFORM
    np.testing.assert_array_equal(seg.labels.values, sklearn_labels(seg.model, bands))
    with pytest.raises(ValueError, match="the input image itself"):
        seg.to_zarr(tif, overwrite=True)
    assert tif.stat().st_size > 0
