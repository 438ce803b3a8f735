"""Where a subcommand computes: the cluster options every computing subcommand shares
(``--scheduler``, ``--scheduler-file``, dask's ``scheduler-address``, a local cluster's
``--nworkers/--nthreads/--memory-limit``, ``--tls-*``), and :func:`connect`.

The names follow ``dask worker`` (``--nworkers``, ``--nthreads``, ``--memory-limit``); the
older ``--workers`` and ``--threads-per-worker`` still work (hidden aliases). Values are
checked when the command line is parsed, so a mistake is a one-line usage error (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os

from daskgmm.cli._logging import quiet, silence
from daskgmm.cli._options import add_alias, int_at_least

#: how long to try to reach a scheduler before giving up (dask's own default is 30s)
CONNECT_TIMEOUT = "10s"
#: how long to wait for a worker able to run tasks before giving up
WORKER_TIMEOUT = "60s"
#: a worker memory limit below this cannot hold an idle worker (python, numpy, distributed)
MIN_WORKER_MEMORY = 256 * 2**20


def memory_limit(text: str) -> str:
    """``--memory-limit``: ``auto``, a size dask understands (``4GiB``, ``500MB``), a fraction of
    this machine's memory (``0.5``) or ``0`` (no limit); returned as given."""
    if text == "auto":
        return text
    from dask.utils import parse_bytes

    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number == 0:
        return text
    if number > 0:  # dask: a fraction of this machine's memory up to 1, else bytes
        import psutil

        size = number * psutil.virtual_memory().total if number <= 1 else number
    else:
        try:
            size = parse_bytes(text)
        except (ValueError, TypeError):
            size = 0
    if 0 < size < MIN_WORKER_MEMORY:
        raise argparse.ArgumentTypeError(
            f"{text!r} is below what an idle dask worker uses (about {MIN_WORKER_MEMORY // 2**20} MiB): "
            "its worker would be paused or restarted forever and never run a task; give at least 256MiB"
        )
    if size > 0:
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a memory size: use e.g. 4GiB or 500MB, a fraction of this machine's memory "
        "such as 0.5, 0 for no limit, or auto"
    )


def timeout(text: str) -> float:
    """``--connect-timeout``: a duration dask understands (``10s``, ``2 minutes``, ``30``), in seconds."""
    from dask.utils import parse_timedelta

    try:
        seconds = parse_timedelta(text, default="seconds")
    except (ValueError, KeyError, TypeError):
        seconds = None
    if seconds is None or not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration, e.g. 10s, 2m or 30")
    return float(seconds)


def add_local_cluster_arguments(g, nworkers_default=None, memory_default="auto", threads=False) -> None:
    """``--nworkers``, ``--nthreads`` when ``threads`` (and their old names) and ``--memory-limit``."""
    workers_help = (
        f"local cluster: number of worker processes (default: {nworkers_default})"
        if nworkers_default
        else "local cluster: number of worker processes (default: 1 per 2 cores, at least 1)"
    )
    g.add_argument(
        "--nworkers",
        dest="workers",
        type=int_at_least(1),
        default=nworkers_default,
        metavar="N",
        help=workers_help + "; --workers is the older name",
    )
    add_alias(g, "--workers", "workers", int_at_least(1))
    if threads:
        g.add_argument(
            "--nthreads",
            dest="threads_per_worker",
            type=int_at_least(1),
            default=None,
            metavar="N",
            help="local cluster: threads per worker (default: the cores shared between the workers); "
            "--threads-per-worker is the older name",
        )
        add_alias(g, "--threads-per-worker", "threads_per_worker", int_at_least(1))
    g.add_argument(
        "--memory-limit",
        type=memory_limit,
        default=memory_default,
        metavar="SIZE",
        help="local cluster: memory limit per worker: a size (4GiB, 500MB), a fraction of this "
        "machine's memory (0.5), 0 for none, or auto (its memory shared between the workers) "
        "(default: %(default)s)",
    )


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "cluster",
        "where to compute: --scheduler or --scheduler-file; else dask's 'scheduler-address' configuration "
        "(e.g. DASK_SCHEDULER_ADDRESS) when set; else a local cluster started in-process",
    )
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler, e.g. tcp://host:8786 or tls://host:8786 "
        "(default: dask's scheduler-address configuration, if set)",
    )
    where.add_argument(
        "--scheduler-file",
        metavar="PATH",
        help="scheduler file written by 'dask scheduler --scheduler-file' (HPC convention)",
    )
    g.add_argument(
        "--connect-timeout",
        type=timeout,
        default=CONNECT_TIMEOUT,
        metavar="DURATION",
        help="give up reaching the scheduler after this long (default: %(default)s)",
    )
    g.add_argument(
        "--worker-timeout",
        type=timeout,
        default=WORKER_TIMEOUT,
        metavar="DURATION",
        help="fail if no worker able to run tasks (connected and not paused for memory) is there "
        "after this long (default: %(default)s)",
    )
    add_local_cluster_arguments(g, threads=True)
    g.add_argument(
        "--dashboard-address",
        default=":0",
        metavar="ADDRESS",
        help="local cluster: dashboard address (default: %(default)s, a free port)",
    )
    g.add_argument(
        "--tls-ca-file",
        metavar="PATH",
        help="CA certificate for a tls:// scheduler (default: dask's distributed.comm.tls configuration)",
    )
    g.add_argument("--tls-cert", metavar="PATH", help="client certificate for a tls:// scheduler")
    g.add_argument("--tls-key", metavar="PATH", help="client private key for a tls:// scheduler")


