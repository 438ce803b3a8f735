"""The one safe Zarr writer without rename (object stores), coordinates and consolidated
metadata, and URLs daskgmm cannot use (issue 16).

The object-store protocol is exercised on fsspec's ``memory://`` filesystem (the same code
path as ``s3://``: no rename, keys under a prefix) with dask's threaded scheduler, which shares
the process's memory filesystem; tests/test_storage.py runs it against a real S3 server on a
multi-process cluster.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings

import dask.array as da
import fsspec
import numpy as np
import pytest

from daskgmm._zarr_output import (
    COMPLETE_ATTR,
    WRITING_ATTR,
    check_output,
    is_complete_output,
    open_segmentation,
    write_zarr,
)


def _two_blobs(n=100):
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0.0, 1.0, (n, 2)), rng.normal(8.0, 1.0, (n, 2))])


def _labels(n=40):
    return {"labels": da.arange(n, chunks=10, dtype=np.int32)}


@pytest.fixture
def url():
    """A fresh prefix on the process's memory filesystem, removed afterwards."""
    prefix = f"memory://t-{uuid.uuid4().hex[:8]}"
    yield f"{prefix}/seg.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)


def _keys(url):
    fs, p = fsspec.core.url_to_fs(url)
    return sorted(k[len(p) + 1 :] for k in fs.find(p))


def test_object_store_write_is_stamped_last_and_reads_back(url):
    assert write_zarr(url, _labels(), dims={"labels": ["x"]}) == url
    assert is_complete_output(url)
    out = open_segmentation(url)
    np.testing.assert_array_equal(out["labels"].compute(), np.arange(40))
    assert out["attrs"][COMPLETE_ATTR] is True and WRITING_ATTR not in out["attrs"]
    # no temporary or renamed keys: everything under the final prefix
    assert _keys(url) == [
        "labels/c/0",
        "labels/c/1",
        "labels/c/2",
        "labels/c/3",
        "labels/zarr.json",
        "zarr.json",
    ]
    with pytest.raises(FileExistsError, match="already exists; .* It is a complete daskgmm output"):
        write_zarr(url, _labels(), dims={"labels": ["x"]})


def test_object_store_overwrite_deletes_only_the_old_outputs_keys(url):
    fs, p = fsspec.core.url_to_fs(url)
    write_zarr(
        url, {**_labels(), "confidence": da.ones(40, chunks=10)}, dims={"labels": ["x"], "confidence": ["x"]}
    )
    fs.pipe_file(f"{p}/notes.txt", b"a user's file under the prefix")
    write_zarr(url, _labels(20), dims={"labels": ["x"]}, overwrite=True)
    out = open_segmentation(url)
    assert out["labels"].shape == (20,) and "confidence" not in out
    keys = _keys(url)
    assert not any(k.startswith("confidence") for k in keys)  # the old output's array is gone
    assert fs.cat_file(f"{p}/notes.txt") == b"a user's file under the prefix"  # never touched


def test_object_store_interrupted_write_is_refused_then_replaced(url):
    """A write killed after its marker and some chunks: readers refuse it, saying what it is; a
    rerun with overwrite replaces it."""
    import zarr

    from daskgmm._storage import zarr_store

    store = zarr_store(url, read_only=False)
    g = zarr.create_group(store, attributes={WRITING_ATTR: {"arrays": ["labels"]}})
    g.create_array("labels", shape=(40,), chunks=(10,), dtype="i4")[:10] = 7  # one chunk landed
    with pytest.raises(
        ValueError, match=r"is an incomplete daskgmm output \(its write was interrupted\).*rerun"
    ):
        open_segmentation(url)
    with pytest.raises(FileExistsError, match="incomplete daskgmm output"):
        check_output(url)
    write_zarr(url, _labels(), dims={"labels": ["x"]}, overwrite=True)
    np.testing.assert_array_equal(open_segmentation(url)["labels"].compute(), np.arange(40))


