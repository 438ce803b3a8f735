"""Copy fitted parameters between daskgmm and :class:`sklearn.mixture.GaussianMixture`."""

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
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    names = SkGaussianMixture().get_params().keys()
    params = {k: v for k, v in est.get_params().items() if k in names}
    sk = SkGaussianMixture(**params)
    for name in _FITTED:
        value = getattr(est, name)
        setattr(sk, name, np.array(value, copy=True) if isinstance(value, np.ndarray) else value)
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
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, SkGaussianMixture):
        raise TypeError(
            f"from_sklearn expects a fitted sklearn.mixture.GaussianMixture, got {type(model).__name__}."
        )
    check_is_fitted(model)
    names = cls().get_params().keys()
    kwargs = {k: v for k, v in model.get_params().items() if k in names}
    kwargs.update(params)
    est = cls(**kwargs)
    for name in _FITTED:
        value = getattr(model, name)
        setattr(
            est,
            name,
            np.array(value, dtype=np.float64, copy=True)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f"
            else value,
        )
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
