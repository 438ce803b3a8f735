"""Where a subcommand computes: the ``--scheduler``/``--scheduler-file``/local-cluster and
``--tls-*`` options every computing subcommand shares, and :func:`connect`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster", "where to compute (default: a local cluster started in-process)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler, e.g. tcp://host:8786 or tls://host:8786")
    g.add_argument("--scheduler-file", metavar="PATH", help="scheduler file written by 'dask scheduler --scheduler-file' (HPC convention)")
    g.add_argument("--workers", type=int, default=None, help="local cluster: number of worker processes (default: 1 per 2 cores, at least 1)")
    g.add_argument("--threads-per-worker", type=int, default=None, help="local cluster: threads per worker")
    g.add_argument("--memory-limit", default="auto", help="local cluster: memory limit per worker, e.g. 2GiB (default: auto)")
    g.add_argument("--dashboard-address", default=":0", help="local cluster: dashboard address (default: a free port)")
    g.add_argument("--tls-ca-file", help="CA certificate for a tls:// scheduler")
    g.add_argument("--tls-cert", help="client certificate for a tls:// scheduler")
    g.add_argument("--tls-key", help="client private key for a tls:// scheduler")


_TLS_OPTIONS = ("tls_ca_file", "tls_cert", "tls_key")


def _scheduler_address(args) -> str | None:
    """The address given by ``--scheduler``, or the one recorded in ``--scheduler-file``."""
    if args.scheduler:
        return args.scheduler
    if args.scheduler_file:
        try:
            with open(args.scheduler_file) as f:
                return json.load(f).get("address")
        except (OSError, ValueError, AttributeError):
            return None  # the Client reports an unreadable scheduler file
    return None


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
    if not (args.scheduler or args.scheduler_file):
        raise SystemExit(
            "error: --tls-ca-file/--tls-cert/--tls-key are for connecting to a running tls:// scheduler; "
            "add --scheduler tls://HOST:PORT or --scheduler-file PATH (a local cluster needs no certificates)"
        )
    if address is not None and not address.startswith("tls://"):
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


@contextlib.contextmanager
def connect(args):
    """Yield a ``distributed.Client``: to ``--scheduler``/``--scheduler-file``, or a local cluster."""
    from distributed import Client, LocalCluster

    security = _security(args)
    if args.scheduler and args.scheduler_file:
        raise SystemExit("error: give --scheduler or --scheduler-file, not both")
    if args.scheduler or args.scheduler_file:
        if args.scheduler_file and not os.path.exists(args.scheduler_file):
            raise SystemExit(f"error: scheduler file {args.scheduler_file!r} does not exist")
        if args.scheduler_file and not _scheduler_address(args):
            raise SystemExit(
                f"error: scheduler file {args.scheduler_file!r} holds no scheduler address (it is empty, or not the "
                "JSON that 'dask scheduler --scheduler-file' writes); if the scheduler is still starting, wait until "
                "the file is complete"
            )
        kwargs = {"security": security} if security is not None else {}
        try:
            client = Client(args.scheduler, scheduler_file=args.scheduler_file, timeout="30s", **kwargs)
        except (OSError, RuntimeError) as e:  # refused, timed out, or TLS required by the configuration
            raise SystemExit(
                f"error: could not connect to the scheduler at {args.scheduler or args.scheduler_file}: {e}. "
                "Check the address, that the scheduler is running, and (for tls://) the certificates."
            ) from e
        with client:
            yield client
        return
    ncores = os.cpu_count() or 1
    n_workers = args.workers or max(1, ncores // 2)
    threads = args.threads_per_worker or max(1, ncores // n_workers)
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        memory_limit=args.memory_limit,
        processes=True,
        dashboard_address=args.dashboard_address,
        silence_logs=logging.WARNING,
    ) as cluster, Client(cluster) as client:
        try:
            yield client
        finally:
            # close the workers before the scheduler, so that none of them logs a failed
            # heartbeat to a scheduler that is already gone
            with contextlib.suppress(Exception):
                client.retire_workers(close_workers=True)
