"""Helpers for running scikit-learn's own mixture tests against daskgmm (tests/test_sklearn_suite.py).

Two things live here because the pytest run of scikit-learn's tests is a subprocess that
imports them:

* :class:`GaussianMixture`, daskgmm's estimator fed unevenly chunked dask arrays: the
  dask variant of the suite imports it in place of scikit-learn's class;
* the collection hook (loaded with ``-p tests._sklearn_suite``) that runs only the tests
  selected in the calling session, leaves out the tests listed in the test module and marks
  its deliberate differences as skips, read from the JSON file named by ``DASKGMM_SKLEARN_SUITE``.
"""

from __future__ import annotations

import json
import os

import dask.array as da
import numpy as np
import pytest

import daskgmm

#: rows of each chunk, as fractions of the rows: four chunks of unequal sizes
CHUNK_FRACTIONS = (0.13, 0.29, 0.07, 0.51)


def uneven_chunks(n_rows: int) -> tuple[int, ...]:
    """Row chunks of unequal sizes (four for 8+ rows, at least two for 2+ rows)."""
    cuts = np.round(np.cumsum(CHUNK_FRACTIONS)[:-1] * n_rows).astype(int)
    cuts = np.unique(np.clip(cuts, 1, max(n_rows - 1, 1)))
    edges = [0, *[int(c) for c in cuts if 0 < c < n_rows], n_rows]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:]))


def as_dask(X):
    """Numeric arrays (and nested lists) of 1+ dimensions become dask arrays chunked unevenly
    along the rows, the other axes in one chunk; anything else is passed on unchanged, so
    daskgmm's own checks see exactly what the test passed."""
    if isinstance(X, da.Array) or not isinstance(X, (np.ndarray, list, tuple)):
        return X
    try:
        arr = np.asarray(X)
    except ValueError:  # ragged lists: daskgmm reports them
        return X
    if arr.dtype.kind not in "biuf" or arr.ndim == 0 or arr.shape[0] == 0:
        return X
    return da.from_array(arr, chunks=(uneven_chunks(arr.shape[0]),) + tuple((s,) for s in arr.shape[1:]))


def _computed(out):
    """A prediction must come back lazy (the dask path ran); the test gets the numbers."""
    assert isinstance(out, da.Array), f"expected a lazy dask result for dask input, got {type(out).__name__}"
    return out.compute()


class _OnDask:
    """daskgmm's estimator as the dask variant of scikit-learn's tests sees it.

    Every data argument (``X``, ``sample_weight``) goes in as an unevenly chunked dask
    array; per-row results come back lazy and are computed here, as a user would.
    Parameters (``means_init`` ...) and everything else are untouched, and the classes
    keep the names (``GaussianMixture``, ``BayesianGaussianMixture``) that scikit-learn's
    error messages use.
    """

    def fit(self, X, y=None, sample_weight=None, **kwargs):
        return super().fit(as_dask(X), y, sample_weight=as_dask(sample_weight), **kwargs)

    def fit_predict(self, X, y=None, sample_weight=None):
        return _computed(super().fit_predict(as_dask(X), y, sample_weight=as_dask(sample_weight)))

    def predict(self, X):
        return _computed(super().predict(as_dask(X)))

    def predict_proba(self, X):
        return _computed(super().predict_proba(as_dask(X)))

    def score_samples(self, X):
        return _computed(super().score_samples(as_dask(X)))

    def score(self, X, y=None):
        return super().score(as_dask(X), y)

    def bic(self, X):
        return super().bic(as_dask(X))

    def aic(self, X):
        return super().aic(as_dask(X))


def pytest_collection_modifyitems(config, items):
    """Leave out the listed tests; mark the deliberate differences as skips with their reason."""
    path = os.environ.get("DASKGMM_SKLEARN_SUITE")
    if not path:
        return
    with open(path) as f:
        spec = json.load(f)
    keep, dropped = [], []
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if name in spec["left_out"] or f"{item.path.stem}::{name}" not in spec["only"]:
            dropped.append(item)
            continue
        for func, case, reason in spec["differences"]:
            if name == func and case in item.name:
                item.add_marker(pytest.mark.skip(reason=f"daskgmm differs: {reason}"))
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


class GaussianMixture(_OnDask, daskgmm.GaussianMixture):
    __doc__ = _OnDask.__doc__


class BayesianGaussianMixture(_OnDask, daskgmm.BayesianGaussianMixture):
    __doc__ = _OnDask.__doc__
