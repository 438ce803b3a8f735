"""Logging of the ``daskgmm`` command: one format, one level, for daskgmm and for dask.

* daskgmm's logger at ``--log-level``; dask's ``distributed`` loggers at that level but never
  below WARNING (their INFO lines are chatter for a command-line user), all through one handler
  on standard error in one format.
* The local cluster's worker processes configure their logging from dask's configuration when
  they start, so the same level and format reach them through the environment
  (``DASK_LOGGING__DISTRIBUTED``, ``DASK_DISTRIBUTED__ADMIN__LOG_FORMAT``) unless the user set those.
* :func:`quiet` lowers distributed's voice around a local cluster's shutdown only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

FORMAT = "%(levelname)s %(name)s: %(message)s"
#: the level names ``--log-level`` takes (logging's own, without NOTSET)
LEVELS = tuple(
    n
    for n, v in sorted(logging.getLevelNamesMapping().items(), key=lambda kv: kv[1])
    if v and n not in ("WARN", "FATAL")
)


def log_level(text: str) -> str:
    """An argparse ``type``: a logging level name, any case."""
    name = text.upper()
    if name not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a logging level; choose from {', '.join(LEVELS)}")
    return name


def _distributed_loggers():
    return [logging.getLogger("distributed")] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith("distributed.")
    ]


@contextlib.contextmanager
def configure(level_name: str):
    """Configure logging for one run of the command (the environment is restored afterwards)."""
    level = logging.getLevelName(level_name)
    dask_level = max(level, logging.WARNING)
    env = {
        "DASK_LOGGING__DISTRIBUTED": logging.getLevelName(dask_level).lower(),
        "DASK_DISTRIBUTED__ADMIN__LOG_FORMAT": FORMAT,
    }
    added = [k for k in env if k not in os.environ]
    os.environ.update({k: env[k] for k in added})
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    logging.getLogger("daskgmm").setLevel(level)
    import distributed  # noqa: F401  (its import installs its handler: given our format and level below)

    formatter = logging.Formatter(FORMAT)
    for logger in _distributed_loggers():
        if logger.level and logger.level < dask_level or logger.name == "distributed":
            logger.setLevel(dask_level)
        for handler in logger.handlers:
            handler.setFormatter(formatter)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def silence(name: str = "distributed", level: int = logging.CRITICAL) -> None:
    """Every logger under ``name`` at ``level`` from now on: run on a local cluster's workers
    (``client.run``) just before they are closed, so that their shutdown says nothing."""
    for n in [name] + [n for n in list(logging.root.manager.loggerDict) if n.startswith(name + ".")]:
        logger = logging.getLogger(n)
        logger.setLevel(max(level, logger.level))


@contextlib.contextmanager
def quiet(name: str, level: int):
    """Every logger under ``name`` at ``level`` or above, for the duration (levels restored)."""
    loggers = [logging.getLogger(name)] + [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(name + ".")
    ]
    saved = [(lg, lg.level) for lg in loggers]
    if logging.getLogger("daskgmm").getEffectiveLevel() <= logging.DEBUG:
        yield  # a user who asked for DEBUG sees the shutdown too
        return
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lvl in saved:
            lg.setLevel(lvl)
