"""``BayesianGaussianMixture``: scikit-learn's variational mixture over the one map-reduce engine.

The fit is the engine's, with :class:`daskgmm._bayesian.VariationalFamily` as the model family:
one pass over the data per iteration (the same fused E-step + statistics kernel as EM, with the
variational log-weights), the variational M-step and lower bound on the driver. One more pass
at the start computes the data's mean and covariance, the defaults of ``mean_prior`` and
``covariance_prior``.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state

from daskgmm import _storage
from daskgmm._base import BaseMixture, plan_fit_data
from daskgmm._bayesian import (
    PRIOR_TYPES,
    VariationalFamily,
    VariationalParams,
    default_priors,
    with_log_weights,
)
from daskgmm._engine import Candidate, EMConfig, EMState, Engine, warn_not_converged
from daskgmm._gaussian import precisions_from_cholesky
from daskgmm._init import DEFAULT_INIT_SAMPLE_SIZE, InitSpec, complete_rows, data_moments, start_factory
from daskgmm._input import Input, check_n_samples, check_sample_weight
from daskgmm._params import BAYESIAN_PARAMS, PARAMS, check_params
from daskgmm._progress import show_progress
from daskgmm.checkpoint import fit_settings, open_checkpoint

#: the fitted attributes beyond GaussianMixture's (model files and scikit-learn interop)
VARIATIONAL_ATTRIBUTES = ("weight_concentration_", "mean_precision_", "degrees_of_freedom_")
PRIOR_ATTRIBUTES = (
    "weight_concentration_prior_",
    "mean_precision_prior_",
    "mean_prior_",
    "degrees_of_freedom_prior_",
    "covariance_prior_",
)


def _check_array(value, shape: tuple, name: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"The parameter '{name}' should have the shape of {shape}, but got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"The parameter '{name}' contains NaN or infinity.")
    return a


def check_covariance_prior(value, covariance_type: str, n_features: int):
    """scikit-learn's checks of a given ``covariance_prior`` (shape, symmetric positive definite)."""
    d = n_features
    if covariance_type in ("full", "tied"):
        a = _check_array(value, (d, d), f"{covariance_type} covariance_prior")
        if not (np.allclose(a, a.T) and np.all(np.linalg.eigvalsh(a) > 0.0)):
            raise ValueError(f"'{covariance_type} precision' should be symmetric, positive-definite")
        return a
    if covariance_type == "diag":
        a = _check_array(value, (d,), "diag covariance_prior")
        if np.any(a <= 0.0):
            raise ValueError("'diag precision' should be positive")
        return a
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(
            "The 'covariance_prior' parameter of BayesianGaussianMixture must be None, an array-like "
            f"or a float in the range (0.0, inf). Got {value!r} instead."
        )
    return np.asarray(float(value))