def test_object_store_refuses_what_daskgmm_did_not_write(url):
    import zarr

    from daskgmm._storage import zarr_store

    fs, p = fsspec.core.url_to_fs(url)
    zarr.create_array(zarr_store(url, read_only=False), shape=(4,), dtype="f8")  # someone's array
    with pytest.raises(ValueError, match="a Zarr store that is not a complete daskgmm output"):
        write_zarr(url, _labels(), dims={"labels": ["x"]}, overwrite=True)
    with pytest.raises(ValueError, match="no 'daskgmm_complete' stamp"):
        open_segmentation(url)
    other = url.replace("seg.zarr", "data")
    fs.pipe_file(other.split("://", 1)[1] + "/a.bin", b"12345")
    with pytest.raises(ValueError, match="a prefix holding 1 object that is not a daskgmm output"):
        write_zarr(other, _labels(), dims={"labels": ["x"]}, overwrite=True)
    assert fs.cat_file(other.split("://", 1)[1] + "/a.bin") == b"12345"
    with pytest.raises(ValueError, match="is inside the input image"):
        check_output(url + "/out", source=url)


def test_coords_and_array_attrs_round_trip_through_xarray(tmp_path):
    """Coordinates (1-d and a scalar), per-array attributes and consolidated metadata: xarray
    opens the output without a warning, with the coordinates as written."""
    import xarray as xr

    y, x = np.linspace(10.0, 0.5, 20), np.arange(30) * 2.0 + 100.0
    labels = da.zeros((20, 30), chunks=(10, 15), dtype=np.int16)
    out = str(tmp_path / "seg.zarr")
    write_zarr(
        out,
        {"labels": labels},
        dims={"labels": ("y", "x")},
        coords={
            "y": (("y",), y, {"units": "m"}),
            "x": (("x",), x, {"units": "m"}),
            "spatial_ref": ((), np.array(0), {"crs_wkt": 'LOCAL_CS["test"]'}),
        },
        array_attrs={"labels": {"grid_mapping": "spatial_ref", "long_name": "class"}},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata not found" warning
        ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds["y"].values, y)
    np.testing.assert_array_equal(ds["x"].values, x)
    assert ds["x"].attrs["units"] == "m"
    assert ds["labels"].dims == ("y", "x") and ds["labels"].attrs["grid_mapping"] == "spatial_ref"
    assert ds["spatial_ref"].attrs["crs_wkt"] == 'LOCAL_CS["test"]'
    assert open_segmentation(out)["attrs"]["arrays"] == ["labels", "y", "x", "spatial_ref"]
    with pytest.raises(ValueError, match="has the name of an output array"):
        write_zarr(
            tmp_path / "b.zarr",
            {"labels": labels},
            dims={"labels": ("y", "x")},
            coords={"labels": ((), 0, {})},
        )


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("foo://bucket/m.npz", ValueError, "fsspec knows no protocol 'foo'"),
        ("gs://bucket/m.npz", ImportError, r"Install it: pip install gcsfs"),
    ],
)
def test_a_url_daskgmm_cannot_write_is_an_error_not_a_local_file(url, error, match, tmp_path, monkeypatch):
    from daskgmm import GaussianMixture, load

    monkeypatch.chdir(tmp_path)
    X = _two_blobs()
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(error, match=match):
        gm.save(url)
    with pytest.raises(error, match=match):
        load(url)
    with pytest.raises(error, match=match):
        write_zarr(url.replace("m.npz", "o.zarr"), _labels(), dims={"labels": ["x"]})
    with pytest.raises(error, match=match):
        GaussianMixture(2, checkpoint=url, max_iter=2).fit(X)
    assert os.listdir(tmp_path) == []  # nothing written locally (once: ./gs:/bucket/m.npz)


def test_model_file_and_checkpoint_on_an_object_store_are_whole_objects(url):
    from daskgmm import GaussianMixture, load
    from daskgmm.checkpoint import read_checkpoint

    X = _two_blobs()
    model_url, ckpt_url = url.replace("seg.zarr", "m.npz"), url.replace("seg.zarr", "c.npz")
    gm = GaussianMixture(2, random_state=0, checkpoint=ckpt_url, max_iter=20).fit(X)
    gm.save(model_url)
    back = load(model_url)
    np.testing.assert_array_equal(back.means_, gm.means_)
    np.testing.assert_array_equal(back.precisions_cholesky_, gm.precisions_cholesky_)
    meta, _ = read_checkpoint(ckpt_url)
    assert meta["format"] == "daskgmm-checkpoint"
    with pytest.raises(ValueError, match="is a directory"):
        gm.save(url.rsplit("/", 1)[0])  # a prefix holding objects, not a file name


