"""Shared test data and clusters.

``make_mixture`` is the ``RandomData`` of these tests: it draws from a known mixture
and returns the true parameters, so tests can check recovery as well as parity.
"""

from __future__ import annotations

import numpy as np
import pytest


def make_mixture(n_samples=600, n_features=3, n_components=3, seed=0, separation=4.0, dtype=np.float64):
    """Samples of a Gaussian mixture with known parameters.

    Returns ``X, labels, weights, means, covariances`` (full covariances).
    """
    rng = np.random.RandomState(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.uniform(-separation, separation, size=(n_components, n_features))
    A = rng.normal(size=(n_components, n_features, n_features)) * 0.4
    covariances = np.einsum("kij,klj->kil", A, A) + np.eye(n_features)[None] * 0.3
    labels = rng.choice(n_components, size=n_samples, p=weights)
    chol = np.linalg.cholesky(covariances)
    z = rng.standard_normal((n_samples, n_features))
    X = means[labels] + np.einsum("nij,nj->ni", chol[labels], z)
    return X.astype(dtype), labels, weights, means, covariances


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
