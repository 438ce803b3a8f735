"""What every fitted daskgmm mixture offers, whatever fitted it: lazy prediction over the
same chunks, scores and information criteria, sampling, model files, scikit-learn interop.

Like scikit-learn's ``BaseMixture``, :class:`BaseMixture` holds the methods that read the
fitted parameters (``weights_``, ``means_``, ``covariances_``, ``precisions_cholesky_``); a
subclass validates its parameters, hands the engine a plan and sets those attributes.
"""

from __future__ import annotations

import numbers

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from daskgmm import _storage
from daskgmm._engine import DataPlan
from daskgmm._gaussian import EStepParams, Params, n_parameters, sample_mixture
from daskgmm._graph import predict_rows
from daskgmm._input import Input, to_dask, wrap_rows
from daskgmm._interop import InteropMixin
from daskgmm._missing import marginal_params
from daskgmm._placement import active_client, hold, kernel_setting, plan_data
from daskgmm._typing import Output
from daskgmm.io import save_model


def plan_fit_data(inp: Input, w, *, persist, nan_policy: str, split_every: int, merge: bool = True):
    """``(X, w, DataPlan)`` of a fit: the data held in (cluster) memory or streamed every pass
    (:func:`~daskgmm._placement.plan_data`; ``merge`` groups held chunks as the coarse tasks
    read them), and the weights held chunked like the held data."""
    X, bytes_per_pass, to_hold, leaf_rows = plan_data(
        inp.data, persist, inp.kind == "numpy", merge=merge, split_every=split_every
    )
    if w is not None and active_client() is not None:
        w = w.rechunk((X.chunks[0],))  # chunked like the held data, held next to its rows
        X, w = hold(X, w) if to_hold else (X, hold(w)[0])
    elif to_hold:
        (X,) = hold(X)
    return X, w, DataPlan(X, w, nan_policy, bytes_per_pass, inp.n_samples, split_every, leaf_rows)


