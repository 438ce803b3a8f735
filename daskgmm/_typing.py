"""The option strings of daskgmm, in one place: ``Literal`` aliases and tuples of their values.

Annotate with the alias, validate against the tuple (``COVARIANCE_TYPES = get_args(CovarianceType)``),
so a new value is added once.
"""

from __future__ import annotations

from typing import Literal, get_args

#: per-row (per-pixel) outputs of a fitted mixture: the one vocabulary of the estimator
#: (``predict`` / ``predict_proba`` / ``score_samples``), segmentation, the accessor and Zarr stores
Output = Literal["labels", "probabilities", "log_density", "confidence"]
CovarianceType = Literal["full", "tied", "diag", "spherical"]
InitParams = Literal["kmeans", "k-means++", "random", "random_from_data"]
NanPolicy = Literal["raise", "omit", "marginalize"]
OnCollapse = Literal["raise", "reseed"]
Persist = Literal["auto", True, False]
Criterion = Literal["bic", "aic"]

OUTPUTS: tuple[Output, ...] = get_args(Output)
COVARIANCE_TYPES: tuple[CovarianceType, ...] = get_args(CovarianceType)
INIT_PARAMS: tuple[InitParams, ...] = get_args(InitParams)
NAN_POLICIES: tuple[NanPolicy, ...] = get_args(NanPolicy)
ON_COLLAPSE: tuple[OnCollapse, ...] = get_args(OnCollapse)
PERSIST: tuple[Persist, ...] = get_args(Persist)
CRITERIA: tuple[Criterion, ...] = get_args(Criterion)

__all__ = [
    "COVARIANCE_TYPES",
    "CRITERIA",
    "Criterion",
    "INIT_PARAMS",
    "NAN_POLICIES",
    "ON_COLLAPSE",
    "OUTPUTS",
    "PERSIST",
    "CovarianceType",
    "InitParams",
    "NanPolicy",
    "OnCollapse",
    "Output",
    "Persist",
]
