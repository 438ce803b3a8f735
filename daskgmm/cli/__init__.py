"""The ``daskgmm`` command: one module per subcommand (``fit``, ``demo``, ``segment``,
``segment-bench``, ``bench``), and the cluster options they share (:mod:`daskgmm.cli._cluster`).

Building the parser imports only these modules and the standard library; each subcommand's
``run`` imports the library (numpy, dask, scikit-learn, the estimator) when it runs.
"""

from __future__ import annotations

import argparse
import logging

from daskgmm.cli import bench, demo, fit, segment, segment_bench

logger = logging.getLogger("daskgmm")

#: the subcommands, in the order ``daskgmm --help`` lists them
SUBCOMMANDS = (fit, demo, segment, segment_bench, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daskgmm", description="Gaussian mixture models on Dask, out of core.")
    parser.add_argument("--log-level", default="WARNING", help="logging level of the 'daskgmm' logger")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(level)
    import distributed  # noqa: F401  (configures its loggers; quiet them below)

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return int(args.func(args) or 0)


__all__ = ["main", "build_parser"]
