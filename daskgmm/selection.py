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

from daskgmm._engine import Candidate, DataPlan, Engine, log_likelihoods, warn_not_converged
from daskgmm._gaussian import n_parameters
from daskgmm._gaussian_mixture import GaussianMixture
from daskgmm._init import complete_rows, start_factory
from daskgmm._input import check_n_samples, check_sample_weight
from daskgmm._params import COVARIANCE_TYPES, CRITERIA
from daskgmm._placement import active_client, plan_data
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
    for name in ("n_components", "covariance_type", "weights_init", "means_init", "precisions_init",
                 "warm_start", "incremental"):
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
    X_, bytes_per_pass = plan_data(inp.data, template.persist, inp.kind == "numpy")
    if w is not None and active_client() is not None:
        w = w.persist()
    data = DataPlan(X_, w, template.nan_policy, bytes_per_pass, inp.n_samples, template.split_every)
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
        make = start_factory(est._init_spec(), X_, w, inp, (None, None, None), rs, est.nan_policy, cache, rows)
        ests.append(est)
        plan.append(Candidate(est._config(), [make] * est.n_init, reseed=est.on_collapse == "reseed",
                              label=f"K={k} {ct}"))
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
        est._set_fitted(best.params, best.converged, best.n_iter, best.lower_bound, best.lower_bounds, best.history)
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


