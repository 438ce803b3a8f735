"""The ``daskgmm`` command: ``fit``, ``demo`` (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

logger = logging.getLogger("daskgmm")


# --------------------------------------------------------------------------
# cluster connection (shared by every subcommand that computes)
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def open_data(path: str, array: str | None):
    """The Zarr array (or group member) itself, so that a checkpoint records its path, or a
    lazy dask array over a memory-mapped .npy file."""
    import dask.array as da

    if not os.path.exists(path):
        raise SystemExit(f"error: {path!r} does not exist")
    if path.endswith(".npy"):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return da.from_array(arr, chunks=("auto", -1))
    from daskgmm._input import open_zarr_array

    try:
        return open_zarr_array(path, array)[0]
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------
def add_fit_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit a Gaussian mixture to a Zarr array or .npy file")
    p.add_argument("data", help="Zarr array (or group with --array) or .npy file of shape (n_samples, n_features)")
    p.add_argument("--array", help="array name inside a Zarr group")
    p.add_argument("--n-components", "-k", type=int, required=True)
    p.add_argument("--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"])
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--reg-covar", type=float, default=1e-6)
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--init", default="kmeans", choices=["kmeans", "k-means++", "random", "random_from_data"])
    p.add_argument("--seed", type=int, default=None, help="random seed (default: unseeded)")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: the array's chunks)")
    p.add_argument("--save-model", metavar="PATH", help="write the fitted model here (.npz, no pickle)")
    p.add_argument("--json", action="store_true", help="print the fitted summary as JSON")
    p.add_argument("--checkpoint", metavar="PATH", help="save the EM state here after every iteration (atomic, no pickle)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint PATH (a new fit if it does not exist yet)")
    p.add_argument(
        "--persist",
        default="auto",
        choices=["auto", "true", "false"],
        help="hold the data in cluster memory across iterations (true), stream it from storage every "
        "iteration (false), or hold it only when it takes at most half the workers' memory (auto, the default)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)")
    add_cluster_arguments(p)
    p.set_defaults(func=run_fit)


def model_kwargs(args) -> dict:
    return dict(
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        max_iter=args.max_iter,
        tol=args.tol,
        reg_covar=args.reg_covar,
        n_init=args.n_init,
        init_params=args.init,
        random_state=args.seed,
        chunk_size=args.chunk_size,
        persist={"auto": "auto", "true": True, "false": False}[getattr(args, "persist", "auto")],
        checkpoint=getattr(args, "checkpoint", None),
    )


def summary(model) -> dict:
    return {
        "n_components": int(model.n_components),
        "covariance_type": model.covariance_type,
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "weights": np.round(model.weights_, 6).tolist(),
        "means": np.round(model.means_, 6).tolist(),
    }


def print_summary(model, out=sys.stdout) -> None:
    print(
        f"converged: {model.converged_}  iterations: {model.n_iter_}  "
        f"lower bound: {model.lower_bound_:.6f}",
        file=out,
    )
    with np.printoptions(precision=4, suppress=True, linewidth=120):
        for k in np.argsort(-model.weights_):
            print(f"  component {k}: weight {model.weights_[k]:.4f}  mean {model.means_[k]}", file=out)


def run_fit(args) -> int:
    from daskgmm import GaussianMixture
    from daskgmm._progress import FitProgress, is_interactive
    from daskgmm.checkpoint import CheckpointError

    X = open_data(args.data, args.array)
    if args.resume and not args.checkpoint:
        raise SystemExit("error: --resume needs --checkpoint PATH (the checkpoint of the fit to continue)")
    bars: list = []

    def progress(state, record):
        # one bar per start: a start begins again at iteration 1
        if not bars or record["iteration"] <= bars[-1].last:
            if bars:
                bars[-1].close()
            bars.append(FitProgress(args.max_iter, True, desc="daskgmm fit", initial=record["iteration"] - 1))
        bars[-1].update(record)

    show = is_interactive() and not args.no_progress
    with connect(args) as client:
        if client.dashboard_link:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        model = GaussianMixture(verbose=0, **model_kwargs(args))
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # a command-line user gets a plain message below, not a Python warning
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X, callback=progress if show else None, resume=args.resume)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        finally:
            for bar in bars:
                bar.close()
        seconds = time.perf_counter() - t0
    if not model.converged_ and args.max_iter > 0:
        print(
            f"warning: the fit did not converge in {model.n_iter_} iterations "
            f"(lower bound still changing by more than --tol {args.tol}); "
            "increase --max-iter or --tol, or try --n-init / another --init",
            file=sys.stderr,
        )
    if args.save_model:
        model.save(args.save_model)
    if args.json:
        print(json.dumps({**summary(model), "seconds": seconds}))
    else:
        print_summary(model)
        print(f"fitted in {seconds:.2f}s" + (f"; model saved to {args.save_model}" if args.save_model else ""))
    return 0


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------
def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="fit a synthetic dataset in a temporary Zarr store on a local cluster")
    p.add_argument("--n-samples", type=int, default=2_000_000)
    p.add_argument("--n-features", type=int, default=8)
    p.add_argument("--n-components", type=int, default=5)
    p.add_argument("--chunk-rows", type=int, default=250_000)
    p.add_argument("--seed", type=int, default=0)
    add_cluster_arguments(p)
    p.set_defaults(func=run_demo)


def make_blobs_zarr(path, n_samples, n_features, n_components, chunk_rows, seed):
    """Write a synthetic Gaussian mixture to a Zarr array chunk by chunk; return the true means."""
    import dask.array as da

    rng = np.random.RandomState(seed)
    means = rng.uniform(-3, 3, size=(n_components, n_features))
    scales = rng.uniform(0.5, 1.5, size=n_components)

    def block(block_info=None):
        loc = block_info[None]["array-location"][0]
        n = loc[1] - loc[0]
        r = np.random.RandomState([seed, loc[0] // chunk_rows])
        labels = r.randint(n_components, size=n)
        return means[labels] + r.standard_normal((n, n_features)) * scales[labels, None]

    X = da.map_blocks(block, chunks=((chunk_rows,) * (n_samples // chunk_rows) + ((n_samples % chunk_rows,) if n_samples % chunk_rows else ()), (n_features,)), dtype=np.float64)
    X.to_zarr(path, overwrite=True)
    return means


def run_demo(args) -> int:
    import dask.array as da

    from daskgmm import GaussianMixture

    with tempfile.TemporaryDirectory(prefix="daskgmm-demo-") as tmp, connect(args) as client:
        print(f"dashboard: {client.dashboard_link}")
        path = os.path.join(tmp, "blobs.zarr")
        t0 = time.perf_counter()
        true_means = make_blobs_zarr(path, args.n_samples, args.n_features, args.n_components, args.chunk_rows, args.seed)
        size_mb = args.n_samples * args.n_features * 8 / 1e6
        print(f"wrote {args.n_samples:,} x {args.n_features} float64 ({size_mb:.0f} MB) to a Zarr store in {time.perf_counter() - t0:.1f}s")
        X = da.from_zarr(path)
        model = GaussianMixture(args.n_components, random_state=args.seed, max_iter=50, tol=1e-4)

        print(f"{'iteration':>9} {'lower bound':>14} {'change':>11} {'seconds':>8}")

        def show(state, record):
            print(f"{record['iteration']:>9} {record['lower_bound']:>14.6f} {record['change']:>11.3g} {record['seconds']:>8.2f}")

        t0 = time.perf_counter()
        model.fit(X, callback=show)
        print(f"fitted in {time.perf_counter() - t0:.1f}s")
        print_summary(model)
        # how well the generating means were recovered
        d = np.linalg.norm(model.means_[:, None, :] - true_means[None], axis=2)
        err = d.min(axis=0).max()
        print(f"largest distance from a true mean to its nearest fitted mean: {err:.4f}")
    return 0


# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daskgmm", description="Gaussian mixture models on Dask, out of core.")
    parser.add_argument("--log-level", default="WARNING", help="logging level of the 'daskgmm' logger")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    add_demo_parser(sub)
    # further subcommands register here, one line each
    __import__("daskgmm.image", fromlist=["add_parser"]).add_parser(sub)  # daskgmm segment
    __import__("daskgmm.bench", fromlist=["add_parser"]).add_parser(sub)  # daskgmm bench
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
