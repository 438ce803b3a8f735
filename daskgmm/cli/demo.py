"""``daskgmm demo``: generate a mixture with known parameters into a temporary Zarr store, fit
it on a local cluster (or the one ``--scheduler`` names), and say how close the fit came.

Everything the demo says goes to standard output, the dashboard link first: the demo's output is
its narrative (``fit`` and ``segment`` keep standard output for their result instead).
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import time

from daskgmm.cli._cluster import add_cluster_arguments, connect
from daskgmm.cli._options import UsageError, add_alias, add_model_options, int_at_least

#: the estimator parameters ``daskgmm demo`` takes as options, and the demo's own defaults
MODEL_OPTIONS = ("n_components", "covariance_type", "max_iter", "tol")
DEFAULTS = {"n_components": 5, "max_iter": 50, "tol": 1e-4}

LOWER_BOUND = (
    "'lower bound' is the average log-likelihood of a row under the model (higher is better): "
    "EM raises it at every iteration, and the fit has converged when it rises by less than tol"
)


def add_parser(sub) -> None:
    """Register ``daskgmm demo``."""
    p = sub.add_parser(
        "demo",
        help="fit a synthetic dataset in a temporary Zarr store on a local cluster",
        description="Generate N rows of a mixture of K isotropic Gaussians with known weights and means into a "
        "temporary Zarr store (chunk by chunk, on the workers), fit a GaussianMixture to it out of core, "
        "print each EM iteration, and compare the fitted components with the true ones. The store is deleted "
        "afterwards.",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--n-samples",
        type=int_at_least(1),
        default=2_000_000,
        metavar="N",
        help="rows to generate (default: %(default)s, 128 MB at 8 features)",
    )
    data.add_argument(
        "--n-features",
        type=int_at_least(1),
        default=8,
        metavar="D",
        help="features per row (default: %(default)s)",
    )
    data.add_argument(
        "--chunk-size",
        dest="chunk_size",
        type=int_at_least(1),
        default=250_000,
        metavar="ROWS",
        help="rows per chunk of the Zarr store, and so per task (default: %(default)s)",
    )
    add_alias(data, "--chunk-rows", "chunk_size", int_at_least(1))
    data.add_argument(
        "--seed",
        type=int_at_least(0),
        default=0,
        help="seed of the data and of the initialisation (default: %(default)s)",
    )
    model = p.add_argument_group(
        "model", "GaussianMixture's parameters (-k is also the true number of components)"
    )
    add_model_options(model, MODEL_OPTIONS, required=(), defaults=DEFAULTS)
    p.add_argument(
        "--keep-open",
        action="store_true",
        help="after the fit, keep the cluster and its dashboard open until Enter or Ctrl-C",
    )
    add_cluster_arguments(p)
    p.set_defaults(func=run_demo)


def _say(text: str) -> None:
    """A paragraph of the demo's story, wrapped under its label."""
    print(textwrap.fill(text, width=100, subsequent_indent=" " * 11, break_on_hyphens=False))


def _wait_for_enter(link: str | None) -> None:
    where = f" at {link}" if link else ""
    print(f"\nthe dashboard stays open{where}: press Enter (or Ctrl-C) to close it", flush=True)
    try:
        input()
    except (EOFError, KeyboardInterrupt):
        print()


def run_demo(args) -> int:
    import dask
    import dask.array as da
    import numpy as np

    from daskgmm import GaussianMixture
    from daskgmm.cli.fit import print_summary
    from daskgmm.datasets import write_blobs_zarr

    k, n, d = args.n_components, args.n_samples, args.n_features
    if n < k:
        raise UsageError(f"--n-samples {n} is fewer than the {k} components (--n-components)")
    chunk = min(args.chunk_size, n)
    with tempfile.TemporaryDirectory(prefix="daskgmm-demo-") as tmp, connect(args) as client:
        print(f"dashboard: {client.dashboard_link}")
        nworkers = len(client.scheduler_info(n_workers=-1)["workers"])
        print(f"cluster: {nworkers} worker(s), {sum(client.nthreads().values())} thread(s)\n")
        path = os.path.join(tmp, "blobs.zarr")
        t0 = time.perf_counter()
        truth = write_blobs_zarr(path, n, d, k, chunk, args.seed)
        n_chunks = -(-n // chunk)
        _say(
            f"generated: {n:,} rows x {d} features (float64, {n * d * 8 / 1e6:,.0f} MB) from a mixture of {k} "
            f"isotropic Gaussians with known weights, means and standard deviations "
            f"({truth.scales.min():.2f} to {truth.scales.max():.2f}); written to a temporary Zarr store in "
            f"{n_chunks} chunks of {chunk:,} rows in {time.perf_counter() - t0:.1f}s"
        )
        X = da.from_zarr(path)
        model = GaussianMixture(
            k,
            covariance_type=args.covariance_type,
            max_iter=args.max_iter,
            tol=args.tol,
            random_state=args.seed,
        )
        _say(
            f"fitting:   GaussianMixture(n_components={k}, covariance_type={args.covariance_type!r}, "
            f"max_iter={args.max_iter}, tol={args.tol:g}) by EM, out of core: each iteration is one pass over "
            f"the {n_chunks} chunks (k-means initialisation on a sample first)"
        )
        _say(f"meaning:   {LOWER_BOUND}")
        print()
        print(f"{'iteration':>9} {'lower bound':>14} {'change':>11} {'seconds':>8}", flush=True)

        def show(state, record):
            change = record["change"]
            change = f"{change:>11.3g}" if np.isfinite(change) else f"{'-':>11}"  # the first has none
            print(
                f"{record['iteration']:>9} {record['lower_bound']:>14.6f} {change} {record['seconds']:>8.2f}",
                flush=True,
            )

        t0 = time.perf_counter()
        with dask.config.set({"daskgmm.progress": False}):  # the lines above are the demo's progress
            model.fit(X, callback=show)
        print(f"\nfitted in {time.perf_counter() - t0:.1f}s")
        print_summary(model)
        # how well the generating components were recovered: each true one against its nearest fit
        dist = np.linalg.norm(model.means_[:, None, :] - truth.means[None], axis=2)
        nearest = dist.argmin(axis=0)
        print(f"\nrecovered: each true component and its nearest fitted one ({d}-dimensional means)")
        print(f"  {'true weight':>11} {'fitted':>7} {'std':>6} {'mean error':>10}")
        for j in np.argsort(-truth.weights):
            print(
                f"  {truth.weights[j]:>11.4f} {model.weights_[nearest[j]]:>7.4f} {truth.scales[j]:>6.2f} "
                f"{dist[nearest[j], j]:>10.4f}"
            )
        if len(set(nearest.tolist())) < k:
            print("  (two true components share a fitted one: try another --seed, or more --n-samples)")
        err = dist.min(axis=0).max()
        sys.stdout.flush()
        print(f"largest distance from a true mean to its nearest fitted mean: {err:.4f}", flush=True)
        if args.keep_open:
            _wait_for_enter(client.dashboard_link)
    return 0
