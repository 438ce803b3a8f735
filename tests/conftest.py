"""Shared test data and clusters.

``make_mixture`` (:func:`daskgmm.datasets.make_mixture`, imported here for the tests) is the
``RandomData`` of these tests: it draws from a known mixture and returns the true parameters
(``X, labels, weights, means, covariances``), so tests can check recovery as well as parity.
"""

from __future__ import annotations

import pytest

from daskgmm.datasets import make_mixture


@pytest.fixture
def mixture():
    return make_mixture()


@pytest.fixture(scope="module")
def local_cluster():
    """A real multi-process local cluster: 2 worker processes, 1 thread each.

    Yields a connected ``distributed.Client`` (the default scheduler while it lives).
    """
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="2GiB"
    ) as cluster, Client(cluster) as client:
        yield client