def _fail(block):
    raise RuntimeError("a task failed")


def _fail_first_slow_second(block, block_info=None):
    """Block 0 fails at once; block 1 is still being computed when it does, and returns later."""
    if block_info[0]["chunk-location"][0] == 0:
        raise RuntimeError("a task failed")
    time.sleep(0.5)
    return block


def _late_write_arrays():
    labels = da.arange(20, chunks=10, dtype=np.int32)
    return {"labels": labels.map_blocks(_fail_first_slow_second, dtype=np.int32)}


def _assert_nothing_left(tmp_path):
    assert os.listdir(tmp_path) == []
    time.sleep(1.0)  # the slow block has finished by now: its chunk must not have come back
    assert os.listdir(tmp_path) == []


def test_failed_local_write_is_not_brought_back_by_a_task_still_running(tmp_path):
    """dask's threaded scheduler raises at the first error while its other thread runs on."""
    import dask

    with dask.config.set(scheduler="threads", num_workers=2):
        with pytest.raises(RuntimeError, match="a task failed"):
            write_zarr(tmp_path / "seg.zarr", _late_write_arrays(), dims={"labels": ["x"]})
    _assert_nothing_left(tmp_path)


def test_failed_write_on_a_cluster_is_not_brought_back_by_a_task_still_running(client, tmp_path):
    """On a real 2-process cluster: the other worker's task is awaited before the cleanup."""
    with pytest.raises(RuntimeError, match="a task failed"):
        write_zarr(tmp_path / "seg.zarr", _late_write_arrays(), dims={"labels": ["x"]})
    _assert_nothing_left(tmp_path)


def test_object_store_write_that_fails_leaves_nothing_new(url):
    arrays = {"labels": _labels()["labels"].map_blocks(_fail, dtype=np.int32)}
    with pytest.raises(RuntimeError, match="a task failed"):
        write_zarr(url, arrays, dims={"labels": ["x"]})
    assert not fsspec.filesystem("memory").exists(url.split("://", 1)[1])


def test_checkpoint_of_a_remote_store_refuses_a_rewritten_chunk(url):
    """The fingerprint of a URL store comes from its listing (size, version of every chunk
    object) and its metadata objects, as for a local store: one chunk rewritten is other data."""
    import zarr

    from daskgmm import GaussianMixture
    from daskgmm._storage import zarr_store
    from daskgmm.checkpoint import CheckpointError

    X = _two_blobs()
    data, ckpt = url.replace("seg.zarr", "x.zarr"), url.replace("seg.zarr", "c.npz")
    z = zarr.create_array(zarr_store(data, read_only=False), shape=X.shape, chunks=(50, 2), dtype="f8")
    z[...] = X
    kw = dict(n_components=2, random_state=0, checkpoint=ckpt, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converged or not in 2 iterations: either writes the checkpoint
        GaussianMixture(**kw).fit(data)
    assert fsspec.filesystem("memory").exists(ckpt.split("://", 1)[1])
    z[:50] = X[:50] + 1e-9  # one chunk rewritten, same size
    with pytest.raises(CheckpointError, match="belongs to other data: zarr_chunk_files"):
        GaussianMixture(**kw).fit(data, resume=True)


def test_a_georeferenced_segmentation_keeps_its_coordinates_on_an_object_store(url):
    """xarray input -> segment -> to_zarr on an object store -> opened as xarray: the same x/y."""
    import xarray as xr

    from daskgmm import segment
    from daskgmm.segmentation import open_segmentation as open_public

    img = _two_blobs(300).reshape(20, 30, 2)
    x, y = 500.0 + 10.0 * np.arange(30), 4000.0 - 10.0 * np.arange(20)
    da_img = xr.DataArray(img, dims=("y", "x", "band"), coords={"x": x, "y": y}).chunk({"y": 10})
    segment(da_img, 2, feature_axis="band", random_state=0).to_zarr(url)
    ds = open_public(url, as_xarray=True)
    np.testing.assert_array_equal(ds["x"].values, x)
    np.testing.assert_array_equal(ds["y"].values, y)
    assert ds["labels"].dims == ("y", "x")
