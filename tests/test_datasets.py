"""Synthetic data (daskgmm.datasets): seeded, returns the parameters it drew from, blocks are pure."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import zarr

from daskgmm import datasets


def test_make_mixture_is_seeded_and_returns_its_parameters():
    a = datasets.make_mixture(2000, 3, 4, seed=1)
    b = datasets.make_mixture(2000, 3, 4, seed=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a.X.shape == (2000, 3) and a.labels.shape == (2000,)
    assert a.weights.shape == (4,) and a.means.shape == (4, 3) and a.covariances.shape == (4, 3, 3)
    assert a.weights.sum() == pytest.approx(1.0)
    np.testing.assert_array_less(np.abs(a.means), 4.0)  # separation
    for k in range(4):
        rows = a.X[a.labels == k]
        if len(rows) > 300:
            np.testing.assert_allclose(rows.mean(axis=0), a.means[k], atol=0.3)


def test_make_mixture_uses_given_parameters_and_continues_the_generator():
    w, m, c = np.array([0.5, 0.5]), np.array([[0.0, 0.0], [10.0, 10.0]]), np.stack([np.eye(2)] * 2)
    rng = np.random.default_rng(3)
    mix = datasets.make_mixture(500, 2, 2, rng, weights=w, means=m, covariances=c)
    assert np.array_equal(mix.weights, w) and np.array_equal(mix.means, m)
    # only the labels and the noise were drawn from the generator
    ref = np.random.default_rng(3)
    labels = ref.choice(2, size=500, p=w)
    z = ref.standard_normal((500, 2))
    np.testing.assert_array_equal(mix.labels, labels)
    np.testing.assert_allclose(mix.X, m[labels] + z, rtol=0, atol=1e-15)
    assert rng.random() == ref.random()


def test_make_mixture_matmul_agrees_and_bad_shapes_are_refused():
    a = datasets.make_mixture(300, 5, 3, seed=2)
    b = datasets.make_mixture(300, 5, 3, seed=2, matmul=True)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-13, atol=1e-13)
    assert datasets.make_mixture(10, 2, 2, seed=0, dtype=np.float32).X.dtype == np.float32
    with pytest.raises(ValueError, match=r"do not fit n_components=3, n_features=2"):
        datasets.make_mixture(10, 2, 3, means=np.zeros((2, 2)))


def test_make_blobs_continues_one_stream():
    rng = np.random.RandomState(0)
    first = datasets.make_blobs(1000, 2, 3, rng, separation=4.0)
    second = datasets.make_blobs(1000, 2, 3, rng, separation=2.0)
    again = datasets.make_blobs(1000, 2, 3, 0, separation=4.0)
    np.testing.assert_array_equal(first.X, again.X)
    assert not np.array_equal(first.means, second.means)
    assert first.covariances.shape == (3,) and np.all(
        (first.covariances >= 0.49) & (first.covariances <= 1.69)
    )


@pytest.mark.parametrize("seed_by, concentration", [("chunk", None), ("row", 10.0)])
def test_blobs_array_blocks_are_pure_and_written_as_generated(tmp_path, seed_by, concentration):
    opts = dict(seed_by=seed_by, concentration=concentration, separation=5.0)
    X, params = datasets.blobs_array(10_001, 3, 4, 3000, seed=5, **opts)
    assert X.chunks == ((3000, 3000, 3000, 1001), (3,))
    with dask.config.set(scheduler="sync"):
        full = X.compute()
        np.testing.assert_array_equal(X.blocks[2].compute(), full[6000:9000])  # a block alone: same rows
    for got, want in zip(
        params, datasets.blob_parameters(3, 4, 5, separation=5.0, concentration=concentration)
    ):
        np.testing.assert_array_equal(got, want)
    if concentration is None:
        np.testing.assert_array_equal(params.weights, np.full(4, 0.25))
    path = tmp_path / "x.zarr"
    with dask.config.set(scheduler="sync"):
        written = datasets.write_blobs_zarr(path, 10_001, 3, 4, 3000, seed=5, compressed=False, **opts)
    z = zarr.open_array(str(path), mode="r")
    np.testing.assert_array_equal(z[:], full)
    assert z.chunks == (3000, 3) and not z.compressors
    np.testing.assert_array_equal(written.means, params.means)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        datasets.write_blobs_zarr(path, 10, 3, 4, 5, seed=5)


def test_demo_stream_means_are_the_first_draws_of_the_seed():
    # the compose make-data service and tests/test_tls.py rely on this
    np.testing.assert_array_equal(
        datasets.blob_parameters(8, 5, 0).means, np.random.RandomState(0).uniform(-3, 3, (5, 8))
    )
    with pytest.raises(ValueError, match="seed_by must be"):
        datasets.blobs_array(10, 2, 2, 5, seed_by="block")


def test_true_classes_windows_agree_with_the_whole_map(tmp_path):
    whole = datasets.true_classes((200, 150), 5, seed=1, cell=24)
    np.testing.assert_array_equal(
        datasets.true_classes((50, 40), 5, seed=1, cell=24, origin=(37, 91)), whole[37:87, 91:131]
    )
    info = datasets.make_raster(
        tmp_path / "r.zarr", shape=(64, 48), n_bands=2, n_classes=3, chunks=(32, 32), seed=1
    )
    values = zarr.open_array(info["path"], mode="r")[:]
    assert values.shape == (64, 48, 2) and values.dtype == np.uint16
    truth = datasets.true_classes((64, 48), 3, seed=1)
    for k in np.unique(truth):
        np.testing.assert_allclose(values[truth == k].mean(axis=0), info["means"][k], rtol=0.05)


def test_overwrite_replaces_only_an_array_these_writers_made(tmp_path):
    """overwrite=True never deletes a path the package did not write (issue 14)."""
    import zarr

    from daskgmm.datasets import write_blobs_zarr

    mine = tmp_path / "blobs.zarr"
    write_blobs_zarr(mine, 100, 2, 2, chunk_rows=50, seed=0)
    write_blobs_zarr(mine, 100, 2, 2, chunk_rows=50, seed=1, overwrite=True)  # its own array: replaced
    assert zarr.open_array(str(mine), mode="r").shape == (100, 2)
    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(str(foreign), shape=(4, 2), dtype="f8")[:] = 1.0
    for path in (precious, foreign):
        with pytest.raises(FileExistsError, match="was not written by daskgmm"):
            write_blobs_zarr(path, 100, 2, 2, chunk_rows=50, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert zarr.open_array(str(foreign), mode="r")[0, 0] == 1.0
