"""Shared test data, the shared cluster, the scheduler guard and the test tiers.

Data
    ``make_mixture`` (:func:`daskgmm.datasets.make_mixture`, imported here for the tests) is
    the ``RandomData`` of these tests: it draws from a known mixture and returns the true
    parameters (``X, labels, weights, means, covariances``), so tests can check recovery as
    well as parity.

Cluster and client
    ``cluster`` is one real multi-process ``LocalCluster`` for the whole session (started
    the first time a test asks for it): 2 worker processes, 1 thread each, 2 GiB each,
    no dashboard. It is never anybody's default scheduler. A test that only needs an
    address (a ``daskgmm`` command, in a subprocess or in-process) takes ``cluster`` and
    passes ``cluster.scheduler_address``.

    ``client`` is a ``Client(cluster, set_as_default=False)`` for one test, made the
    scheduler of ``dask.compute`` (and of ``distributed.default_client()``) only while that
    test runs, through ``client.as_current()``; dask's scheduler setting is restored and the
    client closed when the test ends. Nothing a test computes on the cluster can leak into
    the next test's choice of scheduler.

Guard
    ``_no_scheduler_leaks`` (autouse) fails a test that leaves a distributed default client
    behind, or dask's ``scheduler`` setting different from what it was when the session
    started, and undoes the leak so that later tests are unaffected. It also puts back
    ``os.environ``: starting a process-based ``LocalCluster`` writes the nanny's
    pre-spawn variables (``OMP_NUM_THREADS=1``, ``PYTHONHASHSEED``, ...) into this
    process's environment for good, which every later subprocess would inherit.

Tiers
    ``system`` marks tests that start processes (commands, clusters, notebook kernels,
    TLS, batch scripts); it is applied here by module and test name (``SYSTEM``), not in
    the test files. ``slow`` marks large cases kept out of every default run.

        pytest -m "not slow and not system"   # fast tier: numerics and API, in-process
        pytest -m "system and not slow"       # system tier
        pytest -m "not slow" -n 2 --dist loadfile   # both (what .ci/run runs)
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest

from daskgmm.datasets import make_mixture  # noqa: F401  (the tests' RandomData)

# ---------------------------------------------------------------------------
# tiers
# ---------------------------------------------------------------------------
#: Tests in the ``system`` tier: a module name (every test in it), or "module::test" (every
#: parametrisation of that test). Everything else is in the fast tier.
SYSTEM = {
    # whole modules
    "test_cluster",  # `dask scheduler` / `dask worker` processes
    "test_tls",  # the compose TLS cluster as processes
    "test_sklearn_suite",  # scikit-learn's own mixture tests, run by pytest in a subprocess
    "test_cli",  # the daskgmm command, in-process and in subprocesses, on local clusters
    "test_storage",  # issue 16: a moto S3 server, the daskgmm command, a local multi-process cluster
    "test_readme",  # every README code block, each in a fresh interpreter
    "test_init",  # what a fresh interpreter imports
    # single tests: commands, clusters, notebook kernels, batch scripts
    "test_checkpoint::test_driver_killed_mid_fit_resumes_to_the_uninterrupted_result",
    "test_deploy::test_entrypoint_translates_the_helm_charts_commands",
    "test_deploy::test_slurm_batch_script_runs_a_fit",
    "test_image::test_cli_segment",
    "test_geo::test_cli_segment_geotiff_and_xarray_group",  # issue 16: daskgmm segment on a GeoTIFF
    "test_image::test_killed_write_leaves_nothing_that_looks_complete",
    "test_image::test_segment_bench_command_runs_small",
    "test_notebooks::test_notebook_runs_at_small_size",
    "test_out_of_core::test_auto_persists_data_that_fits_in_the_workers_memory",
    "test_out_of_core::test_explicit_persist_is_obeyed_and_gives_the_same_fit",
    "test_out_of_core::test_streamed_fit_of_a_store_larger_than_worker_memory",
    "test_bayesian::test_streamed_fit_of_a_store_larger_than_worker_memory",
    "test_bayesian::test_sample_weight_on_a_cluster_with_held_chunks_grouped_into_tasks",
    "test_parity::test_fit_on_a_multi_process_cluster_equals_threaded_fit",
    "test_progress::test_compute_on_a_cluster_draws_distributed_bar_on_stderr",
    "test_plot::test_importing_daskgmm_plot_does_not_import_matplotlib",
    "test_selection::test_on_a_real_cluster",
    "test_scale::test_parameters_reach_each_worker_once_and_held_data_is_merged",
    "test_scale::test_plan_command_on_a_local_cluster",
    "test_scale::test_held_chunks_are_spread_over_the_workers_with_their_weights",
}


def pytest_collection_modifyitems(config, items):
    """Mark the ``SYSTEM`` tests ``system``; refuse a ``SYSTEM`` name that names no test."""
    modules = {}
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        modules[module] = item.module
        if module in SYSTEM or f"{module}::{item.originalname}" in SYSTEM:
            item.add_marker(pytest.mark.system)
    here = os.path.dirname(__file__)
    missing = []
    for key in sorted(SYSTEM):
        module, _, test = key.partition("::")
        if not os.path.exists(os.path.join(here, module + ".py")):
            missing.append(key)
        elif test and module in modules and not hasattr(modules[module], test):
            missing.append(key)
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SYSTEM names tests that do not exist: {missing}")


# ---------------------------------------------------------------------------
# data: make_mixture is daskgmm.datasets.make_mixture (imported above)
# ---------------------------------------------------------------------------


@pytest.fixture
def mixture():
    return make_mixture()


# ---------------------------------------------------------------------------
# the cluster, a client per test, and the guard
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _environ_restored():
    """Put ``os.environ`` back as it was (PYTEST_* excepted: pytest manages those itself)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            if not key.startswith("PYTEST_"):
                del os.environ[key]
        for key, value in saved.items():
            if not key.startswith("PYTEST_") and os.environ.get(key) != value:
                os.environ[key] = value