class BaseMixture(InteropMixin, DensityMixin, BaseEstimator):
    """Prediction, scores, sampling, model files and interop of a fitted mixture."""

    def _validate(self, X, reset: bool) -> Input:
        # fitting needs two rows; predicting works row by row
        return to_dask(
            X, chunk_rows=self.chunk_size, estimator=self, reset=reset, min_samples=2 if reset else 1
        )

    # ------------------------------------------------------------------
    # prediction (lazy map_blocks over the same chunks)
    # ------------------------------------------------------------------
    def _fitted_params(self) -> Params:
        """The fitted parameters in float64 (the attributes are float32 after a float32 fit)."""
        f64 = [
            np.asarray(a, dtype=np.float64)
            for a in (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
        ]
        return Params(*f64)

    def _estep_log_weights(self):
        """The per-component terms added to the Gaussian log-densities in place of ``log weights_``
        (None: ``log weights_``; a variational mixture adds its expectations)."""
        return None

    def _predict_input(self, inp: Input, what: Output):
        """Lazy ``what`` for every row: one :func:`~daskgmm._kernels.predict_output` task per chunk.

        ``nan_policy="omit"`` is the kernel's NaN nodata rule (label -1, NaN scores);
        ``"marginalize"`` hands it the marginal parameters of :mod:`daskgmm._missing`.
        """
        X = inp.data
        policy = getattr(self, "nan_policy", "raise")
        f = self._fitted_params()  # float64, also when the attributes are float32
        log_weights = self._estep_log_weights()
        if policy == "marginalize":
            params = marginal_params(
                f.weights, f.means, f.covariances, f.precisions_cholesky, self.covariance_type
            )
        else:
            params = EStepParams(
                f.weights,
                f.means,
                f.precisions_cholesky,
                self.covariance_type,
                X.dtype,
                log_weights=log_weights,
            )
            params.kernel = kernel_setting()  # daskgmm.kernel, read here for every worker
        token = dask.base.tokenize(f.weights, f.means, f.precisions_cholesky, X.dtype, policy, log_weights)
        out = predict_rows(
            X, params, what, self.n_components, token, nodata=np.nan if policy == "omit" else None
        )
        return wrap_rows(out, inp, what, self.n_components)

    @_storage.accepts_storage_options
    def predict(self, X, *, storage_options: dict | None = None):
        """Most probable component of each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        labels : ndarray, dask array or DataArray of shape (n_samples,)
            int64; numpy for numpy input, lazy for dask/Zarr, a DataArray ``labels`` for xarray.
        """
        check_is_fitted(self)
        return self._predict_input(self._validate(X, reset=False), "labels")

    @_storage.accepts_storage_options
    def predict_proba(self, X, *, storage_options: dict | None = None):
        """Posterior probability of each component for each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        probabilities : ndarray, dask array or DataArray of shape (n_samples, n_components)
            In the input's float dtype; for xarray a DataArray ``probabilities`` with a
            ``component`` dimension.
        """
        check_is_fitted(self)
        return self._predict_input(self._validate(X, reset=False), "probabilities")

    @_storage.accepts_storage_options
    def score_samples(self, X, *, storage_options: dict | None = None):
        """Log of the mixture density at each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        log_density : ndarray, dask array or DataArray of shape (n_samples,)
            In the input's float dtype; a DataArray ``log_density`` for xarray input.
        """
        check_is_fitted(self)
        return self._predict_input(self._validate(X, reset=False), "log_density")

    @_storage.accepts_storage_options
    def score(self, X, y=None, *, storage_options: dict | None = None):
        """Mean log-likelihood per row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        y : Ignored
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        score : float
            Computed now, also for lazy input.
        """
        check_is_fitted(self)
        inp = self._validate(X, reset=False)
        return float(self._mean_score(inp))

    def _mean_score(self, inp: Input) -> float:
        s = self._predict_input(inp, "log_density")
        data = s.data if inp.kind == "xarray" else s
        # lazy input: chunk sums in float64; numpy: numpy's mean in the data's dtype, as scikit-learn
        mean = (
            np.nanmean if getattr(self, "nan_policy", "raise") == "omit" else np.mean
        )  # omit: NaN rows left out
        if isinstance(data, da.Array):
            return float(getattr(da, mean.__name__)(data, dtype=np.float64).compute())
        return float(mean(data))

    def _n_parameters(self) -> int:
        return n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    @_storage.accepts_storage_options
    def bic(self, X, *, storage_options: dict | None = None) -> float:
        """Bayesian information criterion on ``X`` (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        bic : float
        """
        check_is_fitted(self)
        inp = self._validate(X, reset=False)
        n = inp.n_samples
        return -2 * self._mean_score(inp) * n + self._n_parameters() * np.log(n)

    @_storage.accepts_storage_options
    def aic(self, X, *, storage_options: dict | None = None) -> float:
        """Akaike information criterion on ``X`` (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        aic : float
        """
        check_is_fitted(self)
        inp = self._validate(X, reset=False)
        return -2 * self._mean_score(inp) * inp.n_samples + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1):
        """Draw samples from the fitted mixture (scikit-learn's random stream).

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of each sample.
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples} . The sampling requires at least one sample."
            )
        rng = check_random_state(self.random_state)
        f = self._fitted_params()
        X, y = sample_mixture(rng, n_samples, f.weights, f.means, f.covariances, self.covariance_type)
        return X, y

    def _html_repr(self) -> str:
        # Jupyter: scikit-learn's parameter view plus the fit summary (daskgmm/_repr.py)
        from daskgmm._repr import html_repr

        return html_repr(self)

    # ------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------
    @_storage.accepts_storage_options
    def save(self, path, *, storage_options: dict | None = None) -> None:
        """Save the fitted model to ``path`` (a ``.npz`` of arrays + JSON metadata; no pickle).

        Parameters
        ----------
        path : str or os.PathLike
            Destination file, written atomically (a reader never sees half a file): a local
            path, or a URL (``s3://bucket/model.npz``) written as one object in one put.
        storage_options : dict, optional
            fsspec options for a URL (over the environment's); an unknown protocol or a missing
            package (``s3fs``...) is an error saying what to install, never a local file.
        """
        save_model(self, path)
