"""``GaussianMixture``: scikit-learn's estimator API over the map-reduce EM engine."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.utils import check_random_state

from daskgmm import _storage
from daskgmm._base import BaseMixture, plan_fit_data
from daskgmm._engine import (
    Candidate,
    DataPlan,
    EMConfig,
    EMState,
    Engine,
    complete_params,
    warn_not_converged,
)
from daskgmm._gaussian import precisions_from_cholesky
from daskgmm._init import DEFAULT_INIT_SAMPLE_SIZE, InitSpec, start_factory
from daskgmm._input import (
    Input,
    check_means,
    check_n_samples,
    check_precisions,
    check_sample_weight,
    check_weights,
)
from daskgmm._params import PARAMS, check_params
from daskgmm._progress import show_progress
from daskgmm._stepwise import stepwise_update
from daskgmm.checkpoint import fit_settings, open_checkpoint
from daskgmm.io import model_from_dict, read_model

logger = logging.getLogger("daskgmm")


class GaussianMixture(BaseMixture):
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
        (except ``False``, which sends it with every iteration). Data held on a cluster
        is about one chunk per worker thread, and each pass one task per chunk; the
        numbers are the same as streamed or on the threaded scheduler.
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
        check_params({name: getattr(self, name) for name in PARAMS})

    def _given(self, n_features: int) -> tuple:
        """``(weights_init, means_init, precisions_init)`` checked against the data."""
        k, ct = self.n_components, self.covariance_type
        return (
            check_weights(self.weights_init, k) if self.weights_init is not None else None,
            check_means(self.means_init, k, n_features) if self.means_init is not None else None,
            check_precisions(self.precisions_init, ct, k, n_features)
            if self.precisions_init is not None
            else None,
        )

    def _config(self) -> EMConfig:
        return EMConfig(self.covariance_type, self.tol, self.reg_covar, self.max_iter)

    def _init_spec(self) -> InitSpec:
        return InitSpec(
            self.n_components,
            self.covariance_type,
            self.init_params,
            self.reg_covar,
            self.init_sample_size,
            self.split_every,
        )

    # ------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------
    @_storage.accepts_storage_options
    def fit(self, X, y=None, sample_weight=None, callback=None, resume: bool = False, storage_options=None):
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
            Called after every EM iteration of every start as ``callback(state, record)``,
            where ``record`` is the iteration's history entry (``iteration``,
            ``lower_bound``, ``change``, ``seconds``, ``bytes_read``) and ``state.start``
            the start it belongs to.
        resume : bool, default=False
            Continue from the file given as ``checkpoint`` (a fresh fit when it does
            not exist yet). Refused with a clear error when the checkpoint belongs
            to other data or other settings.
        storage_options : dict, optional
            fsspec options (credentials, ``client_kwargs={"endpoint_url": ...}``) for ``X`` and
            ``checkpoint`` given as URLs (``s3://bucket/data.zarr``), over what the environment
            and fsspec's configuration provide.

        Returns
        -------
        self : GaussianMixture
            The fitted estimator.
        """
        self._check_params()
        inp = self._validate(X, reset=True)
        self._fit(inp, sample_weight, callback=callback, resume=resume)
        return self

    def _fit(self, inp: Input, sample_weight=None, callback=None, resume: bool = False) -> None:
        """Hand the engine a plan for this data, then set the fitted attributes."""
        check_n_samples(inp.n_samples, self.n_components)
        w = check_sample_weight(sample_weight, inp)
        given = self._given(inp.n_features)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        if self.incremental is not None and do_init and self.n_init > 1:
            raise ValueError("incremental EM runs one start: use n_init=1 with incremental.")
        ckpt = open_checkpoint(self.checkpoint, fit_settings(self, w), inp, resume)
        # hold the data in (cluster) memory or stream it every iteration; incremental EM counts
        # storage chunks, so its held chunks are not merged into coarse tasks
        X, w, data = plan_fit_data(
            inp,
            w,
            persist=self.persist,
            nan_policy=self.nan_policy,
            split_every=self.split_every,
            merge=self.incremental is None,
        )
        random_state = check_random_state(self.random_state)
        if do_init:
            inits = [
                start_factory(
                    self._init_spec(),
                    X,
                    w,
                    inp,
                    given,
                    random_state,
                    self.nan_policy,
                    leaf_rows=data.leaf_rows,
                )
            ] * self.n_init
        else:
            fitted = EMState(params=self._fitted_params(), lower_bound=self.lower_bound_)
            inits = [lambda reseed: fitted]
        candidate = Candidate(self._config(), inits, reseed=self.on_collapse == "reseed")
        n = len(inits)
        engine = Engine(
            data,
            [candidate],
            incremental=self.incremental,
            checkpoint=ckpt,
            resume=resume,
            random_state=random_state,
            verbose=self.verbose,
            verbose_interval=self.verbose_interval,
            progress=show_progress(self.verbose),
            callback=callback,
            desc="GMM" if n == 1 else f"GMM, {n} starts",
        )
        ((best, _),) = engine.run()
        if not best.converged and self.max_iter > 0:
            warn_not_converged()
        self._set_fitted(best, dtype=inp.dtype)

    def _set_fitted(self, state: EMState, dtype=np.float64, stream=None) -> None:
        """Every fitted attribute, set in one place (``fit``, ``partial_fit``, ``select_model``),
        from the state of the start that is kept.

        The M-step runs in float64; the parameter attributes are returned in the data's
        float dtype ``dtype``, as scikit-learn does (float32 data, float32 attributes).
        """
        p = complete_params(state.params, self.covariance_type)
        dtype = np.float32 if np.dtype(dtype) == np.float32 else np.float64
        values = (
            p.weights,
            p.means,
            p.covariances,
            p.precisions_cholesky,
            precisions_from_cholesky(p.precisions_cholesky, self.covariance_type),
        )
        for name, value in zip(
            ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"), values
        ):
            setattr(self, name, np.asarray(value, dtype=dtype))
        self.converged_ = bool(state.converged)
        self.n_iter_ = int(state.n_iter)
        self.lower_bound_ = float(state.lower_bound)
        self.lower_bounds_ = list(state.lower_bounds)
        self.history_ = list(state.history)
        # stepwise EM's running statistics: a fit starts them afresh from its parameters
        self._stream = stream

    @_storage.accepts_storage_options
    def fit_predict(self, X, y=None, sample_weight=None, *, storage_options: dict | None = None):
        """Fit, then return the most probable component of each row.

        Equal to ``fit(X).predict(X)`` by construction (a final E-step at the fitted
        parameters). numpy in gives numpy out; dask/Zarr/xarray in gives lazy output.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray, as for :meth:`fit`.
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights per row.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        labels : ndarray, dask array or DataArray of shape (n_samples,)
            Component of each row (int64).
        """
        self._check_params()
        inp = self._validate(X, reset=True)
        self._fit(inp, sample_weight)
        return self._predict_input(inp, "labels")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # NaN rows are refused by default, left out or marginalised on request
        tags.input_tags.allow_nan = self.nan_policy in ("omit", "marginalize")
        return tags

    # ------------------------------------------------------------------
    # streaming and interoperability (daskgmm/_streaming.py)
    # ------------------------------------------------------------------
    def partial_fit(self, X, y=None, sample_weight=None):
        """One stepwise-EM update from a batch of rows (data arriving over time).

        The running statistics become ``(1 - eta_t) s + eta_t s(batch)`` with
        ``eta_t = (t + 1) ** -0.6`` for the t-th batch (t = 0, 1, ...; the first batch
        initialises with ``init_params`` and gets ``eta_0 = 1``), then the M-step runs;
        see :mod:`daskgmm._streaming`. After ``fit``, the statistics are rebuilt from
        the fitted parameters and the schedule continues at ``t = 1``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One batch of rows (numpy, dask, Zarr or xarray).
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights per row.

        Returns
        -------
        self : GaussianMixture
            The updated estimator.
        """
        fitted = hasattr(self, "means_")
        if not fitted:
            self._check_params()
        inp = self._validate(X, reset=not fitted)
        w = check_sample_weight(sample_weight, inp)
        data = DataPlan(inp.data, w, self.nan_policy, 0, inp.n_samples, self.split_every)
        if fitted:
            params = complete_params(self._fitted_params(), self.covariance_type)
            previous = EMState(
                params,
                self.n_iter_,
                self.lower_bound_,
                list(self.lower_bounds_),
                history=list(getattr(self, "history_", [])),
            )
            stream = getattr(self, "_stream", None)  # None after fit(): rebuilt from the parameters
        else:
            check_n_samples(inp.n_samples, self.n_components)
            rs = check_random_state(self.random_state)
            make = start_factory(
                self._init_spec(), inp.data, w, inp, self._given(inp.n_features), rs, self.nan_policy
            )
            params, previous, stream = complete_params(make(None), self.covariance_type), None, None
        state, stream = stepwise_update(data, params, self._config(), stream, previous)
        self._set_fitted(state, dtype=inp.dtype, stream=stream)  # stepwise EM never converges
        return self


def model_class(meta: dict) -> type:
    """The estimator class that wrote a model's metadata (``GaussianMixture`` unless it names
    ``BayesianGaussianMixture``)."""
    if meta.get("class") == "BayesianGaussianMixture":
        from daskgmm._bayesian_mixture import BayesianGaussianMixture

        return BayesianGaussianMixture
    return GaussianMixture


@_storage.accepts_storage_options
def load(path, *, storage_options: dict | None = None) -> GaussianMixture:
    """Load a model written by :meth:`GaussianMixture.save` or
    :meth:`BayesianGaussianMixture.save` (never unpickles).

    Parameters
    ----------
    path : str or os.PathLike
        A model file: a local path or a URL (``s3://bucket/model.npz``).
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    GaussianMixture or BayesianGaussianMixture
        The fitted model (the class that saved it); ``saved_with_version_`` is the daskgmm version that wrote it.
    """
    arrays, meta = read_model(path)
    model = model_from_dict(arrays, meta, model_class(meta))
    model.saved_with_version_ = meta.get("daskgmm_version")
    return model
