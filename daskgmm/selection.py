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

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from daskgmm._em import EMConfig, complete_params, warn_not_converged
from daskgmm._gaussian import COVARIANCE_TYPES, n_parameters
from daskgmm._multi import data_plan, final_logliks, init_input, make_reseed_hook, run_restarts
from daskgmm._placement import active_client, plan_data

logger = logging.getLogger("daskgmm")

CRITERIA = ("bic", "aic")


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


def select_model(
    X,
    n_components: Iterable[int] = range(1, 11),
    covariance_types: Iterable[str] | str = ("full",),
    *,
    criterion: str = "bic",
    sample_weight=None,
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
    **params
        Any other :class:`~daskgmm.GaussianMixture` parameter (``tol``, ``max_iter``,
        ``n_init``, ``random_state``, ``init_params``, ``chunk_size``, ``nan_policy``,
        ...). An int ``random_state`` seeds each candidate afresh, as separate fits would.

    Returns
    -------
    ModelSelection
        ``best_estimator``, ``table`` of BIC/AIC per candidate, all ``estimators``.
    """
    from daskgmm._gaussian_mixture import GaussianMixture

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
    for name in ("n_components", "covariance_type", "weights_init", "means_init", "precisions_init",
                 "warm_start", "checkpoint", "incremental"):
        if params.get(name) is not None and not (name == "warm_start" and params[name] is False):
            raise ValueError(
                f"select_model does not take {name!r}: the candidates are set by n_components and "
                "covariance_types, and each starts from init_params."
            )
    candidates = [(k, ct) for ct in cts for k in ks]
    template = GaussianMixture(n_components=max(ks), **params)
    template._check_params()
    inp = template._validate(X, reset=True)
    if inp.n_samples < max(ks):
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {max(ks)}, n_samples = {inp.n_samples}"
        )
    w = template._check_sample_weight(sample_weight, inp)
    # hold the data in (cluster) memory or stream it every pass, as GaussianMixture.fit does
    data, _ = plan_data(inp.data, template.persist, inp.kind == "numpy")
    inp = dataclasses.replace(inp, data=data)
    if w is not None and active_client() is not None:
        w = w.persist()
    nan_policy = template.nan_policy
    kernel, prepare = data_plan(nan_policy)
    inp0, w0 = init_input(inp, w, nan_policy, max(ks))
    seed = params.get("random_state")
    shared_rs = None if isinstance(seed, (int, np.integer)) or seed is None else check_random_state(seed)

    # with an int seed every candidate draws the same k-means sample: gather it once
    cache = {} if shared_rs is None and seed is not None else None
    ests, groups, hooks = [], [], []
    for k, ct in candidates:
        est = GaussianMixture(n_components=k, covariance_type=ct, **params)
        est._check_params()
        est.n_features_in_ = inp.n_features
        if hasattr(template, "feature_names_in_"):
            est.feature_names_in_ = template.feature_names_in_
        rs = shared_rs if shared_rs is not None else check_random_state(seed)
        inits = [
            (lambda reseed, e=est, r=rs: e._initialize(inp0, w0, r, None, None, None, reseed=reseed,
                                                       sample_cache=cache))
            for _ in range(est.n_init)
        ]
        cfg = EMConfig(covariance_type=ct, tol=est.tol, reg_covar=est.reg_covar, max_iter=est.max_iter,
                       split_every=est.split_every)
        ests.append(est)
        groups.append((inits, cfg))
        hooks.append((lambda c=ct: make_reseed_hook(c, inp.n_samples)) if est.on_collapse == "reseed" else None)

    X_ = inp.data
    blocks = X_.to_delayed(optimize_graph=False).ravel()
    wblocks = w.to_delayed(optimize_graph=False).ravel() if w is not None else None
    token = X_.name + ("" if w is None else w.name) + nan_policy
    split_every = template.split_every
    results = run_restarts(groups, blocks, wblocks, X_.dtype, token, split_every, hooks, kernel, prepare)
    for est, (best, _), (_, ct) in zip(ests, results, candidates):
        est._set_parameters(complete_params(best.params, ct))
        est.converged_ = bool(best.converged)
        est.n_iter_ = best.n_iter
        est.lower_bound_ = best.lower_bound
        est.lower_bounds_ = list(best.lower_bounds)
        est.history_ = list(best.history)
    logliks = final_logliks([r[0].params for r in results], [ct for _, ct in candidates], blocks, wblocks,
                            X_.dtype, token + "-final", split_every, kernel, prepare)
    n = inp.n_samples if w is None else float(w.sum().compute())
    if nan_policy == "omit":
        n = inp0.n_samples if w is None else float(w0.sum().compute())
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