_TLS_OPTIONS = ("tls_ca_file", "tls_cert", "tls_key")


def configured_address() -> str | None:
    """dask's ``scheduler-address`` configuration (``DASK_SCHEDULER_ADDRESS``), as ``Client()`` reads it."""
    import dask

    return dask.config.get("scheduler-address", None) or None


def _scheduler_address(args) -> str | None:
    """The address given by ``--scheduler``, recorded in ``--scheduler-file``, or configured in dask."""
    if args.scheduler:
        return args.scheduler
    if args.scheduler_file:
        try:
            with open(args.scheduler_file) as f:
                return json.load(f).get("address")
        except (OSError, ValueError, AttributeError):
            return None  # the Client reports an unreadable scheduler file
    return configured_address()


def _security(args):
    """``distributed.Security`` from ``--tls-*``; None to use the dask configuration.

    Refuses, with what to do, the combinations that would otherwise fail deep inside
    distributed: part of the certificates, certificates for a non-``tls://`` address or for a
    local cluster, and a ``tls://`` address with no certificates anywhere.
    """
    address = _scheduler_address(args)
    if not any(getattr(args, n, None) for n in _TLS_OPTIONS):
        if address and address.startswith("tls://"):
            import dask
            from distributed.security import Security

            configured = Security()  # distributed.comm.tls.* from the dask configuration
            if not dask.config.get("distributed.client.security-loader", None) and not (
                configured.tls_ca_file and configured.tls_client_cert
            ):
                raise SystemExit(
                    f"error: the scheduler at {address} requires TLS, and no certificates were given. "
                    "Pass --tls-ca-file (the cluster's CA certificate), --tls-cert and --tls-key (a client "
                    "certificate and key signed by that CA), or set distributed.comm.tls.ca-file and "
                    "distributed.comm.tls.client.cert/key in the dask configuration (see deploy/dask/dask.yaml)."
                )
        return None
    missing = [n for n in _TLS_OPTIONS if not getattr(args, n)]
    if missing:
        raise SystemExit(
            "error: TLS needs all of --tls-ca-file, --tls-cert and --tls-key; missing "
            + ", ".join("--" + m.replace("_", "-") for m in missing)
        )
    for n in _TLS_OPTIONS:
        if not os.path.exists(getattr(args, n)):
            raise SystemExit(f"error: --{n.replace('_', '-')} {getattr(args, n)!r} does not exist")
    if address is None:
        raise SystemExit(
            "error: --tls-ca-file/--tls-cert/--tls-key are for connecting to a running tls:// scheduler; "
            "add --scheduler tls://HOST:PORT or --scheduler-file PATH (a local cluster needs no certificates)"
        )
    if not address.startswith("tls://"):
        raise SystemExit(
            f"error: TLS certificates were given but the scheduler address {address!r} is not tls://. "
            "A scheduler started with 'dask scheduler --protocol tls' listens on tls://HOST:PORT: use that address."
        )
    from distributed.security import Security

    return Security(
        tls_ca_file=args.tls_ca_file,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
        require_encryption=True,
    )


