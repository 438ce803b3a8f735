"""ONE table of the estimator's parameters: type, range or choices, default, help.

:class:`~daskgmm.GaussianMixture` validates with it, :func:`~daskgmm.select_model` and
:func:`~daskgmm.segment` pass their ``**params`` through it, and the command line
takes its option choices, defaults and help text from it, so a parameter means
the same thing, with the same error, everywhere.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any

from daskgmm._typing import (
    COVARIANCE_TYPES,
    CRITERIA,
    INIT_PARAMS,
    NAN_POLICIES,
    ON_COLLAPSE,
    PERSIST,
    CovarianceType,
    Criterion,
    InitParams,
    NanPolicy,
    OnCollapse,
    Persist,
)


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` is ``int``, ``float``, ``choice``, ``bool``, ``path`` or ``array``."""

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    choices: tuple = ()
    none: bool = False  # None is allowed
    strict: bool = False  # a float must be > low (not >= low)

    def check(self, value, owner: str = "GaussianMixture") -> None:
        """Raise scikit-learn's ``ValueError`` wording when ``value`` is not allowed."""
        if value is None and (self.none or self.kind == "array"):
            return
        import numpy as np  # here, so that the command's --help reads this table without numpy

        head = f"The '{self.name}' parameter of {owner} must be"
        if self.kind == "int":
            if isinstance(value, bool) and self.name == "verbose":
                return  # scikit-learn accepts verbose=True/False
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < self.low:
                extra = " or None" if self.none else ""
                raise ValueError(
                    f"{head} an int in the range [{self.low}, inf){extra}. Got {value!r} instead."
                )
        elif self.kind == "float" and self.strict:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > self.low:
                extra = "None or " if self.none else ""
                raise ValueError(
                    f"{head} {extra}a float in the range ({self.low}, inf). Got {value!r} instead."
                )
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= self.low:
                raise ValueError(f"{head} a float in the range [{self.low}, inf). Got {value!r} instead.")
        elif self.kind == "choice" and self.name == "persist":
            if not (value == "auto" or isinstance(value, (bool, np.bool_))):
                raise ValueError(f"{head} 'auto', True or False. Got {value!r} instead.")
        elif self.kind == "choice":
            if isinstance(value, (bool, np.bool_)) and not any(isinstance(c, bool) for c in self.choices):
                raise ValueError(f"{head} a str among {set(self.choices)}. Got {value!r} instead.")
            if not any(value is c or (isinstance(c, str) and value == c) for c in self.choices) and not (
                isinstance(value, np.bool_) and bool(value) in self.choices
            ):
                kinds = "a str among" if all(isinstance(c, str) for c in self.choices) else "one of"
                raise ValueError(f"{head} {kinds} {set(self.choices)}. Got {value!r} instead.")
        elif self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{head} a bool. Got {value!r}.")
        elif self.kind == "path":
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{head} a file path (str or os.PathLike) or None. Got {value!r} instead.")


def _p(*args, **kw) -> Param:
    return Param(*args, **kw)


#: every parameter of GaussianMixture, in signature order
PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        _p("n_components", "int", 1, "number of mixture components", low=1),
        _p("covariance_type", "choice", "full", "form of the covariance matrices", choices=COVARIANCE_TYPES),
        _p("tol", "float", 1e-3, "convergence threshold on the change of the lower bound", low=0.0),
        _p(
            "reg_covar",
            "float",
            1e-6,
            "non-negative regularisation added to the covariances' diagonal",
            low=0.0,
        ),
        _p("max_iter", "int", 100, "EM iterations per start", low=0),
        _p("n_init", "int", 1, "number of starts; the best lower bound is kept", low=1),
        _p("init_params", "choice", "kmeans", "initialisation method", choices=INIT_PARAMS),
        _p("weights_init", "array", None, "initial weights (n_components,)"),
        _p("means_init", "array", None, "initial means (n_components, n_features)"),
        _p("precisions_init", "array", None, "initial precisions (shape by covariance type)"),
        _p("random_state", "seed", None, "seed of the initialisation and of sample()"),
        _p("warm_start", "bool", False, "continue from the last fit's parameters"),
        _p("verbose", "int", 0, "1: start and iteration lines, 2: also times and changes", low=0),
        _p("verbose_interval", "int", 10, "iterations between verbose lines", low=1),
        _p(
            "chunk_size",
            "int",
            None,
            "rows per chunk (default: the input's chunks, or ~32 MiB)",
            low=1,
            none=True,
        ),
        _p("init_sample_size", "int", 100_000, "most rows k-means initialisation sees", low=1),
        _p("split_every", "int", 16, "fan-in of the tree reduction", low=2),
        _p(
            "persist",
            "choice",
            "auto",
            "hold the data in memory across iterations (auto/True/False)",
            choices=PERSIST,
        ),
        _p("checkpoint", "path", None, "file the EM state is saved to after every pass", none=True),
        _p("on_collapse", "choice", "raise", "what to do when a component dies", choices=ON_COLLAPSE),
        _p(
            "nan_policy",
            "choice",
            "raise",
            "rows with NaN: refuse, leave out, or marginalise",
            choices=NAN_POLICIES,
        ),
        _p(
            "incremental",
            "int",
            None,
            "incremental EM: chunks re-read per iteration (None: full EM)",
            low=1,
            none=True,
        ),
    )
}


#: the priors of BayesianGaussianMixture (its other parameters are in PARAMS), in signature order
BAYESIAN_PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        _p(
            "weight_concentration_prior_type",
            "choice",
            "dirichlet_process",
            "prior on the weights (Bayesian model)",
            choices=("dirichlet_process", "dirichlet_distribution"),
        ),
        _p(
            "weight_concentration_prior",
            "float",
            None,
            "concentration of the weights' prior (default 1/n_components)",
            low=0.0,
            none=True,
            strict=True,
        ),
        _p(
            "mean_precision_prior",
            "float",
            None,
            "precision of the means' prior (default 1)",
            low=0.0,
            none=True,
            strict=True,
        ),
        _p("mean_prior", "array", None, "mean of the means' prior (n_features,) (default: the data mean)"),
        _p(
            "degrees_of_freedom_prior",
            "float",
            None,
            "degrees of freedom of the Wishart prior (default n_features)",
            low=0.0,
            none=True,
            strict=True,
        ),
        _p(
            "covariance_prior",
            "array",
            None,
            "covariance of the Wishart prior (default: the data's covariance)",
        ),
    )
}


def check_params(params: dict, owner: str = "GaussianMixture") -> None:
    """Check every known parameter in ``params`` against the tables."""
    for name, value in params.items():
        spec = PARAMS.get(name) or BAYESIAN_PARAMS.get(name)
        if spec is not None:
            try:
                spec.check(value, owner)
            except ValueError:
                if name == "incremental":
                    raise ValueError(
                        "The 'incremental' parameter of GaussianMixture must be None (full EM) or an int >= 1 "
                        f"(chunks refreshed per iteration). Got {value!r} instead."
                    ) from None
                raise


__all__ = [
    "BAYESIAN_PARAMS",
    "COVARIANCE_TYPES",
    "CRITERIA",
    "INIT_PARAMS",
    "NAN_POLICIES",
    "ON_COLLAPSE",
    "PARAMS",
    "CovarianceType",
    "Criterion",
    "InitParams",
    "NanPolicy",
    "OnCollapse",
    "Param",
    "Persist",
    "check_params",
]
