"""Object storage against a real S3-compatible server (issue 16).

A ``moto`` S3 server runs on 127.0.0.1 (a free port) for this module, in a thread of this
process. Nothing here changes ``os.environ``: the Python API gets explicit
``storage_options`` (the fake credentials moto accepts and its endpoint), which travel with
the pickled filesystem to the worker processes of the real multi-process ``cluster``; the
commands get ``--storage-option`` or, for a command that starts its own local cluster,
the ``AWS_*`` variables in their environment (as a user's shell would have them).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import zarr
from sklearn.mixture import GaussianMixture as SkGMM

from daskgmm import GaussianMixture, load, segment, select_model
from daskgmm._storage import zarr_store
from daskgmm.datasets import make_mixture
from daskgmm.segmentation import open_segmentation


class S3:
    def __init__(self, endpoint: str, bucket: str):
        self.endpoint, self.bucket = endpoint, bucket
        self.options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint},
        }
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}/{name}"

    @property
    def cli_options(self) -> list[str]:
        import json

        return [
            "--storage-option",
            "key=testing",
            "--storage-option",
            "secret=testing",
            "--storage-option",
            "client_kwargs=" + json.dumps(self.options["client_kwargs"]),
        ]

    def fs(self):
        import s3fs

        fs = s3fs.S3FileSystem(**self.options)
        fs.invalidate_cache()
        return fs

    def put_zarr(self, url: str, data: np.ndarray, chunks) -> None:
        from daskgmm._storage import using

        with using(self.options):
            z = zarr.create_array(
                zarr_store(url, read_only=False), shape=data.shape, chunks=chunks, dtype=data.dtype
            )
        z[...] = data


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s = S3(f"http://{host}:{port}", "daskgmm-test")
    s.fs().mkdir(s.bucket)
    try:
        yield s
    finally:
        server.stop()


@pytest.fixture(scope="module")
def data(s3, tmp_path_factory):
    """A 3-component mixture (with its true parameters) as a local Zarr array and its copy on S3."""
    X, _, weights, means, _ = make_mixture(n_samples=2000, n_features=3, n_components=3, seed=3, separation=6)
    local = str(tmp_path_factory.mktemp("data") / "x.zarr")
    zarr.create_array(local, shape=X.shape, chunks=(500, 3), dtype=X.dtype)[...] = X
    url = s3.url("x.zarr")
    s3.put_zarr(url, X, (500, 3))
    return X, weights, means, local, url


def _sorted(means):
    return means[np.lexsort(means.T[::-1])]


def test_fit_from_s3_on_a_cluster_equals_the_local_fit_and_the_truth(client, s3, data):
    X, weights, means, local, url = data
    kw = dict(n_components=3, random_state=0, persist=False)  # streamed: workers read S3 every pass
    from_s3 = GaussianMixture(**kw).fit(url, storage_options=s3.options)
    from_disk = GaussianMixture(**kw).fit(local)
    np.testing.assert_array_equal(from_s3.means_, from_disk.means_)  # same chunks, same reduction
    np.testing.assert_array_equal(from_s3.covariances_, from_disk.covariances_)
    np.testing.assert_allclose(_sorted(from_s3.means_), _sorted(means), atol=0.15)
    assert from_s3.history_[-1]["bytes_read"] == X.nbytes == from_disk.history_[-1]["bytes_read"]


def test_select_model_and_checkpoint_resume_on_s3(client, s3, data):
    X, weights, means, local, url = data
    sel = select_model(url, [2, 3], random_state=0, storage_options=s3.options)
    assert sel.best_estimator.n_components == 3  # the true number of components

    class Interrupt(Exception):
        pass

    def stop(state, record):
        if record["iteration"] == 2:
            raise Interrupt

    ckpt = s3.url("ckpt.npz")
    kw = dict(n_components=3, random_state=1, init_params="random_from_data")
    with pytest.raises(Interrupt):
        GaussianMixture(checkpoint=ckpt, **kw).fit(url, callback=stop, storage_options=s3.options)
    calls = []
    resumed = GaussianMixture(checkpoint=ckpt, **kw).fit(
        url, resume=True, callback=lambda s, r: calls.append(r["iteration"]), storage_options=s3.options
    )
    whole = GaussianMixture(**kw).fit(local)
    assert whole.n_iter_ > 2 and calls[0] == 3  # continued after the second iteration, not from the start
    np.testing.assert_array_equal(resumed.means_, whole.means_)
    np.testing.assert_array_equal(resumed.precisions_cholesky_, whole.precisions_cholesky_)
    assert resumed.n_iter_ == whole.n_iter_
    from daskgmm._storage import using
    from daskgmm.checkpoint import read_checkpoint

    with using(s3.options):
        meta, _ = read_checkpoint(ckpt)
    assert meta["data"]["path"] == url and meta["data"]["zarr_chunk_files"].startswith("4 chunk files")


def _sklearn_like(model) -> SkGMM:
    """scikit-learn's GaussianMixture with ``model``'s fitted parameters (an independent predict)."""
    sk = SkGMM(n_components=model.n_components, covariance_type=model.covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(sk, name, np.asarray(getattr(model, name), dtype=np.float64))
    return sk


@pytest.fixture(scope="module")
def raster(s3):
    X = make_mixture(n_samples=3000, n_features=3, n_components=3, seed=5, separation=6)[0]
    img = X.reshape(60, 50, 3)
    img[:5] = 0.0
    url = s3.url("img.zarr")
    s3.put_zarr(url, img, (20, 25, 3))
    return img, url


def test_segment_to_s3_and_model_file_on_s3(client, s3, raster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img, url = raster
    seg = segment(url, 3, nodata=0, random_state=0, storage_options=s3.options)
    out = s3.url("seg.zarr")
    assert seg.to_zarr(out, probabilities=True, storage_options=s3.options) == out
    back = open_segmentation(out, storage_options=s3.options)
    labels, proba = back["labels"].compute(), back["probabilities"].compute()
    pixels = img.reshape(-1, 3)
    valid = ~np.all(pixels == 0, axis=1)
    sk = _sklearn_like(back["model"])
    np.testing.assert_array_equal(labels.reshape(-1)[valid], sk.predict(pixels[valid]))
    assert np.all(labels.reshape(-1)[~valid] == -1)
    np.testing.assert_allclose(proba.reshape(-1, 3)[valid], sk.predict_proba(pixels[valid]), atol=1e-5)
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: no "falling back" warning
        ds = xr.open_zarr(out, storage_options=s3.options)
    np.testing.assert_array_equal(ds["labels"].values, labels)
    # a model file on S3: one object, read back exactly; nothing written locally
    model_url = s3.url("model.npz")
    seg.model.save(model_url, storage_options=s3.options)
    again = load(model_url, storage_options=s3.options)
    np.testing.assert_array_equal(again.means_, seg.model.means_)
    np.testing.assert_array_equal(again.precisions_cholesky_, seg.model.precisions_cholesky_)
    assert os.listdir(tmp_path) == []  # once: ./s3:/daskgmm-test/.../model.npz


def _segment_cmd(s3, image, out, cluster, *extra):
    return [
        sys.executable,
        "-m",
        "daskgmm.cli",
        "segment",
        image,
        out,
        "-k",
        "3",
        "--nodata",
        "0",
        "--seed",
        "0",
        "--sample",
        "0.2",
        "--probabilities",
        "--no-progress",
        "--scheduler",
        cluster.scheduler_address,
        *s3.cli_options,
        *extra,
    ]


def test_cli_segment_to_s3_killed_mid_write_is_refused_then_replaced(s3, cluster, tmp_path):
    X = make_mixture(n_samples=64 * 64, n_features=3, n_components=3, seed=7, separation=6)[0]
    image = s3.url("big.zarr")
    s3.put_zarr(image, X.reshape(64, 64, 3), (8, 8, 3))  # 64 chunks per output: a write of many PUTs
    out = s3.url("seg.zarr")
    fs = s3.fs()
    proc = subprocess.Popen(
        _segment_cmd(s3, image, out, cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    prefix = out.split("://", 1)[1]
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            fs.invalidate_cache()
            if fs.exists(f"{prefix}/labels/c") or fs.exists(f"{prefix}/probabilities/c"):
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the command finished before a chunk was seen: " + proc.stderr.read().decode()
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    fs.invalidate_cache()
    assert fs.find(prefix)  # the killed write left keys under OUT ...
    with pytest.raises(ValueError, match=r"incomplete daskgmm output \(its write was interrupted\).*rerun"):
        open_segmentation(out, storage_options=s3.options)  # ... that readers refuse
    from daskgmm.cli import main

    with pytest.raises(
        SystemExit, match=r"already exists; pass --overwrite .*it is an incomplete daskgmm output"
    ):
        main(_segment_cmd(s3, image, out, cluster)[3:])
    model_url = s3.url("model.npz")
    # the rerun in this process (one interpreter start less), on the same cluster
    assert main(_segment_cmd(s3, image, out, cluster, "--overwrite", "--save-model", model_url)[3:]) == 0
    back = open_segmentation(out, storage_options=s3.options)
    labels = back["labels"].compute().reshape(-1)
    np.testing.assert_array_equal(labels, _sklearn_like(back["model"]).predict(X))
    assert back["probabilities"].shape == (64, 64, 3)
    saved = load(model_url, storage_options=s3.options)  # --save-model to S3
    np.testing.assert_array_equal(saved.means_, back["model"].means_)


def test_credentials_and_endpoint_from_the_environment(s3, data, monkeypatch, tmp_path):
    """No storage_options: fsspec/s3fs find the AWS_* variables by themselves (here with dask's
    threaded scheduler: worker processes need the same variables in their own environment)."""
    X, weights, means, local, url = data
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(key, s3.env[key])
    monkeypatch.chdir(tmp_path)
    model = GaussianMixture(3, random_state=0).fit(url)
    model.save(url.replace("x.zarr", "env-model.npz"))
    np.testing.assert_array_equal(load(url.replace("x.zarr", "env-model.npz")).means_, model.means_)
    np.testing.assert_array_equal(model.means_, GaussianMixture(3, random_state=0).fit(local).means_)
    assert os.listdir(tmp_path) == []


def test_cli_fit_from_s3_with_checkpoint_and_model_on_s3(s3, data, cluster, capsys):
    """``daskgmm fit DATA`` from S3 on the cluster, --checkpoint and --save-model on S3, then
    --resume from that checkpoint: the same model, equal to the fit of the local copy."""
    from daskgmm.cli import main

    X, weights, means, local, url = data
    model_url, ckpt = s3.url("m.npz"), s3.url("c.npz")
    cmd = [
        "fit",
        url,
        "-k",
        "3",
        "--seed",
        "0",
        "--checkpoint",
        ckpt,
        "--scheduler",
        cluster.scheduler_address,
    ]
    assert main([*cmd, "--save-model", model_url, "--json", *s3.cli_options]) == 0
    first = load(model_url, storage_options=s3.options)
    np.testing.assert_array_equal(first.means_, GaussianMixture(3, random_state=0).fit(local).means_)
    assert main([*cmd, "--resume", "--save-model", model_url, "--json", *s3.cli_options]) == 0
    np.testing.assert_array_equal(load(model_url, storage_options=s3.options).means_, first.means_)
    capsys.readouterr()


def test_cli_refuses_what_it_cannot_read_or_write(s3, data, capsys):
    from daskgmm.cli import main

    *_, local, url = data
    with pytest.raises(SystemExit) as e:
        main(["fit", local, "-k", "2", "--save-model", "gs://bucket/m.npz"])
    assert "pip install gcsfs" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["segment", local, "foo://bucket/out.zarr", "-k", "2"])
    assert "fsspec knows no protocol 'foo'" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["fit", url, "-k", "2", "--storage-option", "no-equals-sign"])
    assert e.value.code == 2 and "is not KEY=VALUE" in capsys.readouterr().err


# --------------------------------------------------------------------------
# outputs checked before the fit; storage_options on every data-taking method; the benchmark
# --------------------------------------------------------------------------
def _probes(s3) -> list[str]:
    from daskgmm._storage import PROBE_PREFIX

    return [k for k in s3.fs().find(s3.bucket) if PROBE_PREFIX in k]


def test_outputs_in_a_missing_bucket_are_refused_before_any_fit(s3, data, raster, tmp_path, monkeypatch):
    """A checkpoint, model file or segmentation output in a bucket that does not exist fails at
    once, with what is wrong and how to fix it: no EM iteration runs (the callback is never
    called), no cluster is started by the command, nothing is created (no bucket either)."""
    from daskgmm.cli import main
    from daskgmm.image import predict_image

    monkeypatch.chdir(tmp_path)
    X, weights, means, local, url = data
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}"
    message = r"its bucket 'no-such-bucket-\w+' does not exist.*Create the bucket first"
    calls = []
    with pytest.raises(ValueError, match=message):
        GaussianMixture(3, checkpoint=f"{missing}/c.npz").fit(
            url, callback=lambda s, r: calls.append(r), storage_options=s3.options
        )
    with pytest.raises(ValueError, match=message):
        select_model(
            url, [2, 3], checkpoint=f"{missing}/sel.npz", callback=lambda s, r: calls.append(r),
            storage_options=s3.options,
        )  # fmt: skip
    assert calls == []
    model = GaussianMixture(3, random_state=0).fit(X)
    seg = predict_image(model, raster[0])
    with pytest.raises(ValueError, match=message):
        seg.to_zarr(f"{missing}/seg.zarr", storage_options=s3.options)
    # the commands: the error before connecting (no --scheduler: a fit would start a cluster)
    for cmd in (
        ["fit", url, "-k", "3", "--checkpoint", f"{missing}/c.npz"],
        ["fit", url, "-k", "3", "--save-model", f"{missing}/m.npz"],
        ["segment", raster[1], f"{missing}/seg.zarr", "-k", "3"],
        ["segment", raster[1], s3.url("seg.zarr"), "-k", "3", "--save-model", f"{missing}/m.npz"],
    ):
        with pytest.raises(SystemExit, match=message):
            main([*cmd, "--no-progress", *s3.cli_options])
    assert missing.split("//")[1] not in s3.fs().ls("")  # never created
    assert os.listdir(tmp_path) == [] and _probes(s3) == []


def test_a_writable_output_is_probed_and_the_probe_removed(s3, data):
    """A write probe is put next to the output and deleted (nothing else is touched); with
    credentials the store does not accept (moto's IAM simulation switched on), outputs are
    refused up front, saying where credentials come from."""
    from moto.core.authorization import enable_iam_authentication

    from daskgmm._storage import using
    from daskgmm.io import check_writable

    X, weights, means, local, url = data
    fs = s3.fs()
    neighbour = s3.url("keep.txt")
    fs.pipe_file(neighbour.split("://")[1], b"not daskgmm's")
    before = sorted(fs.find(s3.bucket))
    with using(s3.options):
        check_writable(neighbour.replace("keep.txt", "model.npz"), "--save-model file")
    fs.invalidate_cache()
    assert sorted(fs.find(s3.bucket)) == before and _probes(s3) == []
    denied = r"cannot be written: .*AWS Access Key Id you provided does not exist.*--storage-option"
    calls = []
    with enable_iam_authentication():  # "testing" is no IAM user: every request is refused
        with pytest.raises(ValueError, match=denied):
            with using(s3.options):
                check_writable(s3.url("model.npz"), "--save-model file")
        with pytest.raises(ValueError, match=denied):
            GaussianMixture(3, checkpoint=s3.url("c.npz")).fit(
                X, callback=lambda s, r: calls.append(r), storage_options=s3.options
            )
    assert calls == []


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a short variational fit
def test_predict_score_and_bayesian_fit_take_storage_options(s3, data):
    """Every method that takes X accepts a Zarr URL with storage_options: predictions equal
    scikit-learn's with the same parameters on the in-memory data."""
    from daskgmm import BayesianGaussianMixture

    X, weights, means, local, url = data
    opts = s3.options
    model = GaussianMixture(3, random_state=0).fit(X)
    sk = _sklearn_like(model)
    np.testing.assert_array_equal(model.predict(url, storage_options=opts).compute(), sk.predict(X))
    np.testing.assert_allclose(
        model.predict_proba(url, storage_options=opts).compute(), sk.predict_proba(X), atol=1e-10
    )
    np.testing.assert_allclose(
        model.score_samples(url, storage_options=opts).compute(), sk.score_samples(X), rtol=1e-10
    )
    assert model.score(url, storage_options=opts) == pytest.approx(sk.score(X), rel=1e-10)
    assert model.bic(url, storage_options=opts) == pytest.approx(sk.bic(X), rel=1e-10)
    assert model.aic(url, storage_options=opts) == pytest.approx(sk.aic(X), rel=1e-10)
    labels = GaussianMixture(3, random_state=0).fit_predict(url, storage_options=opts).compute()
    np.testing.assert_array_equal(labels, sk.predict(X))  # the same fit, on the same chunks
    kw = dict(n_components=3, random_state=0, max_iter=20)
    bgm = BayesianGaussianMixture(**kw).fit(url, storage_options=opts)
    on_disk = BayesianGaussianMixture(**kw).fit(local)
    np.testing.assert_array_equal(bgm.means_, on_disk.means_)
    fp = BayesianGaussianMixture(**kw).fit_predict(url, storage_options=opts).compute()
    np.testing.assert_array_equal(fp, on_disk.predict(X))


def test_bench_storage_rows_agree_and_read_the_data_once_per_iteration():
    from daskgmm.benchmarks.storage import bench_storage, format_storage

    n, d = 2000, 2
    rows = bench_storage(n=n, d=d, k=2, n_chunks=4, iters=2, workers=1, seed=0)
    assert [r["source"] for r in rows] == ["local disk", "S3 (moto, 127.0.0.1)"]
    for r in rows:
        assert r["same_fit"] is True  # the two fits agree bit for bit
        assert r["bytes_per_iter"] == n * d * 8  # every chunk read once per streamed iteration
        assert r["iterations"] == 2
    table = format_storage(rows, n, d, 4, 1)
    assert table.count("| True |") == 2 and "S3 (moto, 127.0.0.1)" in table
