"""Copy fitted parameters between daskgmm and scikit-learn's mixtures.

``GaussianMixture`` <-> :class:`sklearn.mixture.GaussianMixture`, ``BayesianGaussianMixture`` <->
:class:`sklearn.mixture.BayesianGaussianMixture`: an estimator class names its scikit-learn
counterpart (``_SKLEARN_CLASS``) and the fitted attributes it has beyond GaussianMixture's
(``_EXTRA_FITTED``).
"""

from __future__ import annotations

import numpy as np

_FITTED = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_",
    "precisions_cholesky_",
    "converged_",
    "n_iter_",
    "lower_bound_",
    "n_features_in_",
)


def _sklearn_class(cls):
    import sklearn.mixture

    return getattr(sklearn.mixture, getattr(cls, "_SKLEARN_CLASS", "GaussianMixture"))


def _copy(value, as_float64: bool = False):
    if isinstance(value, tuple):  # the Beta parameters of a Dirichlet process
        return tuple(_copy(v, as_float64) for v in value)
    if isinstance(value, np.ndarray):
        if as_float64 and value.dtype.kind == "f":
            return np.array(value, dtype=np.float64, copy=True)
        return np.array(value, copy=True)
    return value


def to_sklearn(est):
    """A fitted :class:`sklearn.mixture.GaussianMixture` with ``est``'s parameters and attributes.

    Parameters
    ----------
    est : fitted daskgmm GaussianMixture
        The constructor parameters scikit-learn shares and the fitted attributes
        (``weights_``, ``means_``, covariances, precisions, ``n_iter_``...) are copied.

    Returns
    -------
    sklearn.mixture.GaussianMixture
        Fitted; also ``lower_bounds_`` and, when ``est`` has them, ``feature_names_in_``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        ``est`` is not fitted.
    """
    from sklearn.utils.validation import check_is_fitted

    SkGaussianMixture = _sklearn_class(type(est))
    check_is_fitted(est)
    names = SkGaussianMixture().get_params().keys()
    params = {k: v for k, v in est.get_params().items() if k in names}
    sk = SkGaussianMixture(**params)
    for name in _FITTED + getattr(est, "_EXTRA_FITTED", ()):
        setattr(sk, name, _copy(getattr(est, name)))
    sk.lower_bounds_ = list(getattr(est, "lower_bounds_", []))
    if hasattr(est, "feature_names_in_"):
        sk.feature_names_in_ = np.array(est.feature_names_in_, copy=True)
    return sk


def from_sklearn(cls, model, **params):
    """A fitted ``cls`` (daskgmm) from a fitted scikit-learn ``GaussianMixture``.

    Parameters
    ----------
    cls : type
        The daskgmm estimator class to build.
    model : sklearn.mixture.GaussianMixture
        A fitted scikit-learn model; its parameters that ``cls`` shares are copied, and its
        fitted attributes (float arrays as float64 copies).
    **params
        Constructor parameters of ``cls`` to override or add (e.g. ``chunk_size``).

    Returns
    -------
    cls instance
        Fitted, with an empty ``history_``.

    Raises
    ------
    TypeError
        ``model`` is not a scikit-learn ``GaussianMixture``.
    sklearn.exceptions.NotFittedError
        ``model`` is not fitted.
    """
    from sklearn.utils.validation import check_is_fitted

    SkGaussianMixture = _sklearn_class(cls)
    if not isinstance(model, SkGaussianMixture):
        raise TypeError(
            f"from_sklearn expects a fitted sklearn.mixture.{SkGaussianMixture.__name__}, "
            f"got {type(model).__name__}."
        )
    check_is_fitted(model)
    names = cls().get_params().keys()
    kwargs = {k: v for k, v in model.get_params().items() if k in names}
    kwargs.update(params)
    est = cls(**kwargs)
    for name in _FITTED + getattr(cls, "_EXTRA_FITTED", ()):
        setattr(est, name, _copy(getattr(model, name), as_float64=True))
    est.lower_bounds_ = list(getattr(model, "lower_bounds_", []))
    est.history_ = []
    if hasattr(model, "feature_names_in_"):
        est.feature_names_in_ = np.array(model.feature_names_in_, copy=True)
    return est


class InteropMixin:
    """``to_sklearn`` / ``from_sklearn`` for daskgmm's estimators."""

    def to_sklearn(self):
        """A fitted :class:`sklearn.mixture.GaussianMixture` with the same parameters.

        Returns
        -------
        model : sklearn.mixture.GaussianMixture
            Fitted, with this model's parameters and fitted attributes.
        """
        return to_sklearn(self)

    @classmethod
    def from_sklearn(cls, model, **params):
        """A fitted model of this class from a fitted :class:`sklearn.mixture.GaussianMixture`.

        Parameters
        ----------
        model : sklearn.mixture.GaussianMixture
            A fitted scikit-learn model.
        **params
            Constructor parameters to override or add (e.g. ``chunk_size``).

        Returns
        -------
        estimator
            Fitted, with ``model``'s parameters.
        """
        return from_sklearn(cls, model, **params)
