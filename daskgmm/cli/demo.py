"""``daskgmm demo``: fit a synthetic dataset in a temporary Zarr store on a local cluster."""

from __future__ import annotations

import os
import tempfile
import time

from daskgmm.cli._cluster import add_cluster_arguments, connect


def add_parser(sub) -> None:
    """Register ``daskgmm demo``."""
    p = sub.add_parser("demo", help="fit a synthetic dataset in a temporary Zarr store on a local cluster")
    p.add_argument("--n-samples", type=int, default=2_000_000)
    p.add_argument("--n-features", type=int, default=8)
    p.add_argument("--n-components", type=int, default=5)
    p.add_argument("--chunk-rows", type=int, default=250_000)
    p.add_argument("--seed", type=int, default=0)
    add_cluster_arguments(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    import dask.array as da
    import numpy as np

    from daskgmm import GaussianMixture
    from daskgmm.cli.fit import print_summary
    from daskgmm.datasets import write_blobs_zarr

    with tempfile.TemporaryDirectory(prefix="daskgmm-demo-") as tmp, connect(args) as client:
        print(f"dashboard: {client.dashboard_link}")
        path = os.path.join(tmp, "blobs.zarr")
        t0 = time.perf_counter()
        true_means = write_blobs_zarr(
            path, args.n_samples, args.n_features, args.n_components, args.chunk_rows, args.seed
        ).means
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
