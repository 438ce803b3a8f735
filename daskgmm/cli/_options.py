"""Model options of the commands, from the one parameter table (:mod:`daskgmm._params`).

Each option's type, choices, default and help text come from the table, so
``daskgmm fit``, ``daskgmm segment`` and :class:`~daskgmm.GaussianMixture` agree.
"""

from __future__ import annotations

import argparse

from daskgmm._params import PARAMS

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


def add_alias(p, flag: str, dest: str, type=None) -> None:
    """An older spelling of an option: parsed into ``dest``, left out of ``--help``."""
    p.add_argument(flag, dest=dest, type=type, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_model_options(p: argparse.ArgumentParser, names, required=("n_components",), defaults=None) -> None:
    """Add ``--name`` options for the parameters ``names`` (the table's types, choices, defaults, help;
    ``defaults`` overrides the table's default where a command has its own, e.g. the demo's K)."""
    defaults = defaults or {}
    for name in names:
        spec = PARAMS[name]
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
            kw["type"] = _nonnegative_float
            kw["metavar"] = "X"
        elif spec.kind == "path":
            kw["metavar"] = "PATH"
        p.add_argument(*flags, **kw)


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
        "--chunks-per-task",
        type=chunks_per_task,
        default="auto",
        metavar="N",
        help="storage chunks each task of an EM iteration reads (dask config daskgmm.chunks_per_task; "
        "default: %(default)s, tasks of about 80 ms, at least 4 per thread)",
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


def missing_chunks_config(run):
    """Run a command with its ``--allow-missing-chunks`` and ``--chunks-per-task`` as dask's
    ``daskgmm.allow_missing_chunks`` and ``daskgmm.chunks_per_task``."""

    def wrapped(args) -> int:
        import dask

        with dask.config.set(
            {
                "daskgmm.allow_missing_chunks": bool(args.allow_missing_chunks),
                "daskgmm.chunks_per_task": getattr(args, "chunks_per_task", "auto"),
            }
        ):
            return run(args)

    wrapped.__name__, wrapped.__doc__ = run.__name__, run.__doc__
    return wrapped
