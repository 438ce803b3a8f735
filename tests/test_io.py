"""Model files round-trip exactly and never need pickle."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import daskgmm
from daskgmm import GaussianMixture
from daskgmm.io import FORMAT_VERSION
from tests.conftest import make_mixture

COVARIANCE_TYPE = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def X():
    return make_mixture(n_samples=400, n_features=3, n_components=3, seed=2)[0]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPE)
def test_round_trip_is_exact(tmp_path, X, covariance_type):
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, reg_covar=1e-5).fit(X)
    path = tmp_path / "model.npz"
    gm.save(path)
    loaded = daskgmm.load(path)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gm, name))
    assert loaded.get_params() == {**gm.get_params()}
    assert (loaded.converged_, loaded.n_iter_, loaded.lower_bound_, loaded.n_features_in_) == (
        gm.converged_,
        gm.n_iter_,
        gm.lower_bound_,
        gm.n_features_in_,
    )
    assert loaded.lower_bounds_ == gm.lower_bounds_
    np.testing.assert_array_equal(loaded.predict(X), gm.predict(X))
    np.testing.assert_array_equal(loaded.score_samples(X), gm.score_samples(X))
    # nothing but the final file is left in the directory
    assert os.listdir(tmp_path) == ["model.npz"]


def test_file_records_the_version_and_needs_no_pickle(tmp_path, X):
    gm = GaussianMixture(2, random_state=0).fit(X)
    gm.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        meta = json.loads(bytes(z["metadata"]).decode())
        assert all(z[k].dtype != object for k in z.files)
    assert meta["daskgmm_version"] == daskgmm.__version__
    assert meta["format_version"] == FORMAT_VERSION
    assert daskgmm.load(tmp_path / "m.npz").saved_with_version_ == daskgmm.__version__


def test_init_arrays_survive_the_round_trip(tmp_path, X):
    gm = GaussianMixture(2, means_init=X[:2], random_state=0).fit(X)
    gm.save(tmp_path / "m.npz")
    loaded = daskgmm.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.means_init, X[:2])


def _rewrite_metadata(src, dst, **changes):
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(bytes(data["metadata"]).decode())
    meta.update(changes)
    data["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **data)


def test_newer_format_is_refused_with_upgrade_hint(tmp_path, X):
    gm = GaussianMixture(2, random_state=0).fit(X)
    gm.save(tmp_path / "m.npz")
    _rewrite_metadata(
        tmp_path / "m.npz", tmp_path / "new.npz", format_version=FORMAT_VERSION + 1, daskgmm_version="9.0"
    )
    with pytest.raises(ValueError, match="written by daskgmm 9.0 in model format .*Upgrade daskgmm"):
        daskgmm.load(tmp_path / "new.npz")


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, metadata=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects.*never need pickle"):
        daskgmm.load(path)


def test_other_files_are_refused(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.arange(3))
    with pytest.raises(ValueError, match="not a daskgmm model file"):
        daskgmm.load(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a daskgmm model file"):
        daskgmm.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="No model file"):
        daskgmm.load(tmp_path / "missing.npz")


def test_saving_an_unfitted_model_is_refused(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        GaussianMixture(2).save(tmp_path / "m.npz")
    assert not any(tmp_path.iterdir())


def test_float32_attributes_round_trip(tmp_path, X):
    """A model fitted on float32 data has float32 attributes (as scikit-learn); the file keeps them."""
    X32 = X.astype(np.float32)
    gm = GaussianMixture(
        3, covariance_type="diag", random_state=0, weights_init=np.full(3, 1 / 3, np.float32)
    ).fit(X32)
    gm.save(tmp_path / "model.npz")
    loaded = daskgmm.load(tmp_path / "model.npz")
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(loaded, name).dtype == np.float32, name
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gm, name))
    assert loaded.weights_init.dtype == np.float32
    np.testing.assert_array_equal(loaded.score_samples(X32), gm.score_samples(X32))


# --------------------------------------------------------------------------
# the Zarr writer replaces only its own complete outputs (issue 14, case 1)
# --------------------------------------------------------------------------
def _labels(n=40):
    import dask.array as da

    return {"labels": da.arange(n, chunks=10, dtype=np.int32)}


def test_overwrite_replaces_only_a_complete_daskgmm_output(tmp_path):
    from daskgmm._zarr_output import open_segmentation, write_zarr

    out = tmp_path / "seg.zarr"
    write_zarr(out, _labels(), dims={"labels": ["x"]})
    write_zarr(out, _labels(20), dims={"labels": ["x"]}, overwrite=True)  # its own output: replaced
    assert open_segmentation(out)["labels"].shape == (20,)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    # anything else is refused, with what it is, and left untouched
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"is a directory with 1 entry that is not a daskgmm output"):
        write_zarr(other, _labels(), dims={"labels": ["x"]}, overwrite=True)
    plain = tmp_path / "file.bin"
    plain.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match=r"is a file of 10 bytes; overwrite=True .* replaces only"):
        write_zarr(plain, _labels(), dims={"labels": ["x"]}, overwrite=True)
    import zarr

    zarr.create_array(str(tmp_path / "img.zarr"), shape=(4,), dtype="f8")
    with pytest.raises(ValueError, match="a Zarr store that is not a complete daskgmm output"):
        write_zarr(tmp_path / "img.zarr", _labels(), dims={"labels": ["x"]}, overwrite=True)
    # a directory holding the input is refused even if it were replaceable
    with pytest.raises(ValueError, match="is a directory holding the input image"):
        write_zarr(tmp_path, _labels(), dims={"labels": ["x"]}, source=str(tmp_path / "img.zarr"))
    assert (other / "keep.txt").read_text() == "precious" and plain.read_bytes() == b"x" * 10
    assert os.path.exists(tmp_path / "img.zarr" / "zarr.json")


def _another_run_finishes(block, path):
    """Stands for a second run that places its output while this one is still writing."""
    try:
        os.mkdir(path)
    except FileExistsError:  # another task of this write got there first
        return block
    with open(os.path.join(path, "first.txt"), "w") as f:
        f.write("first run's output")
    return block


def test_an_output_that_appears_during_the_write_survives(tmp_path):
    """Placement is atomic no-replace: the later of two runs fails and the first output stays."""
    from daskgmm._zarr_output import write_zarr

    out = str(tmp_path / "seg.zarr")
    arrays = {
        "labels": _labels()["labels"].map_blocks(_another_run_finishes, out, meta=np.array((), np.int32))
    }
    with pytest.raises(FileExistsError, match="appeared while this output was being written"):
        write_zarr(out, arrays, dims={"labels": ["x"]})
    assert os.listdir(out) == ["first.txt"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


# --------------------------------------------------------------------------
# outputs checked before the fit, the umask honoured, strict JSON (issue 14, case 8)
# --------------------------------------------------------------------------
def test_save_model_to_a_directory_fails_before_the_fit(tmp_path, capsys):
    from daskgmm.cli import main

    data = tmp_path / "x.npy"
    np.save(data, make_mixture(n_samples=200, n_features=2, n_components=2, seed=0)[0])
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for target, message in [
        (tmp_path, "--save-model file .* is a directory; give a file name"),
        (blocker / "m.npz", "cannot be written: .* is not a directory"),
    ]:
        # no scheduler is reachable at this address: refusing before any connection or fit
        with pytest.raises(SystemExit, match=message):
            main(
                ["fit", str(data), "-k", "2", "--save-model", str(target), "--scheduler", "tcp://127.0.0.1:1"]
            )
    with pytest.raises(SystemExit, match="--checkpoint file .* is a directory"):
        main(["fit", str(data), "-k", "2", "--checkpoint", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_model_and_checkpoint_files_honour_the_umask(tmp_path, X, umask, mode):
    import dask

    old = os.umask(umask)
    try:
        with dask.config.set(scheduler="threads"):
            gm = GaussianMixture(2, random_state=0, max_iter=2, checkpoint=tmp_path / "c.npz").fit(X)
        gm.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.npz").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "c.npz").st_mode & 0o777 == mode


def test_segmentation_attributes_are_strict_json(tmp_path):
    import dask

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    img = np.random.default_rng(0).normal(size=(40, 30, 2))
    img[:3] = np.nan
    with dask.config.set(scheduler="threads"):
        seg = daskgmm.segment(img, 2, nodata=np.float64("nan"), random_state=0)
        seg.to_zarr(tmp_path / "o.zarr")
    with open(tmp_path / "o.zarr" / "zarr.json") as f:
        attrs = json.load(f, parse_constant=refuse)["attributes"]
    assert attrs["nodata"] == "NaN"
    back = daskgmm.image.open_segmentation(tmp_path / "o.zarr")
    assert back["model"].history_[0]["change"] == float("inf")


# --------------------------------------------------------------------------
# loaded models are validated; malformed files raise ValueError (issue 14, case 5)
# --------------------------------------------------------------------------
def _rewrite_arrays(src, dst, **changes):
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data.update(changes)
    np.savez(dst, **data)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {"weights_": a["weights_"] * 0.5}, "weights_ must be non-negative and sum to 1"),
        (lambda a: {"weights_": a["weights_"][:2]}, r"means_ has shape \(3, 3\); a 'full' model of 2"),
        (lambda a: {"means_": a["means_"][:, :2]}, r"means_ has shape \(3, 2\); .* has \(3, 3\)"),
        (lambda a: {"precisions_cholesky_": -a["precisions_cholesky_"]}, "not the Cholesky factor of"),
        (lambda a: {"covariances_": a["covariances_"] * np.nan}, "covariances_ holds NaN"),
    ],
)
def test_load_validates_the_arrays(tmp_path, X, change, match):
    gm = GaussianMixture(3, random_state=0).fit(X)
    gm.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    _rewrite_arrays(tmp_path / "m.npz", tmp_path / "bad.npz", **change(arrays))
    with pytest.raises(ValueError, match=match):
        daskgmm.load(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "changes",
    [{"params": None}, {"params": {"no_such_param": 1}}, {"fitted": {}}, {"fitted": []}, {"class": 3}],
)
def test_malformed_metadata_raises_value_error(tmp_path, X, changes):
    GaussianMixture(2, random_state=0).fit(X).save(tmp_path / "m.npz")
    _rewrite_metadata(tmp_path / "m.npz", tmp_path / "bad.npz", **changes)
    if "class" in changes:  # not used to build the model: still loads
        daskgmm.load(tmp_path / "bad.npz")
        return
    with pytest.raises(ValueError, match="Malformed daskgmm model"):
        daskgmm.load(tmp_path / "bad.npz")
    with np.load(tmp_path / "m.npz") as z:
        data = {k: z[k] for k in z.files if k != "means_"}
    np.savez(tmp_path / "no_means.npz", **data)
    with pytest.raises(ValueError, match="Malformed daskgmm model \\(missing entry 'means_'\\)"):
        daskgmm.load(tmp_path / "no_means.npz")
