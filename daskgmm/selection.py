"""Choose the number of components and the covariance type with one data pass per iteration.

:func:`select_model` fits every candidate ``(n_components, covariance_type)`` (and
each candidate's ``n_init`` starts) *together*: each chunk is read once per EM
iteration and the statistics of every live candidate are computed from it;
candidates that have converged drop out of later passes. One last pass computes
every candidate's log-likelihood at its fitted parameters, giving BIC and AIC.
Each candidate's numbers equal a separate ``GaussianMixture(n_components=k,
covariance_type=ct, random_state=random_state, **params).fit(X)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from daskgmm import _storage
from daskgmm._base import plan_fit_data
from daskgmm._engine import Candidate, Engine, log_likelihoods, warn_not_converged
from daskgmm._gaussian import n_parameters
from daskgmm._gaussian_mixture import GaussianMixture
from daskgmm._init import complete_rows, start_factory
from daskgmm._input import check_n_samples, check_sample_weight
from daskgmm._params import COVARIANCE_TYPES, CRITERIA
from daskgmm._progress import show_progress
from daskgmm.checkpoint import fit_settings, open_checkpoint

logger = logging.getLogger("daskgmm")


@dataclass
class ModelSelection:
    """Result of :func:`select_model`.

    Attributes
    ----------
    best_estimator : GaussianMixture
        The fitted candidate with the lowest criterion.
    best_index : int
        Its row in ``table``.
    criterion : str
        ``"bic"`` or ``"aic"``.
    table : list of dict
        One row per candidate: ``n_components``, ``covariance_type``, ``bic``, ``aic``,
        ``log_likelihood`` (total), ``n_parameters``, ``lower_bound``, ``n_iter``,
        ``converged``.
    estimators : list of GaussianMixture
        Every fitted candidate, in the order of ``table``.
    """

    best_estimator: Any
    best_index: int
    criterion: str
    table: list = field(default_factory=list)
    estimators: list = field(default_factory=list)

    def to_frame(self):
        """The table as a :class:`pandas.DataFrame` (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def __str__(self) -> str:
        head = f"{'K':>4} {'covariance':>10} {'bic':>14} {'aic':>14} {'n_iter':>6} converged"
        lines = [head]
        for i, row in enumerate(self.table):
            mark = "  <- best" if i == self.best_index else ""
            lines.append(
                f"{row['n_components']:>4} {row['covariance_type']:>10} {row['bic']:>14.3f} "
                f"{row['aic']:>14.3f} {row['n_iter']:>6} {row['converged']!s:>9}{mark}"
            )
        return "\n".join(lines)


@_storage.accepts_storage_options
def select_model(
    X,
    n_components: Iterable[int] = range(1, 11),
    covariance_types: Iterable[str] | str = ("full",),
    *,
    criterion: str = "bic",
    sample_weight=None,
    checkpoint=None,
    resume: bool = False,
    callback=None,
    storage_options: dict | None = None,
    **params,
) -> ModelSelection:
    """Fit all candidate mixtures together and pick the best by BIC or AIC.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        numpy, dask, Zarr (array or path) or xarray, as for ``GaussianMixture.fit``.
    n_components : iterable of int, default=range(1, 11)
        Candidate numbers of components.
    covariance_types : iterable of {'full', 'tied', 'diag', 'spherical'}, default=('full',)
        Candidate covariance types (a single string is accepted).
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better. Without ``sample_weight`` the values equal
        ``GaussianMixture.bic(X)`` / ``.aic(X)`` of each candidate; with weights the
        log-likelihood is weighted and ``n`` is the total weight.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative weights per row.
    checkpoint : str or os.PathLike, default=None
        File where the state of every candidate is saved after every pass (see
        :mod:`daskgmm.checkpoint`); with ``resume=True`` the sweep continues from it.
    resume : bool, default=False
        Continue from ``checkpoint`` (a new sweep when the file does not exist yet).
    callback : callable, default=None
        ``callback(state, record)`` after every iteration of every candidate's start;
        ``state.candidate`` is the candidate's row in the table.
    storage_options : dict, optional
        fsspec options for ``X`` or ``checkpoint`` given as URLs (``s3://...``), over what the
        environment and fsspec's configuration provide.
    **params
        Any other :class:`~daskgmm.GaussianMixture` parameter (``tol``, ``max_iter``,
        ``n_init``, ``random_state``, ``init_params``, ``chunk_size``, ``nan_policy``,
        ``verbose``, ...). An int ``random_state`` seeds each candidate afresh, as
        separate fits would.

    Returns
    -------
    ModelSelection
        ``best_estimator``, ``table`` of BIC/AIC per candidate, all ``estimators``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}.")
    if isinstance(covariance_types, str):
        covariance_types = (covariance_types,)
    ks = list(n_components) if not isinstance(n_components, (int, np.integer)) else [int(n_components)]
    cts = list(covariance_types)
    if not ks or not cts:
        raise ValueError("select_model needs at least one n_components and one covariance type.")
    bad = [c for c in cts if c not in COVARIANCE_TYPES]
    if bad:
        raise ValueError(f"Unknown covariance type(s) {bad}: choose among {list(COVARIANCE_TYPES)}.")
    for name in (
        "n_components",
        "covariance_type",
        "weights_init",
        "means_init",
        "precisions_init",
        "warm_start",
        "incremental",
    ):
        if params.get(name) is not None and not (name == "warm_start" and params[name] is False):
            raise ValueError(
                f"select_model does not take {name!r}: the candidates are set by n_components and "
                "covariance_types, and each starts from init_params."
            )
    if "checkpoint" in params:
        raise ValueError("pass checkpoint= to select_model itself (its own keyword), not among the params.")
    candidates = [(k, ct) for ct in cts for k in ks]
    template = GaussianMixture(n_components=max(ks), **params)
    template._check_params()
    inp = template._validate(X, reset=True)
    check_n_samples(inp.n_samples, max(ks))
    w = check_sample_weight(sample_weight, inp)
    settings = dict(fit_settings(template, w), candidates=[[k, ct] for k, ct in candidates])
    ckpt = open_checkpoint(checkpoint, settings, inp, resume)
    # hold the data in (cluster) memory or stream it every pass, as GaussianMixture.fit does
    X_, w, data = plan_fit_data(
        inp, w, persist=template.persist, nan_policy=template.nan_policy, split_every=template.split_every
    )
    seed = params.get("random_state")
    shared_rs = None if isinstance(seed, (int, np.integer)) or seed is None else check_random_state(seed)
    # with an int seed every candidate draws the same k-means sample: gather it once
    cache = {} if shared_rs is None and seed is not None else None
    ests, plan = [], []
    rows = complete_rows(X_, w, template.nan_policy, max(ks))  # once for all candidates
    for k, ct in candidates:
        est = GaussianMixture(n_components=k, covariance_type=ct, **params)
        est.n_features_in_ = inp.n_features
        if hasattr(template, "feature_names_in_"):
            est.feature_names_in_ = template.feature_names_in_
        rs = shared_rs if shared_rs is not None else check_random_state(seed)
        make = start_factory(
            est._init_spec(), X_, w, inp, (None, None, None), rs, est.nan_policy, cache, rows, data.leaf_rows
        )
        ests.append(est)
        plan.append(
            Candidate(
                est._config(), [make] * est.n_init, reseed=est.on_collapse == "reseed", label=f"K={k} {ct}"
            )
        )
    engine = Engine(
        data,
        plan,
        checkpoint=ckpt,
        resume=resume,
        random_state=shared_rs,
        verbose=template.verbose,
        verbose_interval=template.verbose_interval,
        progress=show_progress(template.verbose),
        callback=callback,
        desc=f"select_model, {len(candidates)} candidates",
    )
    results = engine.run()
    for est, (best, _) in zip(ests, results):
        est._set_fitted(best, dtype=inp.dtype)
    # one last pass: every candidate's log-likelihood at its fitted parameters
    logliks = log_likelihoods(data, [est._fitted_params() for est in ests], [ct for _, ct in candidates])
    n = inp.n_samples if w is None else float(w.sum().compute())
    if template.nan_policy == "omit":
        n0, w0 = rows[2], rows[1]
        n = n0 if w is None else float(w0.sum().compute())
    table = []
    for est, (k, ct), ll in zip(ests, candidates, logliks):
        npar = n_parameters(ct, k, inp.n_features)
        table.append(
            {
                "n_components": k,
                "covariance_type": ct,
                "bic": -2.0 * ll + npar * np.log(n),
                "aic": -2.0 * ll + 2.0 * npar,
                "log_likelihood": ll,
                "n_parameters": npar,
                "lower_bound": est.lower_bound_,
                "n_iter": est.n_iter_,
                "converged": est.converged_,
            }
        )
    values = [row[criterion] for row in table]
    best = int(np.argmin(values))
    if not ests[best].converged_ and ests[best].max_iter > 0:
        warn_not_converged()
    logger.info("select_model: %d candidates, best %s", len(table), candidates[best])
    return ModelSelection(ests[best], best, criterion, table, ests)


__all__ = ["select_model", "ModelSelection"]
