"""``GaussianMixture``: scikit-learn's estimator API over the map-reduce EM engine."""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from daskgmm._em import (
    EMConfig,
    EMState,
    Params,
    complete_params,
    improves,
    run_em,
    warn_not_converged,
)
from daskgmm._gaussian import (
    COVARIANCE_TYPES,
    EStepParams,
    compute_precision_cholesky,
    n_parameters,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
)
from daskgmm._graph import shared
from daskgmm._init import DEFAULT_INIT_SAMPLE_SIZE, initialize
from daskgmm._input import (
    Input,
    check_means,
    check_precisions,
    check_weights,
    to_dask,
)
from daskgmm._kernels import predict_output, predict_output_spec
from daskgmm._multi import check_dask_weights, check_extra_params, fit_multi, uses_multi
from daskgmm._placement import active_client, plan_data
from daskgmm._progress import show_progress
from daskgmm._typing import Output
from daskgmm.checkpoint import open_checkpoint, saving_callback

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(
            f"The '{name}' parameter of GaussianMixture must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )


def _check_real(name, value, low=0.0):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= low:
        raise ValueError(
            f"The '{name}' parameter of GaussianMixture must be a float in the range "
            f"[{low}, inf). Got {value!r} instead."
        )


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture model fitted by out-of-core, map-reduce EM on Dask.

    A drop-in for :class:`sklearn.mixture.GaussianMixture`: same parameters, fitted
    attributes and methods, and the same numbers for the same initial parameters.
    Each EM iteration is one pass over the data: one fused task per chunk computes
    the responsibilities and the sufficient statistics, a tree reduction brings
    K·D² numbers to the driver, and the M-step runs there in numpy.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        Form of the covariance matrices.
    tol : float, default=1e-3
        Convergence threshold on the change of the lower bound (mean log-likelihood).
    reg_covar : float, default=1e-6
        Non-negative regularisation added to the diagonal of the covariances.
    max_iter : int, default=100
        Number of EM iterations per start.
    n_init : int, default=1
        Number of starts; the one with the largest lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        Initialisation. ``kmeans`` and ``k-means++`` run on a seeded sample of at most
        ``init_sample_size`` rows (all rows when there are fewer), then one pass over
        all the data builds the initial statistics; see :mod:`daskgmm._init`.
    weights_init, means_init, precisions_init : array-like, default=None
        User-given initial parameters (scikit-learn's shapes).
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation (and :meth:`sample`).
    warm_start : bool, default=False
        Continue from the last fit's parameters on the next ``fit``.
    verbose : int, default=0
        1 prints each start and iteration number, 2 also times and lower-bound changes
        (scikit-learn's lines). With ``verbose >= 1`` and a terminal or notebook
        attached, a progress bar per start also shows the iteration, lower bound,
        change and seconds per iteration; ``verbose=0`` is silent.
    verbose_interval : int, default=10
        Iterations between verbose messages.
    chunk_size : int or None, default=None
        Rows per chunk. For in-memory input, None picks about 32 MiB per chunk (and at
        least two chunks per core for large arrays); for dask/Zarr input, None keeps
        the input's row chunks.
    init_sample_size : int, default=100_000
        Most rows that k-means / k-means++ initialisation sees.
    split_every : int, default=16
        Fan-in of the tree reduction of the per-chunk statistics.
    persist : {'auto', True, False}, default='auto'
        Whether the data is held in (cluster) memory across EM iterations. ``False``
        streams every chunk from storage in every iteration and keeps only the
        statistics, so data larger than the cluster's memory can be fitted.
        ``'auto'`` persists only on a distributed cluster and only when the data
        takes at most half of the workers' memory limits, and logs its choice on the
        ``daskgmm`` logger (``True`` without a distributed scheduler loads the data
        into this process's memory). In-memory (numpy) input on a
        distributed cluster is sent to the workers once, whatever this setting says
        (except ``False``, which sends it with every iteration).
    checkpoint : str or os.PathLike, default=None
        File where the EM state is saved, atomically and without pickle, after the
        initialisation and after every iteration (see :mod:`daskgmm.checkpoint`).
        ``fit(X, resume=True)`` continues from it to the same result as an
        uninterrupted fit.
    on_collapse : {'raise', 'reseed'}, default='raise'
        What to do when a component dies (less than one row's worth of weight) or its
        covariance is not positive definite. ``'raise'`` is scikit-learn's behaviour
        (the error for singular covariances); ``'reseed'`` splits the component that
        contributes most to the negative log-likelihood along its principal axis,
        logs it and records it in ``history_`` (key ``reseeded``).
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        Rows with NaN: refused (``'raise'``), left out of the fit and given label -1 and
        NaN scores (``'omit'``), or used with the missing features integrated out
        exactly, in the E-step and the statistics (``'marginalize'``); see
        :mod:`daskgmm._missing`.
    incremental : int or None, default=None
        Incremental EM (Neal & Hinton): after a first full pass, each iteration re-reads
        only this many chunks and keeps the others' statistics. None is full EM.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        (n_components, n_features, n_features) for 'full', (n_features, n_features)
        for 'tied', (n_components, n_features) for 'diag', (n_components,) for 'spherical'.
    precisions_ : ndarray, same shape as ``covariances_``
    precisions_cholesky_ : ndarray, same shape as ``covariances_``
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood of the best start at its last iteration.
    lower_bounds_ : list of float
        Lower bound per iteration of the best start.
    history_ : list of dict
        Per iteration of the best start: ``iteration``, ``lower_bound``, ``change``,
        ``seconds`` and ``bytes_read`` (bytes of data chunks streamed from storage in
        that iteration: the data's ``nbytes`` when streamed, 0 when held in memory).
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        chunk_size: int | None = None,
        init_sample_size: int = DEFAULT_INIT_SAMPLE_SIZE,
        split_every: int = 16,
        persist: bool | str = "auto",
        checkpoint=None,
        on_collapse: str = "raise",
        nan_policy: str = "raise",
        incremental: int | None = None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.chunk_size = chunk_size
        self.init_sample_size = init_sample_size
        self.split_every = split_every
        self.persist = persist
        self.checkpoint = checkpoint
        self.on_collapse = on_collapse
        self.nan_policy = nan_policy
        self.incremental = incremental

    # ------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------
    def _check_params(self) -> None:
        _check_int("n_components", self.n_components, 1)
        _check_int("max_iter", self.max_iter, 0)
        _check_int("n_init", self.n_init, 1)
        _check_int("verbose_interval", self.verbose_interval, 1)
        _check_int("init_sample_size", self.init_sample_size, 1)
        _check_int("split_every", self.split_every, 2)
        _check_real("tol", self.tol)
        _check_real("reg_covar", self.reg_covar)
        if self.chunk_size is not None:
            _check_int("chunk_size", self.chunk_size, 1)
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                "The 'covariance_type' parameter of GaussianMixture must be a str among "
                f"{set(COVARIANCE_TYPES)}. Got {self.covariance_type!r} instead."
            )
        if self.init_params not in INIT_PARAMS:
            raise ValueError(
                "The 'init_params' parameter of GaussianMixture must be a str among "
                f"{set(INIT_PARAMS)}. Got {self.init_params!r} instead."
            )
        if not (self.persist == "auto" or isinstance(self.persist, (bool, np.bool_))):
            raise ValueError(
                f"The 'persist' parameter of GaussianMixture must be 'auto', True or False. Got {self.persist!r} instead."
            )
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise ValueError(
                "The 'checkpoint' parameter of GaussianMixture must be a file path (str or os.PathLike) "
                f"or None. Got {self.checkpoint!r} instead."
            )
        check_extra_params(self)  # on_collapse, nan_policy, incremental (daskgmm/_multi.py)
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(f"The 'warm_start' parameter of GaussianMixture must be a bool. Got {self.warm_start!r}.")

    def _validate(self, X, reset: bool) -> Input:
        # fitting needs two rows; predicting works row by row
        return to_dask(X, chunk_rows=self.chunk_size, estimator=self, reset=reset, min_samples=2 if reset else 1)

    def _check_sample_weight(self, sample_weight, inp: Input) -> da.Array | None:
        if sample_weight is None:
            return None
        n = inp.n_samples
        if isinstance(sample_weight, da.Array):
            w = sample_weight.astype(np.float64)
            if w.ndim != 1 or w.shape[0] != n:
                raise ValueError(f"sample_weight.shape == {w.shape}, expected {(n,)}!")
            check_dask_weights(w)  # one pass over the weights (not X): NaN/inf, negative, zero sum
            return w.rechunk((inp.data.chunks[0],))
        w = np.asarray(sample_weight)
        if w.ndim == 0:
            w = np.full(n, float(w))
        if w.dtype.kind not in "biuf":
            raise ValueError(f"sample_weight must be numeric, got dtype {w.dtype}.")
        w = w.astype(np.float64)
        if w.shape != (n,):
            raise ValueError(f"sample_weight.shape == {w.shape}, expected {(n,)}!")
        if not np.all(np.isfinite(w)):
            raise ValueError("sample_weight contains NaN or infinity: weights must be finite.")
        if np.any(w < 0):
            raise ValueError("Negative values in sample_weight: weights must be >= 0.")
        if w.sum() <= 0:
            raise ValueError("sample_weight sums to zero: at least one row needs a positive weight.")
        return da.from_array(w, chunks=(inp.data.chunks[0],))

    # ------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None, callback=None, resume: bool = False):
        """Estimate the parameters with EM (one pass over the data per iteration).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy array, dask array, Zarr array or path, or xarray DataArray of
            shape (samples, features).
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights per row: a weight of 2 counts a row twice.
        callback : callable, default=None
            Called after every EM iteration as ``callback(state, record)``, where
            ``record`` is the iteration's history entry (``iteration``,
            ``lower_bound``, ``change``, ``seconds``, ``bytes_read``).
        resume : bool, default=False
            Continue from the file given as ``checkpoint`` (a fresh fit when it does
            not exist yet). Refused with a clear error when the checkpoint belongs
            to other data or other settings.

        Returns
        -------
        self : GaussianMixture
        """
        self._check_params()
        inp = self._validate(X, reset=True)
        self._fit(inp, sample_weight, callback=callback, resume=resume)
        return self

    def _fit(self, inp: Input, sample_weight=None, callback=None, resume: bool = False) -> None:
        if inp.n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {self.n_components}, n_samples = {inp.n_samples}"
            )
        ct = self.covariance_type
        w = self._check_sample_weight(sample_weight, inp)
        k, d = self.n_components, inp.n_features
        weights_init = check_weights(self.weights_init, k) if self.weights_init is not None else None
        means_init = check_means(self.means_init, k, d) if self.means_init is not None else None
        precisions_init = (
            check_precisions(self.precisions_init, ct, k, d) if self.precisions_init is not None else None
        )
        ckpt, resumed = open_checkpoint(self, inp, w, resume)
        # hold the data in (cluster) memory or stream it every iteration (issue 5)
        X, bytes_per_pass = plan_data(inp.data, self.persist, inp.kind == "numpy")
        if w is not None and active_client() is not None:
            w = w.persist()
        fit_inp = dataclasses.replace(inp, data=X)
        blocks = X.to_delayed(optimize_graph=False).ravel()
        wblocks = w.to_delayed(optimize_graph=False).ravel() if w is not None else None
        cfg = EMConfig(
            covariance_type=ct,
            tol=self.tol,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            split_every=self.split_every,
            verbose=self.verbose,
            verbose_interval=self.verbose_interval,
            bytes_per_pass=bytes_per_pass,
            progress=show_progress(self.verbose),
        )
        data_token = X.name + ("" if w is None else w.name)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)

        best: EMState | None = None
        if uses_multi(self) and ckpt is None:
            # n_init starts share each data pass; on_collapse, nan_policy, incremental (_multi.py)
            inits = (weights_init, means_init, precisions_init)
            best = fit_multi(self, fit_inp, w, cfg, do_init, random_state, inits, callback)
        else:
            # one start after another: a single start, or starts saved to a checkpoint
            first = 0
            if resumed is not None:
                random_state.set_state(resumed.rng_state)
                best, first = resumed.best, resumed.start
            for init in range(first, n_init):
                if self.verbose:
                    print(f"Initialization {init}")
                if resumed is not None and init == resumed.start and resumed.state is not None:
                    state = resumed.state
                elif do_init:
                    params = self._initialize(fit_inp, w, random_state, weights_init, means_init, precisions_init)
                    state = EMState(params=params)
                else:
                    state = EMState(
                        params=Params(self.weights_, self.means_, self.covariances_, self.precisions_cholesky_),
                        lower_bound=self.lower_bound_,
                    )
                on_iteration = callback
                if ckpt is not None:
                    ckpt.save(init, state, best, random_state)
                    on_iteration = saving_callback(ckpt, init, best, random_state, callback)
                if self.max_iter > 0:
                    label = "GMM" if n_init == 1 else f"GMM start {init + 1}/{n_init}"
                    run_em(state, blocks, wblocks, cfg, X.dtype, data_token, callback=on_iteration, label=label)
                if best is None or improves(state.lower_bound, best.lower_bound):
                    best = state
                if ckpt is not None:
                    ckpt.save(init + 1, None, best, random_state, finished=init + 1 == n_init)

        if not best.converged and self.max_iter > 0:
            warn_not_converged()
        params = complete_params(best.params, ct)
        self._set_parameters(params)
        self.converged_ = bool(best.converged)
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = list(best.lower_bounds)
        self.history_ = list(best.history)

    def _initialize(
        self, inp, w, random_state, weights_init, means_init, precisions_init, reseed=None, sample_cache=None
    ) -> Params:
        ct = self.covariance_type
        covariances = None
        if weights_init is None or means_init is None or precisions_init is None:
            weights, means, covariances = initialize(
                inp.data,
                n_samples=inp.n_samples,
                n_components=self.n_components,
                covariance_type=ct,
                init_params=self.init_params,
                reg_covar=self.reg_covar,
                random_state=random_state,
                init_sample_size=self.init_sample_size,
                in_memory=inp.kind == "numpy",
                sample_weight=w,
                split_every=self.split_every,
                token=dask.base.tokenize(inp.data.name),  # keys read 'gmm-init-<hash>' on the dashboard
                sample_cache=sample_cache,
            )
        if weights_init is not None:
            weights = weights_init
        if means_init is not None:
            means = means_init
        if precisions_init is not None:
            prec_chol = precision_cholesky_from_precisions(precisions_init, ct)
            covariances = None
        else:
            if reseed is not None:  # on_collapse="reseed": dead initial components (daskgmm/_multi.py)
                weights, means, covariances = reseed(weights, means, covariances)
            prec_chol = compute_precision_cholesky(covariances, ct, inp.data.dtype)
        return Params(np.asarray(weights, float), np.asarray(means, float), covariances, prec_chol)

    def _set_parameters(self, params: Params) -> None:
        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = params.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(params.precisions_cholesky, self.covariance_type)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the most probable component of each row.

        Equal to ``fit(X).predict(X)`` by construction (a final E-step at the fitted
        parameters). numpy in gives numpy out; dask/Zarr/xarray in gives lazy output.
        """
        self._check_params()
        inp = self._validate(X, reset=True)
        self._fit(inp, sample_weight)
        return self._predict_input(inp, "labels")

    # ------------------------------------------------------------------
    # prediction (lazy map_blocks over the same chunks)
    # ------------------------------------------------------------------
    def _estep_params(self, dtype) -> EStepParams:
        return EStepParams(self.weights_, self.means_, self.precisions_cholesky_, self.covariance_type, dtype)

    def _predict_input(self, inp: Input, what: Output):
        """Lazy ``what`` for every row: one :func:`~daskgmm._kernels.predict_output` task per chunk.

        ``nan_policy="omit"`` is the kernel's NaN nodata rule (label -1, NaN scores);
        ``"marginalize"`` hands it the marginal parameters of :mod:`daskgmm._missing`.
        """
        X = inp.data
        policy = getattr(self, "nan_policy", "raise")
        if policy == "marginalize":
            from daskgmm._missing import marginal_params

            params = marginal_params(
                self.weights_, self.means_, self.covariances_, self.precisions_cholesky_, self.covariance_type
            )
        else:
            params = self._estep_params(X.dtype)
        nodata = np.nan if policy == "omit" else None
        token = dask.base.tokenize(self.weights_, self.means_, self.precisions_cholesky_, X.dtype, policy)
        p = shared(params, name=f"gmm-predict-params-{token}")
        chunks, dtype = predict_output_spec((X.chunks[0],), what, self.n_components, X.dtype)
        out = da.map_blocks(
            predict_output,
            X,
            p,
            what,
            nodata,
            chunks=chunks,
            drop_axis=None if what == "probabilities" else 1,
            dtype=dtype,
            name=f"gmm-predict-{what}-{dask.base.tokenize(X.name, token, what)}",
            meta=np.empty((0,) * len(chunks), dtype=dtype),
        )
        return self._wrap(out, inp, what)

    def _wrap(self, out: da.Array, inp: Input, what: Output):
        if inp.kind == "numpy":
            return out.compute()
        if inp.kind == "xarray":
            import xarray as xr

            dims = (inp.sample_dim,) if out.ndim == 1 else (inp.sample_dim, "component")
            coords: dict[str, Any] = dict(inp.sample_coords)
            if out.ndim == 2:
                coords["component"] = np.arange(self.n_components)
            return xr.DataArray(out, dims=dims, coords=coords, name=what)
        return out

    def predict(self, X):
        """Most probable component per row: shape (n_samples,), int64 (a DataArray ``labels`` for xarray)."""
        check_is_fitted(self)
        return self._predict_input(self._validate(X, reset=False), "labels")

    def predict_proba(self, X):
        """Posterior probability of each component per row: shape (n_samples, n_components).

        For xarray input, a DataArray ``probabilities`` with a ``component`` dimension.
        """
        check_is_fitted(self)
        return self._predict_input(self._validate(X, reset=False), "probabilities")

    def score_samples(self, X):
        """Log of the mixture density at each row: shape (n_samples,), float64 (``log_density`` for xarray)."""
        check_is_fitted(self)
        return self._predict_input(self._validate(X, reset=False), "log_density")

    def score(self, X, y=None):
        """Mean log-likelihood per row (a float; computed for lazy input)."""
        check_is_fitted(self)
        inp = self._validate(X, reset=False)
        return float(self._mean_score(inp))

    def _mean_score(self, inp: Input) -> float:
        s = self._predict_input(inp, "log_density")
        data = s.data if inp.kind == "xarray" else s
        if getattr(self, "nan_policy", "raise") == "omit":  # rows with NaN have no score: left out
            return float(np.asarray(da.nanmean(data) if isinstance(data, da.Array) else np.nanmean(data)))
        return float(np.asarray(data.mean() if isinstance(data, da.Array) else np.mean(data)))

    def _n_parameters(self) -> int:
        return n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    def bic(self, X) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        check_is_fitted(self)
        inp = self._validate(X, reset=False)
        n = inp.n_samples
        return -2 * self._mean_score(inp) * n + self._n_parameters() * np.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        check_is_fitted(self)
        inp = self._validate(X, reset=False)
        return -2 * self._mean_score(inp) * inp.n_samples + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1):
        """Draw samples from the fitted mixture (scikit-learn's random stream).

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
        _, n_features = self.means_.shape
        rng = check_random_state(self.random_state)
        n_samples_comp = rng.multinomial(n_samples, self.weights_)
        if self.covariance_type == "full":
            X = np.vstack(
                [
                    rng.multivariate_normal(mean, cov, int(s))
                    for mean, cov, s in zip(self.means_, self.covariances_, n_samples_comp)
                ]
            )
        elif self.covariance_type == "tied":
            X = np.vstack(
                [rng.multivariate_normal(mean, self.covariances_, int(s)) for mean, s in zip(self.means_, n_samples_comp)]
            )
        else:
            X = np.vstack(
                [
                    mean + rng.standard_normal(size=(s, n_features)) * np.sqrt(cov)
                    for mean, cov, s in zip(self.means_, self.covariances_, n_samples_comp)
                ]
            )
        y = np.concatenate([np.full(int(s), j, dtype=np.int64) for j, s in enumerate(n_samples_comp)])
        return X, y

    def _html_repr(self) -> str:
        # Jupyter: scikit-learn's parameter view plus the fit summary (daskgmm/_repr.py)
        from daskgmm._repr import html_repr

        return html_repr(self)

    # ------------------------------------------------------------------
    # streaming and interoperability (daskgmm/_streaming.py)
    # ------------------------------------------------------------------
    def partial_fit(self, X, y=None, sample_weight=None):
        """One stepwise-EM update from a batch of rows (data arriving over time).

        The running statistics become ``(1 - eta_t) s + eta_t s(batch)`` with
        ``eta_t = (t + 1) ** -0.6`` for the t-th batch (t = 0, 1, ...; the first batch
        initialises with ``init_params`` and gets ``eta_0 = 1``), then the M-step runs;
        see :mod:`daskgmm._streaming`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : GaussianMixture
        """
        from daskgmm._streaming import partial_fit

        return partial_fit(self, X, sample_weight)

    def to_sklearn(self):
        """A fitted :class:`sklearn.mixture.GaussianMixture` with the same parameters."""
        from daskgmm._streaming import to_sklearn

        return to_sklearn(self)

    @classmethod
    def from_sklearn(cls, model, **params):
        """A fitted daskgmm model from a fitted :class:`sklearn.mixture.GaussianMixture`.

        ``params`` override or add constructor parameters (e.g. ``chunk_size``).
        """
        from daskgmm._streaming import from_sklearn

        return from_sklearn(cls, model, **params)

    # ------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------
    def save(self, path) -> None:
        """Save the fitted model to ``path`` (a ``.npz`` of arrays + JSON metadata; no pickle)."""
        from daskgmm.io import save_model

        save_model(self, path)
