"""The ``daskgmm`` command: one module per subcommand (``fit``, ``demo``, ``segment``,
``segment-bench``, ``bench``, ``plan``), the cluster options they share (:mod:`daskgmm.cli._cluster`),
the model options from the parameter table (:mod:`daskgmm.cli._options`) and the logging
set-up (:mod:`daskgmm.cli._logging`).

Building the parser imports only these modules, the parameter table and the standard
library, so ``daskgmm --help`` is quick; each subcommand's ``run`` imports the library (numpy,
dask, scikit-learn, the estimator) when it runs.

Exit status: 0 on success; 2 for a usage error (``daskgmm fit: error: …``, one line, from
argparse); 1 for a runtime error (``daskgmm fit: error: …``, one line, no traceback).
"""

from __future__ import annotations

import argparse

from daskgmm.cli import bench, demo, fit, plan, segment, segment_bench
from daskgmm.cli._logging import configure, log_level
from daskgmm.cli._options import UsageError

#: the subcommands, in the order ``daskgmm --help`` lists them
SUBCOMMANDS = (fit, demo, segment, segment_bench, bench, plan)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a one-line usage error: ``daskgmm fit: error: ...``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Version(argparse.Action):
    """``--version``: the installed daskgmm's version (read only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print(f"daskgmm {version('daskgmm')}")
        parser.exit()


def _add_log_level(p: argparse.ArgumentParser, top: bool) -> None:
    # before or after the subcommand: the subcommand's copy keeps the top-level value unless given
    p.add_argument(
        "--log-level",
        type=log_level,
        default="WARNING" if top else argparse.SUPPRESS,
        metavar="LEVEL",
        help="level of daskgmm's log lines (DEBUG, INFO, WARNING, ERROR, CRITICAL; dask's own never go "
        "below WARNING) (default: WARNING)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="daskgmm",
        description="Gaussian mixture models on Dask, out of core.",
        epilog="'daskgmm COMMAND --help' describes a command. Start with 'daskgmm demo'.",
    )
    parser.add_argument("--version", action=_Version, help="print daskgmm's version and exit")
    _add_log_level(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for p in sub.choices.values():
        _add_log_level(p, top=False)
        p.set_defaults(_parser=p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with configure(args.log_level):
        try:
            return int(args.func(args) or 0)
        except UsageError as e:
            args._parser.error(str(e))
        except SystemExit as e:
            # one voice for runtime errors: 'daskgmm fit: error: ...' (exit 1), as argparse says
            # 'daskgmm fit: error: ...' for usage errors (exit 2)
            if isinstance(e.code, str) and e.code.startswith("error: "):
                raise SystemExit(f"daskgmm {args.command}: {e.code}") from e.__cause__
            raise
    return 0  # pragma: no cover - error() exits


__all__ = ["UsageError", "build_parser", "main"]
