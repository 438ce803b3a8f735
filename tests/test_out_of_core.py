"""Out of core: persist='auto'|True|False, and a streamed fit of a Zarr store larger
than the worker's memory limit (the README's 5 GB case, at a size for the suite)."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import zarr

from daskgmm import GaussianMixture
from daskgmm.benchmarks.ooc import fit_on_cluster, write_mixture_zarr
from tests.conftest import make_mixture

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture
def daskgmm_log(caplog):
    caplog.set_level(logging.INFO, logger="daskgmm")
    return caplog


def _persist_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "daskgmm" and "persist" in r.getMessage()]


@pytest.fixture(scope="module")
def small():
    X = make_mixture(n_samples=20_000, n_features=4, n_components=3, seed=5)[0]
    return da.from_array(X, chunks=4_000)


# ---------------------------------------------------------------------------
# the persist decision, on a real cluster (the `client` fixture: 2 workers x 2 GiB) and locally
# ---------------------------------------------------------------------------
def test_auto_persists_data_that_fits_in_the_workers_memory(client, small, daskgmm_log):
    gm = GaussianMixture(3, random_state=0, persist="auto").fit(small)
    (msg,) = _persist_messages(daskgmm_log)
    assert (
        "fits comfortably in the workers' memory limits (2 workers)" in msg and "holding it in memory" in msg
    )
    assert [r["bytes_read"] for r in gm.history_] == [0] * gm.n_iter_


@pytest.mark.parametrize("persist", [True, False])
def test_explicit_persist_is_obeyed_and_gives_the_same_fit(client, small, daskgmm_log, persist):
    gm = GaussianMixture(3, random_state=0, persist=persist).fit(small)
    (msg,) = _persist_messages(daskgmm_log)
    assert msg.startswith(f"persist={persist}: ")
    expected = 0 if persist else small.nbytes
    assert all(r["bytes_read"] == expected for r in gm.history_)
    ref = GaussianMixture(3, random_state=0, persist="auto").fit(small)
    np.testing.assert_array_equal(gm.means_, ref.means_)


def test_without_a_cluster_auto_streams_and_true_loads(small, daskgmm_log):
    streamed = GaussianMixture(3, random_state=0).fit(small)
    held = GaussianMixture(3, random_state=0, persist=True).fit(small)
    msgs = _persist_messages(daskgmm_log)
    assert "without a distributed scheduler: reading the data's chunks" in msgs[0]
    assert msgs[1].startswith("persist=True: holding in memory")
    assert streamed.history_[0]["bytes_read"] == small.nbytes and held.history_[0]["bytes_read"] == 0
    np.testing.assert_allclose(streamed.means_, held.means_, rtol=1e-12)


def test_persist_parameter_is_checked(small):
    with pytest.raises(
        ValueError, match="The 'persist' parameter of GaussianMixture must be 'auto', True or False"
    ):
        GaussianMixture(2, persist="yes").fit(small)


# ---------------------------------------------------------------------------
# a Zarr store larger than the worker's memory limit, streamed
# ---------------------------------------------------------------------------
def test_streamed_fit_of_a_store_larger_than_worker_memory(tmp_path):
    """448 MB of float64 on one worker limited to 400 MiB (the README's 5 GB case, scaled down).

    persist='auto' must choose to stream; every iteration reads the whole store; the
    worker is neither paused nor restarted by the memory monitor and stays under its
    limit; the driver's memory grows by a small fraction of the data; the generating
    means are recovered.
    """
    from distributed import Client, LocalCluster

    n, d, k = 3_500_000, 16, 3
    path = str(tmp_path / "big.zarr")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="400MiB", processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        true_means = write_mixture_zarr(path, n, d, k, chunk_rows=125_000, seed=1)
        r = fit_on_cluster(
            path,
            true_means,
            n_components=k,
            covariance_type="diag",
            persist="auto",
            max_iter=2,
            client=client,
        )
    data_bytes = n * d * 8
    assert r["data_bytes"] == data_bytes and r["data_to_memory"] > 1.05
    assert any("streaming its chunks from storage in every iteration" in m for m in r["persist_log"])
    assert r["bytes_read_per_iter"] == data_bytes
    assert not r["worker_paused"] and not r["worker_restarted"]
    assert 0 < r["peak_worker_rss"] < 400 * 2**20
    assert r["driver_rss_growth"] < data_bytes / 5
    assert r["max_mean_error"] < 0.01
    assert zarr.open(path, mode="r").shape == (n, d)


@pytest.mark.slow
def test_the_readme_5gb_case():  # pragma: no cover - minutes; run with -m slow (python -m daskgmm.benchmarks.ooc)
    from daskgmm.benchmarks.ooc import run

    out = run(compare_rows=0)
    s = out["streamed"]
    assert s["data_to_memory"] > 3.5 and not s["worker_paused"] and not s["worker_restarted"]
    assert s["peak_driver_rss"] < 1.5e9 and s["max_mean_error"] < 0.01
