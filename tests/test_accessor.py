"""The xarray ``.gmm`` accessor on (band, y, x) rasters as rioxarray reads them."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

import daskgmm
from daskgmm import datasets
from daskgmm import image as im

SHAPE = (120, 100)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    """A (band, y, x) DataArray like rioxarray.open_rasterio(..., chunks=...): coordinates on
    every dim, a scalar ``spatial_ref`` coordinate, attributes, bands split over chunks."""
    path = str(tmp_path_factory.mktemp("tile") / "tile.zarr")
    info = datasets.make_raster(
        path, shape=SHAPE, n_bands=4, n_classes=3, chunks=(50, 40), seed=2, cell=24, nodata=0
    )
    data = da.from_zarr(path).transpose(2, 0, 1).rechunk({0: 2})  # band axis in two chunks
    arr = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": [1, 2, 3, 4],
            "y": 5_000_000.0 - 10.0 * np.arange(SHAPE[0]),
            "x": 300_000.0 + 10.0 * np.arange(SHAPE[1]),
            "spatial_ref": 0,
        },
        attrs={"AREA_OR_POINT": "Area", "scale_factor": 1.0},
        name="reflectance",
    )
    values = np.moveaxis(np.asarray(data), 0, -1)
    return {"arr": arr, "values": values, "truth": datasets.true_classes(SHAPE, 3, seed=2, cell=24), **info}


def test_fit_predict_keep_dims_coords_attrs_chunks(tile):
    arr, values = tile["arr"], tile["values"]
    model = arr.gmm.fit(3, feature_dim="band", nodata=0, random_state=0)
    labels = arr.gmm.predict(model, feature_dim="band", nodata=0)

    assert labels.dims == ("y", "x") and labels.dtype == np.int16
    np.testing.assert_array_equal(labels.y, arr.y)
    np.testing.assert_array_equal(labels.x, arr.x)
    assert int(labels.spatial_ref) == 0
    assert labels.attrs["AREA_OR_POINT"] == "Area" and labels.attrs["nodata"] == -1
    assert labels.chunks == arr.chunks[1:]  # spatial chunks untouched
    assert isinstance(labels.data, da.Array)

    lab = labels.values
    nodata = (values == 0).any(axis=-1)
    np.testing.assert_array_equal(lab == -1, nodata)
    np.testing.assert_array_equal(lab[~nodata], model.predict(values[~nodata].astype(float)))
    assert adjusted_rand_score(tile["truth"][~nodata], lab[~nodata]) == 1.0


def test_probabilities_and_log_density(tile):
    arr, values = tile["arr"], tile["values"]
    model = arr.gmm.fit(3, feature_dim="band", nodata=0, random_state=0)
    proba = arr.gmm.predict_proba(model, feature_dim="band", nodata=0)
    assert proba.dims == ("y", "x", "component") and proba.dtype == np.float32
    np.testing.assert_array_equal(proba.component, [0, 1, 2])
    logd = arr.gmm.score_samples(model, feature_dim="band", nodata=0)
    assert logd.dims == ("y", "x")

    valid = ~(values == 0).any(axis=-1)
    X = values[valid].astype(float)
    np.testing.assert_allclose(proba.values[valid], model.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(logd.values[valid], model.score_samples(X), rtol=1e-6)
    assert np.isnan(proba.values[~valid]).all() and np.isnan(logd.values[~valid]).all()


def test_accessor_segment_equals_daskgmm_segment(tile, tmp_path):
    arr = tile["arr"]
    seg = arr.gmm.segment(3, feature_dim="band", nodata=0, sample=0.5, random_state=4)
    labels, model = seg
    assert isinstance(labels, xr.DataArray) and labels.dims == ("y", "x")
    # the same call through daskgmm.segment with a dimension name as feature_axis
    labels2, model2 = daskgmm.segment(arr, 3, feature_axis="band", nodata=0, sample=0.5, random_state=4)
    np.testing.assert_array_equal(model.means_, model2.means_)
    np.testing.assert_array_equal(labels.values, labels2.values)
    # and through the accessor's predict with that model
    np.testing.assert_array_equal(labels.values, arr.gmm.predict(model, nodata=0).values)

    out = tmp_path / "seg.zarr"
    seg.to_zarr(out, probabilities=True)
    back = im.open_segmentation(out)
    np.testing.assert_array_equal(back["labels"].compute(), labels.values)
    opened = xr.open_zarr(out, consolidated=False)
    assert opened["labels"].dims == ("y", "x") and opened["probabilities"].dims == ("y", "x", "component")


def test_in_memory_band_last_dataarray():
    photo = pytest.importorskip("skimage.data").coffee()[::4, ::4]  # (100, 150, 3) uint8
    arr = xr.DataArray(photo, dims=("row", "col", "rgb"), attrs={"source": "skimage"})
    model = arr.gmm.fit(3, feature_dim="rgb", random_state=0)
    labels = arr.gmm.predict(model, feature_dim="rgb")
    assert labels.dims == ("row", "col") and isinstance(labels.data, np.ndarray)
    assert labels.attrs["source"] == "skimage"
    np.testing.assert_array_equal(labels.values.ravel(), model.predict(photo.reshape(-1, 3).astype(float)))
    assert np.all(np.diff(model.means_[:, 0]) > 0)  # documented order: by the first band's mean


def test_accessor_errors(tile):
    arr = tile["arr"]
    with pytest.raises(ValueError, match=r"feature_dim='bands' is not a dimension .* feature_dim='band'"):
        arr.gmm.fit(3, feature_dim="bands")
    model = arr.isel(band=[0, 1]).gmm.fit(2, feature_dim="band", nodata=0, random_state=0)
    with pytest.raises(ValueError, match=r"has 4 band\(s\) but the model was fitted on 2"):
        arr.gmm.predict(model, feature_dim="band")
