"""Resumable fits: the driver killed mid-fit, resumed from its checkpoint, ends where an
uninterrupted fit ends; checkpoints of other data or settings are refused; writes are atomic."""

from __future__ import annotations

import json
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
from numpy.testing import assert_array_equal

import daskgmm
from daskgmm import GaussianMixture
from daskgmm.checkpoint import CheckpointError, read_checkpoint
from tests.conftest import make_mixture

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DASKGMM_FIT = [sys.executable, "-m", "daskgmm.cli", "--log-level", "INFO", "fit"]


@pytest.fixture(scope="module")
def X():
    return make_mixture(n_samples=3_000, n_features=3, n_components=3, seed=1)[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X = make_mixture(n_samples=80_000, n_features=5, n_components=3, seed=2, separation=6.0)[0]
    path = str(tmp_path_factory.mktemp("ckpt-data") / "X.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(5_000, 5), dtype="f8")
    z[:] = X
    return path


def _same(a, b):
    assert_array_equal(a.weights_, b.weights_)
    assert_array_equal(a.means_, b.means_)
    assert_array_equal(a.covariances_, b.covariances_)
    assert list(a.lower_bounds_) == list(b.lower_bounds_)
    assert a.n_iter_ == b.n_iter_ and a.converged_ == b.converged_


# ---------------------------------------------------------------------------
# the driver process killed with SIGKILL, resumed with --resume
# ---------------------------------------------------------------------------
def test_driver_killed_mid_fit_resumes_to_the_uninterrupted_result(cluster, store, tmp_path):
    address = cluster.scheduler_address
    common = [store, "-k", "3", "--seed", "0", "--max-iter", "12", "--tol", "0", "--scheduler", address]
    # the uninterrupted reference: the same command (the driver's k-means sample step runs in the
    # command's process; its OpenMP thread count changes the last bit, so compare like with like)
    ref_model = tmp_path / "ref.npz"
    r = subprocess.run(
        DASKGMM_FIT + common + ["--save-model", str(ref_model)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr

    ckpt, out = tmp_path / "fit.ckpt.npz", tmp_path / "out.npz"
    args = common + ["--checkpoint", str(ckpt), "--save-model", str(out)]
    # the killed run holds the data in cluster memory, the resumed one streams it: same numbers
    proc = subprocess.Popen(
        DASKGMM_FIT + args + ["--persist", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    n_iter = 0
    try:
        deadline = time.monotonic() + 240
        while n_iter < 3:
            assert proc.poll() is None, "the fit ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of iteration 3 appeared"
            if ckpt.exists():
                meta, _ = read_checkpoint(ckpt)  # always complete: written atomically
                n_iter = meta["states"][0]["n_iter"]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # killed before the end: no model
    meta, _ = read_checkpoint(ckpt)
    assert 3 <= meta["states"][0]["n_iter"] < 12 and not meta["finished"]

    r = subprocess.run(
        DASKGMM_FIT + args + ["--resume", "--json"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "it/s" not in r.stderr and "s/it" not in r.stderr  # no progress bar without a terminal
    assert "resuming from checkpoint" in r.stderr and "persist='auto'" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["n_iter"] == 12
    _same(daskgmm.load(out), daskgmm.load(ref_model))
    assert read_checkpoint(ckpt)[0]["finished"]

    # a checkpoint of other settings is refused by the command, with the reason
    r = subprocess.run(
        DASKGMM_FIT + [a if a != "3" else "4" for a in args] + ["--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "other settings" in r.stderr and "n_components=3 in the checkpoint, 4 now" in r.stderr


# ---------------------------------------------------------------------------
# in-process: interrupted anywhere (also between restarts), resumed exactly
# ---------------------------------------------------------------------------
class Interrupt(Exception):
    pass


RESTARTS = dict(n_components=3, n_init=2, max_iter=4, tol=0.0, random_state=7, chunk_size=1000)


@pytest.fixture(scope="module")
def ref_restarts(X):
    with dask.config.set(scheduler="threads"):
        return GaussianMixture(**RESTARTS).fit(X)


@pytest.fixture(autouse=True)
def threads():
    """In-process tests run on the threaded scheduler (the CLI test's commands use the cluster)."""
    with dask.config.set(scheduler="threads"):
        yield


@pytest.mark.parametrize("stop_at", [(0, 2), (1, 3)])
def test_resume_after_interruption_equals_uninterrupted(X, ref_restarts, tmp_path, stop_at):
    params, ref = RESTARTS, ref_restarts
    ckpt = tmp_path / "c.npz"

    def stop(state, record):
        if (state.start, record["iteration"]) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        GaussianMixture(checkpoint=ckpt, **params).fit(X, callback=stop)
    meta, _ = read_checkpoint(ckpt)
    # the starts share each pass: the checkpoint holds every start at that pass
    assert [s["n_iter"] for s in meta["states"]] == [stop_at[1]] * params["n_init"]
    resumed = GaussianMixture(checkpoint=ckpt, **params).fit(X, resume=True)
    _same(resumed, ref)
    assert [r["lower_bound"] for r in resumed.history_] == ref.lower_bounds_


def test_resume_of_a_finished_fit_does_no_work(X, tmp_path):
    ckpt = tmp_path / "c.npz"
    first = GaussianMixture(3, random_state=0, checkpoint=ckpt).fit(X)
    calls = []
    again = GaussianMixture(3, random_state=0, checkpoint=ckpt).fit(
        X, resume=True, callback=lambda s, r: calls.append(r)
    )
    assert calls == []
    _same(again, first)


def test_resume_without_a_checkpoint_file_starts_a_new_fit(X, tmp_path):
    ckpt = tmp_path / "sub" / "c.npz"
    gm = GaussianMixture(3, random_state=0, checkpoint=ckpt).fit(X, resume=True)
    _same(gm, GaussianMixture(3, random_state=0).fit(X))
    assert read_checkpoint(ckpt)[0]["finished"]


def test_checkpoint_contents_are_plain_arrays_and_json(X, tmp_path):
    ckpt = tmp_path / "c.npz"
    gm = GaussianMixture(3, random_state=0, checkpoint=ckpt, chunk_size=1000).fit(X)
    with np.load(ckpt, allow_pickle=False) as z:  # never needs pickle
        assert all(z[k].dtype != object for k in z.files)
    meta, arrays = read_checkpoint(ckpt)
    assert meta["data"]["shape"] == [3000, 3] and meta["data"]["dtype"] == "float64"
    assert meta["data"]["n_chunks"] == 3 and meta["data"]["content"]
    assert meta["best"]["lower_bounds"] == gm.lower_bounds_
    assert meta["settings"]["n_components"] == 3 and meta["settings"]["random_state"] == 0
    assert_array_equal(arrays["best_means"], gm.means_)
    assert meta["rng"]["name"] == "MT19937" and arrays["rng_keys"].shape == (624,)


def test_zarr_checkpoint_records_the_path(tmp_path):
    Xz = make_mixture(n_samples=2_000, n_features=2, n_components=2, seed=0)[0]
    path = tmp_path / "d.zarr"
    z = zarr.create_array(str(path), shape=Xz.shape, chunks=(500, 2), dtype="f8")
    z[:] = Xz
    ckpt = tmp_path / "c.npz"
    GaussianMixture(2, random_state=0, checkpoint=ckpt, max_iter=3).fit(str(path))
    assert read_checkpoint(ckpt)[0]["data"]["path"] == str(path.resolve())


# ---------------------------------------------------------------------------
# refusals, with what differs and what to do
# ---------------------------------------------------------------------------
def test_checkpoint_of_other_data_is_refused(X, tmp_path):
    ckpt = tmp_path / "c.npz"
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X)
    other = X.copy()
    other[0, 0] += 1.0  # same shape, dtype and chunks; other content
    with pytest.raises(CheckpointError, match=r"belongs to other data: content=.*fit without resume"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(other, resume=True)
    with pytest.raises(
        CheckpointError, match=r"belongs to other data: shape=\[3000, 3\] in the checkpoint, \[2999, 3\] now"
    ):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X[:-1], resume=True)
    with pytest.raises(CheckpointError, match=r"dtype='float64' in the checkpoint, 'float32' now"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X.astype(np.float32), resume=True)
    Xd = da.from_array(X, chunks=500)
    with pytest.raises(CheckpointError, match=r"n_chunks=\d+ in the checkpoint, 6 now"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(Xd, resume=True)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"covariance_type": "diag"}, "covariance_type='full' in the checkpoint, 'diag' now"),
        ({"tol": 1e-4}, "tol=0.001 in the checkpoint, 0.0001 now"),
        ({"random_state": 1}, "random_state=0 in the checkpoint, 1 now"),
        ({"means_init": np.zeros((3, 3))}, "means_init=None in the checkpoint, '[0-9a-f]+' now"),
    ],
)
def test_checkpoint_of_other_settings_is_refused(X, tmp_path, change, match):
    ckpt = tmp_path / "c.npz"
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X)
    params = dict(n_components=3, random_state=0, checkpoint=ckpt, max_iter=2)
    params.update(change)
    with pytest.raises(CheckpointError, match="was written with other settings: " + match):
        GaussianMixture(**params).fit(X, resume=True)


def test_damaged_or_foreign_files_are_refused(X, tmp_path):
    ckpt = tmp_path / "c.npz"
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is not a readable daskgmm checkpoint"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X, resume=True)
    model = tmp_path / "model.npz"
    GaussianMixture(3, random_state=0, max_iter=2).fit(X).save(model)
    with pytest.raises(CheckpointError, match="is not a daskgmm checkpoint"):
        GaussianMixture(3, random_state=0, checkpoint=model, max_iter=2).fit(X, resume=True)


def test_resume_needs_a_checkpoint(X):
    with pytest.raises(
        ValueError, match="resume=True needs a checkpoint to resume from: set checkpoint=PATH"
    ):
        GaussianMixture(3).fit(X, resume=True)


def test_checkpoint_parameter_is_checked(X):
    with pytest.raises(ValueError, match="The 'checkpoint' parameter of GaussianMixture must be a file path"):
        GaussianMixture(3, checkpoint=3).fit(X)


# ---------------------------------------------------------------------------
# atomic writes: a failed write leaves the previous checkpoint, and no stray file
# ---------------------------------------------------------------------------
def test_a_failed_write_leaves_the_previous_checkpoint_intact(X, tmp_path, monkeypatch):
    ckpt = tmp_path / "c.npz"
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X)
    before = ckpt.read_bytes()
    real_savez = np.savez

    def savez_then_fail(f, **arrays):
        real_savez(f, **arrays)  # bytes hit the temporary file...
        raise OSError("No space left on device")  # ...and then the disk fills up

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


# ---------------------------------------------------------------------------
# every path of the one engine resumes to the uninterrupted result
# ---------------------------------------------------------------------------
def _interrupted_then_resumed(fit, ckpt, stop_at_pass):
    """Run ``fit(callback, resume)`` once, interrupted in pass ``stop_at_pass``, then resume it."""

    def stop(state, record):
        if record["iteration"] == stop_at_pass:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(stop, False)
    meta, _ = read_checkpoint(ckpt)
    assert not meta["finished"] and max(s["n_iter"] for s in meta["states"]) == stop_at_pass
    return fit(None, True)


def _holes(X, seed=0, fraction=0.1):
    rng = np.random.RandomState(seed)
    X = X.copy()
    X[rng.rand(*X.shape) < fraction] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    return X


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(dict(n_init=3, init_params="random_from_data"), id="n_init=3"),
        pytest.param(dict(nan_policy="marginalize"), id="marginalize"),
        pytest.param(dict(nan_policy="omit", n_init=2), id="omit"),
        pytest.param(dict(incremental=2), id="incremental"),
    ],
)
def test_every_path_resumes_to_the_uninterrupted_result(X, tmp_path, params):
    data = _holes(X) if "nan_policy" in params else X
    data = da.from_array(data, chunks=500)
    kw = dict(n_components=3, max_iter=8, tol=0.0, random_state=3, **params)
    ref = GaussianMixture(**kw).fit(data)
    ckpt = tmp_path / "c.npz"

    def fit(callback, resume):
        return GaussianMixture(checkpoint=ckpt, **kw).fit(data, callback=callback, resume=resume)

    resumed = _interrupted_then_resumed(fit, ckpt, 3)
    _same(resumed, ref)
    assert [h["lower_bound"] for h in resumed.history_] == [h["lower_bound"] for h in ref.history_]


def test_reseed_resumes_to_the_uninterrupted_result(tmp_path):
    from tests.test_collapse import saturated_image

    X = saturated_image()
    kw = dict(
        n_components=5,
        reg_covar=0.0,
        random_state=0,
        on_collapse="reseed",
        chunk_size=1000,
        tol=0.0,
        max_iter=10,
    )
    ref = GaussianMixture(**kw).fit(X)
    events = [e for h in ref.history_ for e in h.get("reseeded", [])]
    assert events and events[0]["at"] == "initialisation"  # the reseed state must survive the checkpoint
    ckpt = tmp_path / "c.npz"

    def fit(callback, resume):
        return GaussianMixture(checkpoint=ckpt, **kw).fit(X, callback=callback, resume=resume)

    # interrupted in the first pass: the initialisation's re-seed events are still to be reported
    resumed = _interrupted_then_resumed(fit, ckpt, 1)
    _same(resumed, ref)
    assert resumed.history_[0].get("reseeded") == ref.history_[0].get("reseeded")


def test_select_model_resumes_to_the_uninterrupted_result(X, tmp_path):
    kw = dict(
        n_components=[1, 2, 3],
        covariance_types=["full", "diag"],
        random_state=0,
        max_iter=6,
        tol=0.0,
        n_init=2,
    )
    ref = daskgmm.select_model(X, **kw)
    ckpt = tmp_path / "sweep.npz"

    def fit(callback, resume):
        return daskgmm.select_model(X, checkpoint=ckpt, resume=resume, callback=callback, **kw)

    resumed = _interrupted_then_resumed(fit, ckpt, 4)
    assert resumed.table == ref.table
    for a, b in zip(resumed.estimators, ref.estimators):
        _same(a, b)
    # another sweep is refused with what differs
    with pytest.raises(
        CheckpointError, match=r"other settings: .*candidates=\[\[1, .full.\], \[2, .full.\], \[3"
    ):
        daskgmm.select_model(X, checkpoint=ckpt, resume=True, **dict(kw, n_components=[1, 2]))


def test_a_checkpoint_of_the_old_format_is_refused_with_a_remedy(X, tmp_path):
    ckpt = tmp_path / "c.npz"
    GaussianMixture(2, random_state=0, max_iter=2, checkpoint=ckpt).fit(X)
    meta, arrays = read_checkpoint(ckpt)
    meta["format_version"] = 1
    np.savez(ckpt, metadata=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    with pytest.raises(
        CheckpointError, match="checkpoint format 1, which this daskgmm cannot continue: fit without"
    ):
        GaussianMixture(2, random_state=0, max_iter=2, checkpoint=ckpt).fit(X, resume=True)


# ---------------------------------------------------------------------------
# resume only the same data: files, stores rewritten in place, other dask arrays (issue 14)
# ---------------------------------------------------------------------------
def test_resume_with_another_npy_file_is_refused(X, cluster, tmp_path, capsys):
    """The README's requeue pattern with the wrong file: refused, not a's model for b."""
    from daskgmm.cli import main

    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, X)
    np.save(b, X[::-1].copy())  # same shape and dtype, other values
    ckpt = str(tmp_path / "fit.ckpt.npz")
    common = ["-k", "3", "--seed", "0", "--max-iter", "3", "--checkpoint", ckpt, "--scheduler"]
    assert main(["fit", str(a), *common, cluster.scheduler_address]) == 0
    for other in (b, a):
        if other == a:  # the same path rewritten
            np.save(a, X + 1.0)
        with pytest.raises(SystemExit, match=r"belongs to other data: content=.*another array, or a file"):
            main(["fit", str(other), *common, cluster.scheduler_address, "--resume"])
    capsys.readouterr()


def test_resume_with_a_zarr_store_rewritten_in_place_is_refused(X, tmp_path):
    path = str(tmp_path / "d.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(500, 3), dtype="f8")
    z[:] = X
    ckpt = tmp_path / "c.npz"
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(path)
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(path, resume=True)  # same: fine
    z[1000:1500] = X[:500]  # one chunk rewritten in place, same path and shape
    with pytest.raises(CheckpointError, match=r"zarr_chunk_files=.*the Zarr store's chunk files changed"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(path, resume=True)


def test_resume_with_another_dask_array_of_the_same_shape_is_refused(X, tmp_path):
    ckpt = tmp_path / "c.npz"
    first = da.from_array(X, chunks=(500, 3))
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(first)
    other = da.random.RandomState(0).normal(size=X.shape, chunks=(500, 3))
    with pytest.raises(CheckpointError, match=r"belongs to other data: content="):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(other, resume=True)


@pytest.mark.parametrize("changes", [{"data": []}, {"settings": None}, {"states": [1]}, {"rng": "x"}])
def test_malformed_checkpoint_metadata_raises_checkpoint_error(X, tmp_path, changes):
    ckpt = tmp_path / "c.npz"
    GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X)
    with np.load(ckpt, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(bytes(data["metadata"]).decode())
    meta.update(changes)
    data["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(ckpt, **data)
    with pytest.raises(CheckpointError, match="damaged daskgmm checkpoint"):
        GaussianMixture(3, random_state=0, checkpoint=ckpt, max_iter=2).fit(X, resume=True)
