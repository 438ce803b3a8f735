"""Model options of the commands, from the one parameter table (:mod:`daskgmm._params`).

Each option's type, choices, default and help text come from the table, so
``daskgmm fit``, ``daskgmm segment`` and :class:`~daskgmm.GaussianMixture` agree.
"""

from __future__ import annotations

import argparse

from daskgmm._params import BAYESIAN_PARAMS, PARAMS

#: option name per parameter where it is not ``--`` + the name with dashes
FLAGS = {"n_components": ("--n-components", "-k"), "init_params": ("--init",), "random_state": ("--seed",)}
_BOOL_WORDS = {"auto": "auto", "true": True, "false": False}


class UsageError(Exception):
    """Raised by a subcommand for a mistake in its options that argparse cannot see alone
    (e.g. two options that contradict each other): reported like argparse's, exit 2."""


def int_at_least(low: float):
    """An argparse ``type``: an integer ``>= low`` (else a one-line usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {int(low)}, got {value}")
        return value

    return parse


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _nonnegative_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_alias(p, flag: str, dest: str, type=None) -> None:
    """An older spelling of an option: parsed into ``dest``, left out of ``--help``."""
    p.add_argument(flag, dest=dest, type=type, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_model_options(p: argparse.ArgumentParser, names, required=("n_components",), defaults=None) -> None:
    """Add ``--name`` options for the parameters ``names`` (the table's types, choices, defaults, help;
    ``defaults`` overrides the table's default where a command has its own, e.g. the demo's K)."""
    defaults = defaults or {}
    for name in names:
        spec = PARAMS[name] if name in PARAMS else BAYESIAN_PARAMS[name]
        flags = FLAGS.get(name, ("--" + name.replace("_", "-"),))
        kw: dict = {"dest": name, "help": spec.help}
        if name in required:
            kw["required"] = True
        else:
            kw["default"] = defaults.get(name, spec.default)
            if kw["default"] is not None:
                kw["help"] += " (default: %(default)s)"
        if name == "persist":
            kw.update(choices=list(_BOOL_WORDS), default="auto")
        elif spec.kind == "choice":
            kw["choices"] = list(spec.choices)
        elif spec.kind == "int" or name == "random_state":
            kw["type"] = int_at_least(spec.low if spec.low is not None else 0)
            kw["metavar"] = "SEED" if name == "random_state" else "N"
        elif spec.kind == "float":
            kw["type"] = _positive_float if spec.strict else _nonnegative_float
            kw["metavar"] = "X"
        elif spec.kind == "path":
            kw["metavar"] = "PATH"
        p.add_argument(*flags, **kw)


#: the priors of ``--model bayesian`` the commands take as options (the arrays ``mean_prior`` and
#: ``covariance_prior`` are Python-only)
BAYESIAN_OPTIONS = (
    "weight_concentration_prior_type",
    "weight_concentration_prior",
    "mean_precision_prior",
    "degrees_of_freedom_prior",
)


def add_model_choice(p, group) -> None:
    """``--model {gaussian,bayesian}`` and the Bayesian priors (in ``group``)."""
    p.add_argument(
        "--model",
        choices=("gaussian", "bayesian"),
        default="gaussian",
        help="gaussian: GaussianMixture (EM, K components); bayesian: BayesianGaussianMixture "
        "(variational, at most K components: those the data does not need get weights near 0; "
        "segment keeps a Dirichlet-process fit's components in their fitted order) "
        "(default: %(default)s)",
    )
    add_model_options(group, BAYESIAN_OPTIONS)


def estimator_class(args, names):
    """The estimator of ``--model`` and the option names it takes (of ``names``); refuses EM-only
    options given with ``--model bayesian``."""
    if getattr(args, "model", "gaussian") != "bayesian":
        if any(getattr(args, n, None) is not None for n in BAYESIAN_OPTIONS if n != BAYESIAN_OPTIONS[0]) or (
            getattr(args, BAYESIAN_OPTIONS[0], "dirichlet_process") != "dirichlet_process"
        ):
            raise UsageError("the prior options (--weight-concentration-prior...) need --model bayesian")
        from daskgmm import GaussianMixture

        return GaussianMixture, tuple(names)
    em_only = {"on_collapse": "raise", "incremental": None}
    for name, default in em_only.items():
        if getattr(args, name, default) != default:
            raise UsageError(f"--{name.replace('_', '-')} is for --model gaussian (EM) only")
    if getattr(args, "nan_policy", "raise") == "marginalize":
        raise UsageError("--model bayesian takes --nan-policy raise or omit, not marginalize")
    from daskgmm import BayesianGaussianMixture

    return BayesianGaussianMixture, tuple(n for n in names if n not in em_only) + BAYESIAN_OPTIONS


def model_kwargs(args, names) -> dict:
    """The estimator parameters given by the options ``names``."""
    out = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if "persist" in out:
        out["persist"] = _BOOL_WORDS[out["persist"]]
    return out


def add_data_options(p: argparse.ArgumentParser, out) -> None:
    """``--no-progress`` (in the group ``out``), ``--allow-missing-chunks`` and ``--chunks-per-task``:
    the options of the commands that read a Zarr input and fit on it (``fit``, ``segment``)."""
    out.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are drawn only when standard error is a terminal)",
    )
    p.add_argument(
        "--allow-missing-chunks",
        action="store_true",
        help="accept a Zarr input whose store lacks chunks, reading them as its fill value "
        "(default: refused, as data that were never written)",
    )
    p.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        type=_storage_option,
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option for URL paths (s3://...), repeatable; VALUE is read as JSON when it "
        'is JSON (e.g. anon=true, client_kwargs=\'{"endpoint_url": "http://host:9000"}\'), else as '
        "text. Credentials come from the environment (AWS_*, fsspec config) as fsspec finds them (default: none)",
    )
    p.add_argument(
        "--chunks-per-task",
        type=chunks_per_task,
        default="auto",
        metavar="N",
        help="storage chunks each task of an EM iteration reads (dask config daskgmm.chunks_per_task; "
        "default: %(default)s, about 16 MiB of rows per task and at least 16 tasks)",
    )


def chunks_per_task(text: str):
    """``--chunks-per-task``: ``auto`` or an int >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or an int >= 1, got {text!r}")
    return value


def _storage_option(text: str) -> tuple:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. anon=true")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def missing_chunks_config(run):
    """Run a command with its ``--allow-missing-chunks`` and ``--chunks-per-task`` as dask's
    ``daskgmm.allow_missing_chunks`` and ``daskgmm.chunks_per_task``, and its ``--storage-option``s
    in use for every URL it reads or writes."""

    def wrapped(args) -> int:
        import dask

        from daskgmm._storage import using

        options = dict(getattr(args, "storage_options", None) or [])
        with (
            dask.config.set(
                {
                    "daskgmm.allow_missing_chunks": bool(args.allow_missing_chunks),
                    "daskgmm.chunks_per_task": getattr(args, "chunks_per_task", "auto"),
                }
            ),
            using(options),
        ):
            return run(args)

    wrapped.__name__, wrapped.__doc__ = run.__name__, run.__doc__
    return wrapped