def _connect_remote(args, security):
    """A ``Client`` of the scheduler named by the options or dask's configuration."""
    from distributed import Client

    if args.scheduler_file and not os.path.exists(args.scheduler_file):
        raise SystemExit(f"error: scheduler file {args.scheduler_file!r} does not exist")
    address = _scheduler_address(args)
    if args.scheduler_file and not address:
        raise SystemExit(
            f"error: scheduler file {args.scheduler_file!r} holds no scheduler address (it is empty, or not the "
            "JSON that 'dask scheduler --scheduler-file' writes); if the scheduler is still starting, wait until "
            "the file is complete"
        )
    where = args.scheduler or args.scheduler_file or f"{address} (dask's scheduler-address configuration)"
    kwargs = {"security": security} if security is not None else {}
    seconds = getattr(args, "connect_timeout", None) or timeout(CONNECT_TIMEOUT)
    try:
        if args.scheduler_file:
            return Client(scheduler_file=args.scheduler_file, timeout=seconds, **kwargs)
        return Client(address, timeout=seconds, **kwargs)
    except (OSError, RuntimeError) as e:  # refused, timed out, or TLS required by the configuration
        raise SystemExit(
            f"error: could not connect to the scheduler at {where} within {seconds:g}s: {e}. "
            "Check the address, that the scheduler is running, and (for tls://) the certificates; "
            "--connect-timeout waits longer."
        ) from e


def wait_for_a_worker(client, args) -> None:
    """Return once a worker can run tasks (connected, status running, not paused for memory);
    fail after ``--worker-timeout`` with what the workers are doing, instead of hanging."""
    import time

    seconds = getattr(args, "worker_timeout", None) or timeout(WORKER_TIMEOUT)
    deadline = time.monotonic() + seconds
    while True:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if any(w.get("status", "running") == "running" for w in workers.values()):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not workers:
        why = "the scheduler has no workers"
    else:
        why = ", ".join(
            f"{addr} is {w.get('status')} (memory {w.get('metrics', {}).get('memory', 0) / 2**20:.0f} MiB "
            f"of a {w.get('memory_limit', 0) / 2**20:.0f} MiB limit)"
            for addr, w in workers.items()
        )
    raise SystemExit(
        f"error: no worker able to run tasks after {seconds:g}s: {why}. Start workers for this "
        "scheduler (dask worker ADDRESS), give them more memory (--memory-limit), or wait longer "
        "with --worker-timeout."
    )


def _debug() -> bool:
    return logging.getLogger("daskgmm").getEffectiveLevel() <= logging.DEBUG


@contextlib.contextmanager
def _quiet_shutdown():
    """distributed's loggers at CRITICAL while a local cluster closes: workers that take a moment
    to stop, heartbeats that cross the close, and cancelled tasks are not news after a success."""
    with quiet("distributed", logging.CRITICAL):
        yield


@contextlib.contextmanager
def connect(args):
    """Yield a ``distributed.Client``: to ``--scheduler``/``--scheduler-file``, to dask's
    configured ``scheduler-address``, or to a local cluster, closed quietly afterwards."""
    if args.scheduler and args.scheduler_file:
        raise SystemExit("error: give --scheduler or --scheduler-file, not both")
    security = _security(args)
    if args.scheduler or args.scheduler_file or configured_address():
        with _connect_remote(args, security) as client:
            wait_for_a_worker(client, args)
            yield client
        return
    import dask
    from distributed import Client, LocalCluster

    from daskgmm._placement import housekeeping_config

    ncores = os.cpu_count() or 1
    n_workers = args.workers or max(1, ncores // 2)
    threads = args.threads_per_worker or max(1, ncores // n_workers)
    with dask.config.set(housekeeping_config()):  # its processes share this machine's cores
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            memory_limit=args.memory_limit,
            processes=True,
            dashboard_address=args.dashboard_address,
            silence_logs=logging.WARNING,
        )
    try:
        client = Client(cluster)
        try:
            wait_for_a_worker(client, args)
            yield client
        finally:
            with _quiet_shutdown():
                # close the workers before the scheduler, so that none of them logs a failed
                # heartbeat to a scheduler that is already gone; then the client, then the cluster
                with contextlib.suppress(Exception):
                    if not _debug():
                        client.run(silence)  # the workers' own shutdown lines
                    client.retire_workers(
                        list(client.scheduler_info(n_workers=-1)["workers"]), close_workers=True
                    )
                client.close()
    finally:
        with _quiet_shutdown():
            cluster.close()
