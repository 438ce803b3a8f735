"""Real clusters: ``dask scheduler`` and ``dask worker`` processes started from the command line.

As a cluster job would: a scheduler writes its scheduler file, two workers (each a
nanny and a worker process, 1 thread) join it on 127.0.0.1, and fits run through
``daskgmm fit --scheduler-file`` / ``--scheduler ADDRESS`` and through a Client.
A worker process killed with SIGKILL in the middle of a fit must not change the
result by a single bit, nor may the number of workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

import daskgmm
from daskgmm import GaussianMixture
from tests.conftest import make_mixture

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DASK = os.path.join(os.path.dirname(sys.executable), "dask")
DASKGMM = [sys.executable, "-m", "daskgmm.cli", "fit"]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """``dask scheduler`` + 2 × ``dask worker`` (1 thread each) on 127.0.0.1, and a Client.

    The client is nobody's default (``set_as_default=False``): the tests compute on it inside
    ``client.as_current()`` blocks, so it cannot become the scheduler of later tests.
    """
    from distributed import Client

    tmp = tmp_path_factory.mktemp("cluster")
    sched_file = str(tmp / "scheduler.json")
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                sched_file,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    try:
        _wait_for(
            lambda: os.path.exists(sched_file) and os.path.getsize(sched_file) > 0, 60, "the scheduler file"
        )
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        "--scheduler-file",
                        sched_file,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--memory-limit",
                        "1GiB",
                        "--host",
                        "127.0.0.1",
                        "--dashboard-address",
                        "127.0.0.1:0",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        with Client(scheduler_file=sched_file, timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            with open(sched_file) as f:
                address = json.load(f)["address"]
            yield {"client": client, "scheduler_file": sched_file, "address": address}
    finally:
        try:
            from distributed import Client

            with Client(scheduler_file=sched_file, timeout="10s", set_as_default=False) as c:
                c.shutdown()  # scheduler, nannies and workers close together, quickly
        except Exception:
            pass
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Zarr store of a 4-component mixture (120k x 6), 8k-row chunks, and its true means."""
    X, _, _, means, _ = make_mixture(n_samples=120_000, n_features=6, n_components=4, seed=3, separation=6.0)
    path = str(tmp_path_factory.mktemp("data") / "X.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(8_000, 6), dtype="f8")
    z[:] = X
    return {"path": path, "X": X, "means": means}


def _model(**kw):
    params = dict(n_components=4, random_state=0, max_iter=5, tol=0.0)
    params.update(kw)
    return GaussianMixture(**params)


def _assert_same_fit(a, b):
    assert_array_equal(a.weights_, b.weights_)
    assert_array_equal(a.means_, b.means_)
    assert_array_equal(a.covariances_, b.covariances_)
    assert a.lower_bounds_ == b.lower_bounds_
    assert a.n_iter_ == b.n_iter_


def _run_cli(args, timeout=120):
    return subprocess.run(DASKGMM + args, capture_output=True, text=True, timeout=timeout)


def test_cli_fits_through_a_command_line_cluster(cli_cluster, data, tmp_path):
    # --scheduler ADDRESS is exercised by tests/test_checkpoint.py
    out = tmp_path / "model.npz"
    r = _run_cli(
        [
            data["path"],
            "-k",
            "4",
            "--seed",
            "0",
            "--max-iter",
            "5",
            "--tol",
            "0",
            "--scheduler-file",
            cli_cluster["scheduler_file"],
            "--save-model",
            str(out),
            "--json",
        ]
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_iter"] == 5
    # the same fit, in this process, through the same cluster: identical numbers
    with cli_cluster["client"].as_current():
        ref = _model().fit(zarr.open(data["path"], mode="r"))
    # (to rounding: the k-means step on the driver's sample uses the driver process's OpenMP
    # threads, which the command and this process may not share)
    got = daskgmm.load(out)
    assert got.n_iter_ == ref.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-9, atol=1e-12)
    # and right: the generating means are recovered
    d = np.linalg.norm(ref.means_[:, None] - data["means"][None], axis=2)
    assert d.min(axis=0).max() < 0.05


def test_worker_killed_mid_fit_gives_the_undisturbed_result(cli_cluster, data):
    """numpy input is persisted on the workers: the killed worker's chunks are recomputed from
    lineage (the graph still holds the array); the parameters, scattered to every worker each pass,
    fall back to a key of the pass's graph when the scatter meets the dying worker, or when the
    graph finds them lost with it (the next test)."""
    client = cli_cluster["client"]
    X = data["X"]
    kw = {"chunk_size": 8_000}
    with client.as_current():
        ref = _model(**kw).fit(X)
        pids = client.run(os.getpid)
        victim_addr = sorted(pids)[0]
        killed = {}

        def kill_soon(state, record):
            # during iteration 3: the worker dies while it holds data and runs tasks
            if record["iteration"] == 2:

                def kill():
                    os.kill(pids[victim_addr], signal.SIGKILL)
                    killed["iteration"] = state.n_iter

                threading.Timer(0.05, kill).start()

        got = _model(**kw).fit(X, callback=kill_soon)
        assert "iteration" in killed and killed["iteration"] < got.n_iter_
        _assert_same_fit(got, ref)
        client.wait_for_workers(2, timeout=60)
        assert pids[victim_addr] not in client.run(os.getpid).values()  # it really died


def test_a_pass_whose_scattered_parameters_died_with_their_worker_runs_again(cli_cluster, data):
    """Scattered parameters have no lineage. When the only worker holding them dies before the
    pass's graph arrives (dask's broadcast scatter copies them from one worker to the others, so a
    worker killed in between takes the only copy), the scheduler cancels the pass for "lost
    dependencies"; the pass runs again with the parameters as a task of its graph. Here they are
    scattered to one worker, which is killed before the graph is sent. Reference: the data's
    moments about a given centre, in numpy."""
    import dask.array as da
    from dask.delayed import Delayed

    from daskgmm._graph import Passes, pass_sources, statistics_pass
    from daskgmm._init import _moment_stats, _stats_params

    client = cli_cluster["client"]
    client.wait_for_workers(2, timeout=60)
    X = data["X"]
    Xd = da.from_array(X, chunks=(5_000, X.shape[1]))
    blocks = Xd.to_delayed(optimize_graph=False).ravel()
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    made: list = []

    class OneCopy(Passes):
        def params(self, ps, token, scatter=True, tasks=1):
            made.append(scatter)
            if not scatter:
                return super().params(ps, token, scatter=False)
            name = f"gmm-params-{token}"
            fut = self.client.scatter({name: ps}, workers=[victim])[name]
            os.kill(pids[victim], signal.SIGKILL)
            _wait_for(lambda: victim not in client.scheduler_info(n_workers=-1)["workers"], 60, "the loss")
            self._held.append(fut)
            return Delayed(name, {name: fut})

    centre = np.full((1, X.shape[1]), 0.5)
    p = _stats_params(centre, "full", X.dtype)
    with client.as_current():
        (stats,) = statistics_pass(
            _moment_stats,
            blocks,
            None,
            [p],
            "lost-params-test",
            sources=pass_sources(Xd, blocks, None, 1),
            passes=OneCopy(client),
            name="gmm-test",
        )
    assert made == [True, False]  # scattered, lost, then a task of the graph
    Xc = X - centre
    assert stats["n"] == len(X) and stats["nk"][0] == pytest.approx(len(X))
    assert_allclose(stats["u"][0], Xc.sum(axis=0), rtol=1e-10)
    assert_allclose(stats["s2"][0], Xc.T @ Xc, rtol=1e-10)
    client.wait_for_workers(2, timeout=60)
    assert pids[victim] not in client.run(os.getpid).values()  # it really died


def test_result_does_not_depend_on_the_number_of_workers(cli_cluster, data):
    """Last test of the module: it retires one of the two workers."""
    from dask.utils import key_split
    from distributed import get_task_stream

    client = cli_cluster["client"]
    X = zarr.open(data["path"], mode="r")
    with client.as_current():
        two = _model(persist=False).fit(X)
        client.retire_workers([sorted(client.scheduler_info(n_workers=-1)["workers"])[0]])
        _wait_for(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 1, 60, "one worker")
        with get_task_stream(client) as ts:
            one = _model(persist=False).fit(X)
            one.predict(X).compute()
    _assert_same_fit(one, two)
    # task names on the dashboard read as the phases
    prefixes = {key_split(t["key"]) for t in ts.data}
    assert {"gmm-init", "gmm-em-stats"} <= prefixes, prefixes
    assert any(p.startswith("gmm-predict") for p in prefixes), prefixes
    # the threaded local scheduler agrees to rounding (its BLAS may use other threads)
    with dask.config.set(scheduler="threads"):
        local = _model(persist=False).fit(X)
    assert_allclose(local.means_, two.means_, rtol=1e-10, atol=1e-10)


def test_worker_tasks_run_one_blas_thread_without_toggling_it(client):
    """dask workers start with OPENBLAS/MKL/OMP_NUM_THREADS=1 (``distributed.nanny.pre-spawn-environ``):
    a task there runs one BLAS thread and daskgmm sets nothing, where a process with more threads
    (here the driver, given 2) gets 1 inside the task and its own count back after, 2 changes."""
    import dask.array as da
    from threadpoolctl import threadpool_limits

    from daskgmm import _kernels

    def _blas_state(*_):
        """(BLAS thread counts, changes so far, controller cached) in the calling process."""
        from threadpoolctl import threadpool_info

        from daskgmm import _kernels

        counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        return counts, _kernels.blas_changes, _kernels._blas_libs is not None

    inside_driver = []
    with threadpool_limits(2, user_api="blas"):
        before = _kernels.blas_changes
        _kernels.in_task(lambda: inside_driver.append(_blas_state()[0]))()
        assert _kernels.blas_changes - before == 2
        assert _blas_state()[0] and set(_blas_state()[0]) == {2}
    assert inside_driver[0] and set(inside_driver[0]) == {1}

    X, _, _, _, _ = make_mixture(n_samples=20_000, n_features=4, n_components=3, seed=5, separation=6.0)
    Xd = da.from_array(X, chunks=(2_500, 4))
    start = client.run(_blas_state)
    gm = GaussianMixture(n_components=3, max_iter=3, tol=0.0, random_state=0, persist=True).fit(Xd)
    assert gm.n_iter_ == 3
    inside = client.gather(client.map(_kernels.in_task(_blas_state), range(4), pure=False))
    after = client.run(_blas_state)
    for counts, _, _ in inside:
        assert counts and set(counts) == {1}
    for worker, (counts, changes, cached) in after.items():
        assert counts and set(counts) == {1}
        assert changes == start[worker][1], (
            f"{worker} changed its BLAS threads {changes - start[worker][1]} times"
        )
        assert cached  # the threadpoolctl controller was made (once, then reused) by the fit's tasks


def test_workers_run_the_kernel_the_driver_chose(client):
    """``daskgmm.kernel`` is read on the driver and carried by each pass's parameters: worker
    processes started with the default ("auto") run the numpy kernel when the driver says so,
    and the compiled one otherwise; both fits equal scikit-learn's."""
    import dask.array as da
    from sklearn.mixture import GaussianMixture as SkGMM

    from daskgmm import _compiled

    def compiled_chunks(*_):
        from daskgmm import _compiled

        return _compiled.chunks_computed

    X, _, _, _, _ = make_mixture(n_samples=6_000, n_features=3, n_components=2, seed=7, separation=5.0)
    ref = SkGMM(2, max_iter=4, tol=0.0, random_state=0).fit(X)
    fits = {}
    for choice in ("numpy", "auto"):
        before = client.run(compiled_chunks)
        driver_before = _compiled.chunks_computed
        with dask.config.set({"daskgmm.kernel": choice}):
            fits[choice] = GaussianMixture(2, max_iter=4, tol=0.0, random_state=0).fit(
                da.from_array(X, chunks=(1_000, 3))
            )
        ran = {w: n - before[w] for w, n in client.run(compiled_chunks).items()}
        assert _compiled.chunks_computed == driver_before  # the passes ran on the workers
        if choice == "numpy":
            assert set(ran.values()) == {0}, ran
        else:
            assert sum(ran.values()) >= 4, ran  # at least one task per iteration (4) ran it
        assert_allclose(fits[choice].means_, ref.means_, rtol=1e-8)
        assert_allclose(fits[choice].covariances_, ref.covariances_, rtol=1e-8)
