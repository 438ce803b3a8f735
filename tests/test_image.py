"""Image segmentation: real photographs (scikit-image), generated rasters with known classes,
nodata, deterministic component order, Zarr output that reads back identical and never looks
complete after a failed or killed write, and the ``daskgmm segment`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import daskgmm
from daskgmm import cli, datasets
from daskgmm import image as im
from daskgmm._kernels import label_dtype
from daskgmm.cli.segment import _open_image
from tests.conftest import make_mixture

skdata = pytest.importorskip("skimage.data")


def seg_dims(path, feature_axis="band"):
    return im.as_image(path, feature_axis).spatial_dims


def pixels_of(img: np.ndarray) -> np.ndarray:
    return np.asarray(img, dtype=np.float64).reshape(-1, img.shape[-1])


# --------------------------------------------------------------------------
# real photographs
# --------------------------------------------------------------------------
def test_photo_matches_sklearn_on_the_same_pixels():
    """chelsea (RGB, every other pixel: 150 x 226): same random_state, all pixels in the
    k-means sample → scikit-learn's numbers; labels are the model's predict on the same pixels."""
    photo = skdata.chelsea()[::2, ::2]
    seg = daskgmm.segment(photo, 4, random_state=0, init_sample_size=10**6)
    labels, model = seg
    assert isinstance(labels, da.Array) and labels.shape == photo.shape[:2] and labels.dtype == np.int16

    X = pixels_of(photo)
    ref = SkGaussianMixture(4, random_state=0).fit(X)
    order = np.lexsort(ref.means_.T[::-1])
    np.testing.assert_allclose(model.means_, ref.means_[order], rtol=1e-8)
    np.testing.assert_allclose(model.covariances_, ref.covariances_[order], rtol=1e-7)
    assert model.score(X) == pytest.approx(ref.score(X), rel=1e-10)

    lab = labels.compute()
    np.testing.assert_array_equal(lab.ravel(), model.predict(X))
    # the scikit-learn model labels the same pixels the same way, up to the sort
    np.testing.assert_array_equal(lab.ravel(), np.argsort(order)[ref.predict(X)])


def test_photo_chunked_sample_as_good_as_sklearn():
    """astronaut (RGB, every other pixel: 256 x 256) in 9 spatial blocks, fitted on a 30%
    sample: scikit-learn fitted on exactly those pixels reaches the same mean log-likelihood
    per pixel."""
    photo = skdata.astronaut()[::2, ::2]
    image = da.from_array(photo, chunks=(100, 100, 3))
    seg = daskgmm.segment(image, 5, sample=0.3, random_state=3, init_sample_size=10**6)
    labels, model = seg
    assert labels.chunks == image.chunks[:2]  # spatial chunks kept, no rechunk

    sampled = im.pixel_table(im.as_image(image), None, 0.3, 3).compute()
    assert model.n_pixels_fit_ == len(sampled)
    assert 0.28 < len(sampled) / (256 * 256) < 0.32
    ref = SkGaussianMixture(5, random_state=3).fit(sampled)
    # not 1e-12: the black background makes one component nearly singular in band 0, which
    # amplifies round-off (daskgmm on the same numpy array differs from scikit-learn as much)
    assert model.score(sampled) == pytest.approx(ref.score(sampled), rel=1e-6)
    assert model.n_iter_ == ref.n_iter_

    X = pixels_of(photo)
    np.testing.assert_array_equal(labels.compute().ravel(), model.predict(X))
    # the other outputs agree with the model's own methods on every pixel
    out = dask.compute(seg.outputs(("probabilities", "log_density", "confidence")))[0]
    proba = model.predict_proba(X)
    np.testing.assert_allclose(out["probabilities"].reshape(-1, 5), proba, atol=1e-6)
    # atol: float32 output, and the near-singular component amplifies round-off
    np.testing.assert_allclose(out["log_density"].ravel(), model.score_samples(X), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out["confidence"].ravel(), proba.max(axis=1), atol=1e-6)
    assert out["probabilities"].dtype == np.float32 and out["log_density"].dtype == np.float32


def test_grayscale_photo_single_band():
    camera = skdata.camera()[::2, ::2]  # (256, 256) uint8
    labels, model = daskgmm.segment(camera, 3, feature_axis=None, random_state=0)
    assert labels.shape == camera.shape
    np.testing.assert_array_equal(
        labels.compute().ravel(), model.predict(camera.reshape(-1, 1).astype(float))
    )
    assert np.all(np.diff(model.means_[:, 0]) > 0)  # label 0 is the darkest


# --------------------------------------------------------------------------
# generated rasters with known classes
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    """A (300, 260, 4) uint16 Zarr raster, 4 known classes, nodata=0 stripes, chunks 128 x 100."""
    path = str(tmp_path_factory.mktemp("raster") / "raster.zarr")
    info = datasets.make_raster(
        path, shape=(300, 260), n_bands=4, n_classes=4, chunks=(128, 100), seed=5, cell=32, nodata=0
    )
    info["truth"] = datasets.true_classes((300, 260), 4, seed=5, cell=32)
    info["values"] = zarr.open_array(path, mode="r")[:]
    return info


def test_raster_known_classes_and_nodata(raster):
    values = raster["values"]
    nodata = (values == 0).any(axis=-1)
    assert 0.02 < nodata.mean() < 0.2  # the generator's nodata stripes
    labels, model = daskgmm.segment(raster["path"], 4, nodata=0, random_state=0)
    assert labels.chunks == ((128, 128, 44), (100, 100, 60))  # the Zarr chunks
    assert seg_dims(raster["path"]) == ("y", "x")  # the Zarr dimension names, less the bands
    lab = labels.compute()

    np.testing.assert_array_equal(lab == -1, nodata)  # nodata labelled -1, nothing else
    assert model.n_pixels_fit_ == int((~nodata).sum())  # and left out of the fit
    valid = ~nodata
    assert adjusted_rand_score(raster["truth"][valid], lab[valid]) == 1.0
    # component order: by the mean of band 0, so label j is the class with the j-th darkest band 0
    true_means = raster["means"]
    np.testing.assert_allclose(model.means_, true_means[np.argsort(true_means[:, 0])], rtol=0.01)
    np.testing.assert_array_equal(
        lab[valid], np.argsort(np.argsort(true_means[:, 0]))[raster["truth"][valid]]
    )
    np.testing.assert_array_equal(lab[valid], model.predict(values[valid].astype(float)))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_nodata_pixels_do_not_touch_the_fit(raster):
    """Fitting with nodata equals scikit-learn fitted on the valid pixels alone (same start)."""
    values = raster["values"].astype(np.float64)
    valid = ~(values == 0).any(axis=-1)
    Xv = values[valid]
    start = SkGaussianMixture(4, max_iter=1, random_state=0).fit(Xv)  # a common starting point
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    # NaN marks the same pixels in a float image, with no nodata value
    values[~valid] = np.nan
    image = da.from_array(values, chunks=(100, 90, 4))
    labels, model = daskgmm.segment(image, 4, random_state=0, **init)
    ref = SkGaussianMixture(4, random_state=0, **init).fit(Xv)
    order = np.lexsort(ref.means_.T[::-1])
    np.testing.assert_allclose(model.means_, ref.means_[order], rtol=1e-9)
    np.testing.assert_allclose(model.weights_, ref.weights_[order], rtol=1e-9)
    assert model.score(Xv) == pytest.approx(ref.score(Xv), rel=1e-12)
    np.testing.assert_array_equal(labels.compute() == -1, ~valid)


def test_component_order_is_the_same_across_runs(raster):
    a, _ = daskgmm.segment(
        raster["path"], 4, nodata=0, sample=0.5, random_state=1, init_params="random_from_data"
    )
    b, _ = daskgmm.segment(raster["path"], 4, nodata=0, sample=0.5, random_state=7, init_params="k-means++")
    np.testing.assert_array_equal(a.compute(), b.compute())


def test_sample_is_seeded_and_fits_a_fraction(raster):
    s1 = daskgmm.segment(raster["path"], 4, nodata=0, sample=0.2, random_state=11)
    s2 = daskgmm.segment(raster["path"], 4, nodata=0, sample=0.2, random_state=11)
    n_valid = int((~(raster["values"] == 0).any(axis=-1)).sum())
    assert s1.model.n_pixels_fit_ == s2.model.n_pixels_fit_
    assert 0.17 < s1.model.n_pixels_fit_ / n_valid < 0.23
    np.testing.assert_array_equal(s1.model.means_, s2.model.means_)


def test_a_model_labels_another_tile_the_same_way(raster):
    """predict_image applies a fitted model to a new tile; label j means the same class."""
    _, model = daskgmm.segment(raster["path"], 4, nodata=0, random_state=0)
    other = np.asarray(raster["values"])[::-1, ::-1]  # another "tile": same classes, moved
    labels = im.predict_image(model, other, nodata=0).labels.compute()
    own = daskgmm.segment(raster["path"], 4, nodata=0, random_state=0).labels.compute()
    np.testing.assert_array_equal(labels, own[::-1, ::-1])


def test_band_first_layout_and_label_dtype():
    X, _, _, _, _ = make_mixture(n_samples=40 * 50, n_features=3, n_components=3)
    cube = X.reshape(40, 50, 3).transpose(2, 0, 1)  # (band, y, x)
    labels, model = daskgmm.segment(cube, 3, feature_axis=0, random_state=0)
    assert labels.shape == (40, 50)
    np.testing.assert_array_equal(labels.compute().ravel(), model.predict(X))
    assert label_dtype(3) == np.int16 and label_dtype(40000) == np.int32


# --------------------------------------------------------------------------
# bad input: clear errors
# --------------------------------------------------------------------------
def test_errors():
    img = np.random.RandomState(0).rand(20, 20, 3)
    with pytest.raises(ValueError, match=r"sample=0.0 is not a fraction in \(0, 1\]"):
        daskgmm.segment(img, 2, sample=0.0)
    with pytest.raises(ValueError, match=r"sample=1.5 is not a fraction"):
        daskgmm.segment(img, 2, sample=1.5)
    with pytest.raises(TypeError, match="only an xarray DataArray or a Zarr array with dimension names has"):
        daskgmm.segment(img, 2, feature_axis="band")
    with pytest.raises(ValueError, match="feature_axis=3 is out of range"):
        daskgmm.segment(img, 2, feature_axis=3)
    with pytest.raises(ValueError, match="For a single-band image pass feature_axis=None"):
        daskgmm.segment(np.arange(10.0), 2)
    with pytest.raises(ValueError, match=r"Only 0 pixel\(s\) to fit .* Check nodata"):
        daskgmm.segment(np.zeros((10, 10, 3)), 2, nodata=0)
    with pytest.raises(ValueError, match="not numeric"):
        daskgmm.segment(np.full((4, 4, 2), "a"), 2)
    _, model = daskgmm.segment(img, 2, random_state=0)
    with pytest.raises(ValueError, match=r"has 2 band\(s\) but the model was fitted on 3"):
        im.predict_image(model, img[..., :2])
    with pytest.raises(ValueError, match="Unknown output"):
        daskgmm.segment(img, 2, random_state=0).outputs(("labels", "edges"))
    bad = img.copy()
    bad[3, 4, 1] = np.inf
    with pytest.raises(ValueError, match="contains infinity"):
        im.predict_image(model, bad).labels.compute()


# --------------------------------------------------------------------------
# Zarr output
# --------------------------------------------------------------------------
def test_written_zarr_reads_back_identical(raster, tmp_path):
    seg = daskgmm.segment(raster["path"], 4, nodata=0, random_state=0)
    out = str(tmp_path / "seg.zarr")
    seg.to_zarr(out, probabilities=True, log_density=True, confidence=True)
    expected = dask.compute(seg.outputs(im.OUTPUTS))[0]
    back = im.open_segmentation(out)
    for name in im.OUTPUTS:
        got = back[name].compute()
        assert got.dtype == expected[name].dtype
        np.testing.assert_array_equal(got, expected[name])
    g = zarr.open_group(out, mode="r")
    assert g["labels"].chunks == (128, 100) and g["probabilities"].chunks == (128, 100, 4)
    attrs = back["attrs"]
    assert (
        attrs["n_components"] == 4
        and attrs["nodata"] == 0
        and attrs["daskgmm_version"] == daskgmm.__version__
    )
    assert attrs[im.COMPLETE_ATTR] is True
    # the model stored in the attributes is the fitted model
    X = raster["values"].reshape(-1, 4)[:5000].astype(float)
    np.testing.assert_array_equal(back["model"].predict(X), seg.model.predict(X))
    np.testing.assert_allclose(back["model"].means_, seg.model.means_, rtol=0, atol=0)

    with pytest.raises(FileExistsError, match="already exists; choose another output or pass overwrite=True"):
        seg.to_zarr(out)
    seg.to_zarr(out, overwrite=True)  # replaced: now labels only
    assert sorted(zarr.open_group(out, mode="r").array_keys()) == ["labels"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no leftovers


def test_irregular_dask_chunks_are_written_whole(tmp_path):
    """Zarr needs regular chunks: irregular dask chunks are made regular before the write,
    and what is read back is what was computed."""
    X, _, _, _, _ = make_mixture(n_samples=90 * 70, n_features=3, n_components=3, seed=4)
    image = da.from_array(X.reshape(90, 70, 3), chunks=((20, 50, 20), (70,), (3,)))
    seg = daskgmm.segment(image, 3, random_state=0)
    seg.to_zarr(tmp_path / "seg.zarr", confidence=True)
    g = zarr.open_group(tmp_path / "seg.zarr", mode="r")
    assert g["labels"].chunks == (50, 70)
    np.testing.assert_array_equal(g["labels"][:], seg.labels.compute())
    np.testing.assert_array_equal(g["confidence"][:], seg.confidence.compute())


def test_failed_write_leaves_nothing_that_looks_complete(raster, tmp_path):
    """A tile with an infinite pixel in its last block fails part-way through the write."""
    _, model = daskgmm.segment(raster["path"], 4, nodata=0, random_state=0)
    tile = np.asarray(raster["values"], dtype=np.float64)
    tile[-1, -1, 2] = np.inf
    seg = im.predict_image(model, da.from_array(tile, chunks=(128, 100, 4)), nodata=0)
    out = tmp_path / "seg.zarr"
    with pytest.raises(ValueError, match="contains infinity"):
        seg.to_zarr(out, probabilities=True)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # the temporary group was removed too
    with pytest.raises(FileNotFoundError, match="No segmentation at"):
        im.open_segmentation(out)


def test_killed_write_leaves_nothing_that_looks_complete(tmp_path):
    """SIGKILL a process while it writes the segmentation: no OUT, and the hidden temporary
    group it leaves is refused by readers."""
    src = str(tmp_path / "big.zarr")
    values = np.random.default_rng(0).integers(0, 1000, size=(1600, 1600, 3), dtype=np.uint16)
    zarr.create_array(src, data=values, chunks=(200, 200, 3))
    out = tmp_path / "seg.zarr"
    code = (
        "import sys, daskgmm\n"
        "seg = daskgmm.segment(sys.argv[1], 3, sample=0.01, random_state=0, max_iter=2)\n"
        "seg.to_zarr(sys.argv[2], probabilities=True, log_density=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, src, str(out)], start_new_session=True)
    partial = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            hidden = [p for p in os.listdir(tmp_path) if p.startswith(".seg.zarr.partial-")]
            if hidden and any(
                not name.startswith((".z", "zarr.json"))
                for _, _, files in os.walk(tmp_path / hidden[0] / "labels")
                for name in files
            ):  # at least one chunk of labels written
                partial = tmp_path / hidden[0]
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert partial is not None, "the write finished (or never started) before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(ValueError, match="not a complete daskgmm segmentation"):
        im.open_segmentation(partial)


# --------------------------------------------------------------------------
# the command line, on a real multi-process cluster
# --------------------------------------------------------------------------
def test_cli_segment(raster, tmp_path, cluster, capsys):
    out = str(tmp_path / "seg.zarr")
    model_path = str(tmp_path / "model.npz")
    address = cluster.scheduler_address
    args = [
        "segment",
        raster["path"],
        out,
        "-k",
        "4",
        "--nodata",
        "0",
        "--sample",
        "0.5",
        "--seed",
        "2",
        "--save-model",
        model_path,
        "--probabilities",
        "--log-density",
        "--scheduler",
        address,
        "--json",
    ]
    assert cli.main(args) == 0
    summary = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_pixels"] == 300 * 260 and summary["n_components"] == 4

    back = im.open_segmentation(out)
    assert sorted(k for k in back if k not in ("model", "attrs")) == [
        "labels",
        "log_density",
        "probabilities",
    ]
    model = daskgmm.load(model_path)
    np.testing.assert_array_equal(back["model"].means_, model.means_)
    lab = back["labels"].compute()
    values = raster["values"]
    valid = ~(values == 0).any(axis=-1)
    np.testing.assert_array_equal(lab == -1, ~valid)
    np.testing.assert_array_equal(lab[valid], model.predict(values[valid].astype(float)))
    assert zarr.open_group(out, mode="r")["labels"].chunks == (128, 100)
    assert back["attrs"]["sample"] == 0.5 and back["attrs"]["source"] == raster["path"]

    with pytest.raises(SystemExit, match="already exists; pass --overwrite"):
        cli.main(args)
    # a group input needs --array
    group = str(tmp_path / "group.zarr")
    g = zarr.open_group(group, mode="w")
    g.create_array("bands", data=values)
    with pytest.raises(
        SystemExit, match=r"is a Zarr group; choose an array with --array \(one of \['bands'\]\)"
    ):
        cli.main(["segment", group, str(tmp_path / "o2.zarr"), "-k", "4", "--scheduler", address])
    node, source = _open_image(group, "bands")
    assert node.shape == values.shape and source == os.path.join(group, "bands")
    with pytest.raises(SystemExit, match=r"no array 'b' in .* \(arrays: \['bands'\]\)"):
        cli.main(["segment", group, str(tmp_path / "o2.zarr"), "-k", "4", "--array", "b"])
    with pytest.raises(SystemExit, match="must be a fraction in"):
        cli.main(
            ["segment", group, str(tmp_path / "o3.zarr"), "-k", "4", "--array", "bands", "--sample", "2"]
        )


def test_segment_bench_command_runs_small(tmp_path, capsys):
    """The documented scale-run command, at a small size: labels match the true classes, and
    the generated raster and the output are deleted afterwards."""
    work = tmp_path / "bench"
    assert (
        cli.main(
            [
                "segment-bench",
                str(work),
                "--height",
                "400",
                "--width",
                "300",
                "--chunk",
                "200",
                "--sample",
                "0.5",
                "--workers",
                "1",
                "--memory-limit",
                "1GiB",
            ]
        )
        == 0
    )
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["n_pixels"] == 400 * 300 and report["shape"] == [400, 300, 4]
    assert report["adjusted_rand_index_windows"] == [1.0] * 4
    assert not report["worker_restarted"] and report["peak_worker_rss_mib"] > 0
    assert os.listdir(work) == []