@pytest.fixture(scope="session")
def cluster():
    """A real multi-process local cluster: 2 worker processes, 1 thread and 2 GiB each, no
    dashboard, for the whole session. Not a client and not a default scheduler: take
    ``client`` to compute on it, or pass ``cluster.scheduler_address`` to a command."""
    from distributed import LocalCluster

    with _environ_restored():
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit="2GiB",
            host="127.0.0.1",
            dashboard_address=None,
        )
    with cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    """A ``distributed.Client`` to ``cluster``, the scheduler of this test only.

    ``Client(cluster, set_as_default=False)`` inside ``client.as_current()``: ``dask.compute``,
    ``distributed.default_client()`` and ``Client.current()`` resolve to it while the test
    runs; dask's ``scheduler`` setting is restored and the client closed afterwards. Waits
    for both workers, so a test that killed one does not leave the next with one.
    """
    from distributed import Client

    with Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        with c.as_current():
            yield c


def _scheduler_setting():
    import dask

    return dask.config.get("scheduler", None), dask.config.get("get", None)


def _default_client():
    """The distributed client ``dask.compute`` would fall back to, or None (no import)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


_SESSION_SCHEDULER = _scheduler_setting()


@pytest.fixture(autouse=True)
def _no_scheduler_leaks():
    """Fail a test that leaves a default client or a changed dask scheduler setting behind.

    Compares with the setting when the session started (not when the test started), so a
    leak from a module- or session-scoped fixture fails its first test too. Undoes what it
    finds, so one leak fails one test, not every test after it.
    """
    import dask

    with _environ_restored():
        yield
    problems = []
    leaked = _default_client()
    if leaked is not None:
        problems.append(
            f"a distributed default client is left behind: {leaked!r}. Use the `client` fixture "
            "(a client that is current only inside the test), Client(..., set_as_default=False), "
            "or close the client in the test (`with Client(...) as c:`)."
        )
        with contextlib.suppress(Exception):
            leaked.close(timeout=10)
        from distributed.client import _del_global_client

        _del_global_client(leaked)
    now = _scheduler_setting()
    if now != _SESSION_SCHEDULER:
        problems.append(
            f"dask's scheduler setting (scheduler, get) is {now!r}, {_SESSION_SCHEDULER!r} when the session "
            "started. Set it for a block only: `with dask.config.set(scheduler=...):`."
        )
        dask.config.config.pop("get", None)
        if _SESSION_SCHEDULER[0] is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.set(scheduler=_SESSION_SCHEDULER[0])
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