# --------------------------------------------------------------------------
# benchmark rows for ``daskgmm bench`` (called from daskgmm/bench.py)
# --------------------------------------------------------------------------
def bench_beyond(n: int = 1_000_000, d: int = 4, k_true: int = 4, candidates: int = 10,
                 incr_n: int = 400_000, incr_d: int = 8, incr_k: int = 8, incr_chunks: int = 20,
                 incr_refresh: int = 4, seed: int = 0, max_iter: int = 400) -> list[dict]:
    """Two rows: a ``select_model`` sweep vs separate fits, and incremental vs full EM.

    *Sweep*: the data sits in a Zarr store on disk (a temporary directory, 10 chunks),
    so every pass reads and decompresses it as an out-of-core fit would.
    ``select_model(X, range(1, candidates + 1), init_params="k-means++")`` against one
    ``GaussianMixture(k, init_params="k-means++").fit(X)`` per candidate plus its
    ``bic(X)`` (same seeds, same models), and against a single fit at the true K:
    wall seconds and passes over the data (initialisation passes included).
    *Incremental*: full EM and ``incremental=incr_refresh`` on ``incr_chunks``
    persisted chunks from the same start; the exact mean log-likelihood of every
    iteration's parameters is computed afterwards (one pass for all, untimed), and
    the row gives the seconds each method needs to come within 1e-3 and 1e-4 of full
    EM's final value, and the value each reaches at 25% and 50% of full EM's time.
    """
    import tempfile
    import time as _time
    import warnings

    import dask.array as da
    from sklearn.exceptions import ConvergenceWarning

    from daskgmm._gaussian_mixture import GaussianMixture

    rows = []
    rng = np.random.RandomState(seed)

    def mixture(n_, d_, k_, spread):
        means = rng.uniform(-spread, spread, size=(k_, d_))
        labels = rng.randint(k_, size=n_)
        scale = rng.uniform(0.7, 1.3, size=(k_, 1))
        return means[labels] + rng.standard_normal((n_, d_)) * scale[labels]

    ks = list(range(1, candidates + 1))
    kw = dict(random_state=seed, init_params="k-means++")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        path = f"{tmp}/sweep.zarr"
        da.from_array(mixture(n, d, k_true, 4.0), chunks=(-(-n // 10), d)).to_zarr(path)
        t0, c0 = _time.perf_counter(), _time.process_time()
        res = select_model(path, ks, **kw)
        t_sweep, c_sweep = _time.perf_counter() - t0, _time.process_time() - c0
        t0, c0 = _time.perf_counter(), _time.process_time()
        sep = [GaussianMixture(k, **kw).fit(path) for k in ks]
        bics = [g.bic(path) for g in sep]
        t_sep, c_sep = _time.perf_counter() - t0, _time.process_time() - c0
        t0, c0 = _time.perf_counter(), _time.process_time()
        one = GaussianMixture(k_true, **kw).fit(path)
        one.bic(path)
        t_one, c_one = _time.perf_counter() - t0, _time.process_time() - c0
    same = all(np.allclose(a.means_, b.means_, rtol=1e-8, atol=1e-10) for a, b in zip(res.estimators, sep))
    same_bic = bool(np.allclose([r["bic"] for r in res.table], bics, rtol=1e-9))
    rows.append({
        "case": f"select_model K=1..{candidates} (full, Zarr on disk)",
        "n": n, "d": d,
        "sweep_s": t_sweep, "separate_s": t_sep, "one_fit_s": t_one,
        "sweep_over_one_fit": t_sweep / t_one, "separate_over_sweep": t_sep / t_sweep,
        "sweep_cpu_s": c_sweep, "separate_cpu_s": c_sep, "one_fit_cpu_s": c_one,
        # init: one pass per candidate (tied only) -- k-means++ reads a sample; EM passes; + final/bic pass
        "sweep_em_passes": max(r["n_iter"] for r in res.table) + 1,
        "separate_em_passes": sum(e.n_iter_ for e in sep) + len(sep),
        "one_fit_em_passes": one.n_iter_ + 1,
        "same_models_and_bic": bool(same and same_bic), "best_k": res.best_estimator.n_components,
    })

    # incremental vs full EM: exact log-likelihood against wall time
    X2 = da.from_array(mixture(incr_n, incr_d, incr_k, 2.0), chunks=(-(-incr_n // incr_chunks), incr_d)).persist()
    start = GaussianMixture(incr_k, random_state=seed, max_iter=1, tol=0.0, init_params="random_from_data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start.fit(X2)
    given = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    traces, iters = {}, {}
    for name, extra in (("full", {}), ("incremental", {"incremental": incr_refresh})):
        snaps = []
        t_start, c_start = _time.perf_counter(), _time.process_time()

        def keep(state, record, snaps=snaps, t_start=t_start, c_start=c_start):
            snaps.append((_time.perf_counter() - t_start, _time.process_time() - c_start, state.params))

        gm = GaussianMixture(incr_k, tol=1e-6, max_iter=max_iter, **given, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(X2, callback=keep)
        iters[name] = gm.n_iter_
        step = max(1, len(snaps) // 60)
        picked = snaps[::step]
        if picked[-1] is not snaps[-1]:
            picked.append(snaps[-1])
        ll = log_likelihoods(DataPlan(X2), [p for _, _, p in picked], ["full"] * len(picked))
        traces[name] = [(t, c, v / incr_n) for (t, c, _), v in zip(picked, ll)]
    target = traces["full"][-1][2]
    t_full = traces["full"][-1][0]

    def time_to(trace, gap, cpu=False):
        return next((c if cpu else t for t, c, v in trace if v >= target - gap), float("nan"))

    def value_at(trace, t_lim):
        vals = [v for t, _, v in trace if t <= t_lim]
        return vals[-1] if vals else float("nan")

    rows.append({
        "case": f"incremental EM ({incr_refresh} of {incr_chunks} chunks/iter) vs full EM",
        "n": incr_n, "d": incr_d, "k": incr_k,
        "full_iters": iters["full"], "incr_iters": iters["incremental"],
        "full_s_to_1e-3": time_to(traces["full"], 1e-3), "incr_s_to_1e-3": time_to(traces["incremental"], 1e-3),
        "full_s_to_1e-4": time_to(traces["full"], 1e-4), "incr_s_to_1e-4": time_to(traces["incremental"], 1e-4),
        # CPU seconds of this process (all threads): less disturbed by other load than wall time
        "full_cpu_s_to_1e-4": time_to(traces["full"], 1e-4, cpu=True),
        "incr_cpu_s_to_1e-4": time_to(traces["incremental"], 1e-4, cpu=True),
        "full_ll_at_25pct": value_at(traces["full"], 0.25 * t_full),
        "incr_ll_at_25pct": value_at(traces["incremental"], 0.25 * t_full),
        "full_ll_at_50pct": value_at(traces["full"], 0.5 * t_full),
        "incr_ll_at_50pct": value_at(traces["incremental"], 0.5 * t_full),
        "full_final_ll": target, "full_s": t_full,
        "incr_final_ll": traces["incremental"][-1][2], "incr_s": traces["incremental"][-1][0],
    })
    return rows


def format_beyond(rows: list[dict]) -> str:
    """The rows of :func:`bench_beyond` as ``key: value`` lines."""
    out = []
    for row in rows:
        out.append(f"### {row['case']}")
        for key, v in row.items():
            if key != "case":
                out.append(f"- {key}: {v:.4g}" if isinstance(v, float) else f"- {key}: {v}")
    return "\n".join(out)


__all__ = ["select_model", "ModelSelection", "bench_beyond", "format_beyond"]