class BayesianGaussianMixture(BaseMixture):
    """Variational Bayesian Gaussian mixture fitted out of core, one pass over the data per iteration.

    A drop-in for :class:`sklearn.mixture.BayesianGaussianMixture`: same parameters, defaults,
    fitted attributes and methods, and the same numbers for the same initialisation. With a
    Dirichlet-process prior (the default) or a Dirichlet-distribution prior on the weights,
    components the data does not need get weights near zero, so ``n_components`` is an upper
    bound, not a choice: count ``(weights_ > 1e-2).sum()``.

    Parameters
    ----------
    n_components : int, default=1
        Upper bound on the number of components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the lower bound (a total over the rows, as
        scikit-learn's).
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
        Starts; the one with the largest lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        As :class:`daskgmm.GaussianMixture` (scikit-learn's for data up to ``init_sample_size`` rows).
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}, default='dirichlet_process'
    weight_concentration_prior : float or None, default=None
        ``1 / n_components`` when None.
    mean_precision_prior : float or None, default=None
        1 when None.
    mean_prior : array-like of shape (n_features,), default=None
        The data mean when None.
    degrees_of_freedom_prior : float or None, default=None
        ``n_features`` when None; must be greater than ``n_features - 1``.
    covariance_prior : float or array-like, default=None
        The data's covariance (full, tied), variances (diag) or mean variance (spherical) when None.
    random_state, warm_start, verbose, verbose_interval :
        As scikit-learn's.
    chunk_size, init_sample_size, split_every, persist, checkpoint :
        As :class:`daskgmm.GaussianMixture` (out of core, checkpoints and resume).
    nan_policy : {'raise', 'omit'}, default='raise'
        ``'omit'`` leaves rows with NaN out of the fit (and the priors) and gives them label -1.
        ``'marginalize'`` is refused: the expected log-density of the observed features under the
        Wishart posterior of the full precision is not implemented.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ :
        scikit-learn's (``covariances_`` is the Wishart scale over the degrees of freedom).
    weight_concentration_ : tuple of two ndarrays (dirichlet_process) or ndarray
    mean_precision_ : ndarray of shape (n_components,)
    degrees_of_freedom_ : ndarray of shape (n_components,), or float for 'tied'
    weight_concentration_prior_, mean_precision_prior_, mean_prior_, degrees_of_freedom_prior_,
    covariance_prior_ :
        The priors used (defaults resolved).
    converged_, n_iter_ : bool, int
    lower_bound_ : float
        The evidence lower bound (up to constants, a total) of the best start.
    lower_bounds_ : list of float
    history_ : list of dict
        Per iteration: ``iteration``, ``lower_bound``, ``change``, ``seconds``, ``bytes_read``.
    n_features_in_ : int
    """

    _SKLEARN_CLASS = "BayesianGaussianMixture"
    _EXTRA_FITTED = VARIATIONAL_ATTRIBUTES + PRIOR_ATTRIBUTES

    def __init__(
        self,
        *,
        n_components: int = 1,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weight_concentration_prior_type: str = "dirichlet_process",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior=None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        chunk_size: int | None = None,
        init_sample_size: int = DEFAULT_INIT_SAMPLE_SIZE,
        split_every: int = 16,
        persist: bool | str = "auto",
        checkpoint=None,
        nan_policy: str = "raise",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.chunk_size = chunk_size
        self.init_sample_size = init_sample_size
        self.split_every = split_every
        self.persist = persist
        self.checkpoint = checkpoint
        self.nan_policy = nan_policy

    # ------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------
    def _check_params(self) -> None:
        names = [n for n in (*PARAMS, *BAYESIAN_PARAMS) if n in self.get_params()]
        check_params({n: getattr(self, n) for n in names}, owner="BayesianGaussianMixture")
        if self.nan_policy == "marginalize":
            raise ValueError(
                "BayesianGaussianMixture supports nan_policy 'raise' and 'omit', not 'marginalize': "
                "integrating missing features out of the variational E-step is not implemented. "
                "Use nan_policy='omit' (rows with NaN are left out) or impute them first."
            )

    def _prior(self, X, w, n_features: int, leaf_rows=None):
        """The priors (scikit-learn's ``_check_parameters``) and the data's total weight: one pass
        (``leaf_rows``: those of held chunks bundling leaves)."""
        ct = self.covariance_type
        mean_prior = (
            None if self.mean_prior is None else _check_array(self.mean_prior, (n_features,), "means")
        )
        cov_prior = (
            None
            if self.covariance_prior is None
            else check_covariance_prior(self.covariance_prior, ct, n_features)
        )
        total, mean, cov = data_moments(X, w, ct, self.split_every, leaf_rows)
        prior = default_priors(
            self.n_components,
            n_features,
            ct,
            mean,
            cov,
            prior_type=self.weight_concentration_prior_type,
            weight_concentration_prior=self.weight_concentration_prior,
            mean_precision_prior=self.mean_precision_prior,
            mean_prior=mean_prior,
            degrees_of_freedom_prior=self.degrees_of_freedom_prior,
            covariance_prior=cov_prior,
        )
        return prior, total

    def _fit_settings(self, w) -> dict:
        settings = fit_settings(self, w)
        for name in BAYESIAN_PARAMS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                value = np.asarray(value, dtype=np.float64).tolist()
            settings[name] = value
        return settings

    # ------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------
    @_storage.accepts_storage_options
    def fit(self, X, y=None, sample_weight=None, callback=None, resume: bool = False, storage_options=None):
        """Fit the variational posterior (one pass over the data per iteration).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, dask, Zarr (array or path) or xarray.
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights per row: a weight of 2 counts a row twice (in the priors too).
        callback : callable, default=None
            ``callback(state, record)`` after every iteration of every start.
        resume : bool, default=False
            Continue from the file given as ``checkpoint``.
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        self : BayesianGaussianMixture
        """
        self._check_params()
        self._fit(self._validate(X, reset=True), sample_weight, callback=callback, resume=resume)
        return self

    @_storage.accepts_storage_options
    def fit_predict(self, X, y=None, sample_weight=None, *, storage_options: dict | None = None):
        """Fit, then the most probable component of each row (equal to ``fit(X).predict(X)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
        storage_options : dict, optional
            fsspec options for ``X`` given as a URL (``s3://bucket/data.zarr``), over what the
            environment provides.

        Returns
        -------
        labels : ndarray, dask array or DataArray of shape (n_samples,)
        """
        self._check_params()
        inp = self._validate(X, reset=True)
        self._fit(inp, sample_weight)
        return self._predict_input(inp, "labels")

    def _fit(self, inp: Input, sample_weight=None, callback=None, resume: bool = False) -> None:
        check_n_samples(inp.n_samples, self.n_components)
        w = check_sample_weight(sample_weight, inp)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        ckpt = open_checkpoint(self.checkpoint, self._fit_settings(w), inp, resume)
        X, w, data = plan_fit_data(
            inp, w, persist=self.persist, nan_policy=self.nan_policy, split_every=self.split_every
        )
        rows = complete_rows(X, w, self.nan_policy, self.n_components)
        leaves = data.leaf_rows if rows[0] is X else None
        prior, total = self._prior(rows[0], rows[1], inp.n_features, leaves)
        family = VariationalFamily(prior)
        ct, dtype = self.covariance_type, inp.dtype
        random_state = check_random_state(self.random_state)
        if do_init:
            spec = InitSpec(
                self.n_components,
                ct,
                self.init_params,
                self.reg_covar,
                self.init_sample_size,
                self.split_every,
            )
            make = start_factory(
                spec,
                X,
                w,
                inp,
                (None, None, None),
                random_state,
                self.nan_policy,
                rows=rows,
                leaf_rows=data.leaf_rows,
            )
            init_total = float(rows[2]) if rows[1] is None else total

            def init(reseed):
                return family.initial(make(None), init_total, ct, dtype)

            inits = [init] * self.n_init
        else:
            fitted = EMState(params=self._variational_params(), lower_bound=self.lower_bound_)
            inits = [lambda reseed: fitted]
        n = len(inits)
        engine = Engine(
            data,
            [Candidate(EMConfig(ct, self.tol, self.reg_covar, self.max_iter, family=family), inits)],
            checkpoint=ckpt,
            resume=resume,
            random_state=random_state,
            verbose=self.verbose,
            verbose_interval=self.verbose_interval,
            progress=show_progress(self.verbose),
            callback=callback,
            desc="Bayesian GMM" if n == 1 else f"Bayesian GMM, {n} starts",
        )
        ((best, _),) = engine.run()
        if not best.converged and self.max_iter > 0:
            warn_not_converged()
        self._set_fitted(best, prior)

    def _set_fitted(self, state: EMState, prior) -> None:
        """Every fitted attribute, set in one place, from the start that is kept (float64 for any
        data dtype, as scikit-learn's variational attributes, which mix in the float64 priors)."""
        p: VariationalParams = state.params
        ct, dtype = self.covariance_type, np.float64
        self.weights_ = np.asarray(p.weights, dtype=dtype)
        self.means_ = np.asarray(p.means, dtype=dtype)
        self.covariances_ = np.asarray(p.covariances, dtype=dtype)
        self.precisions_cholesky_ = np.asarray(p.precisions_cholesky, dtype=dtype)
        self.precisions_ = np.asarray(precisions_from_cholesky(p.precisions_cholesky, ct), dtype=dtype)
        wc = np.asarray(p.weight_concentration, dtype=np.float64)
        self.weight_concentration_ = (wc[0].copy(), wc[1].copy()) if wc.ndim == 2 else wc.copy()
        self.mean_precision_ = np.asarray(p.mean_precision, dtype=np.float64)
        dof = np.asarray(p.degrees_of_freedom, dtype=np.float64)
        self.degrees_of_freedom_ = float(dof) if ct == "tied" else dof
        self.weight_concentration_prior_ = prior.weight_concentration
        self.mean_precision_prior_ = prior.mean_precision
        self.mean_prior_ = prior.mean
        self.degrees_of_freedom_prior_ = prior.degrees_of_freedom
        self.covariance_prior_ = float(prior.covariance) if ct == "spherical" else prior.covariance
        self.converged_ = bool(state.converged)
        self.n_iter_ = int(state.n_iter)
        self.lower_bound_ = float(state.lower_bound)
        self.lower_bounds_ = list(state.lower_bounds)
        self.history_ = list(state.history)

    def _variational_params(self) -> VariationalParams:
        """The fitted posterior in float64 (warm start, prediction)."""
        f = self._fitted_params()
        wc = self.weight_concentration_
        wc = np.stack(wc) if isinstance(wc, tuple) else np.asarray(wc, dtype=np.float64)
        vp = VariationalParams(
            f.weights,
            f.means,
            f.covariances,
            f.precisions_cholesky,
            np.asarray(wc, dtype=np.float64),
            np.asarray(self.mean_precision_, dtype=np.float64),
            np.asarray(self.degrees_of_freedom_, dtype=np.float64),
            None,
        )
        return with_log_weights(vp, self.weight_concentration_prior_type)

    def _estep_log_weights(self):
        # scikit-learn's _estimate_weighted_log_prob: E[log pi] and the Wishart terms
        return self._variational_params().log_weights

    def _extra_arrays(self) -> dict:
        """The fitted arrays a model file stores beyond GaussianMixture's (see :mod:`daskgmm.io`)."""
        out = {}
        for name in self._EXTRA_FITTED:
            value = getattr(self, name)
            out[name] = np.stack(value) if isinstance(value, tuple) else np.asarray(value, dtype=np.float64)
        return out

    def _load_extra_arrays(self, arrays) -> None:
        for name in self._EXTRA_FITTED:
            a = np.asarray(arrays[name], dtype=np.float64)
            if name == "weight_concentration_" and a.ndim == 2:
                value = (a[0], a[1])
            elif a.ndim == 0:
                value = float(a)
            else:
                value = a
            setattr(self, name, value)

    @property
    def bic(self):
        """Not defined, as in scikit-learn: the variational score is not a likelihood."""
        raise AttributeError("'BayesianGaussianMixture' has no bic: its score is not a likelihood")

    @property
    def aic(self):
        """Not defined, as in scikit-learn: the variational score is not a likelihood."""
        raise AttributeError("'BayesianGaussianMixture' has no aic: its score is not a likelihood")

    def _permute_extra(self, order) -> None:
        """Reorder the posterior's per-component arrays with the components (segmentation's
        sorting); a Dirichlet process's sticks have an order of their own, so it is refused."""
        if self.weight_concentration_prior_type == "dirichlet_process":
            raise ValueError(
                "The components of a Dirichlet-process posterior are ordered sticks and cannot be "
                "reordered; use weight_concentration_prior_type='dirichlet_distribution' to sort them."
            )
        self.weight_concentration_ = self.weight_concentration_[order]
        self.mean_precision_ = self.mean_precision_[order]
        if self.covariance_type != "tied":
            self.degrees_of_freedom_ = self.degrees_of_freedom_[order]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy == "omit"
        return tags


__all__ = ["BayesianGaussianMixture", "PRIOR_TYPES", "check_covariance_prior"]
