"""Out-of-core benchmark: fit a Zarr array larger than the whole cluster's memory.

Run it as ``python -m daskgmm.benchmarks.ooc`` (``--help`` for the options). The default
is the README's case: 40 million rows x 16 float64 features (5.1 GB) on a local
cluster of 2 worker processes with a 640 MiB memory limit each (1.25 GiB in all),
K=8 full covariances, the data streamed from a Zarr store in every iteration; then
the same fit on 4 million rows held in cluster memory (``persist=True``, 2 GiB per
worker) for the per-iteration comparison. It reports seconds per iteration, the
peak memory of the workers and of this (driver) process, whether any worker was
paused or restarted by the memory monitor, and how far the fitted means are from
the generating ones. The Zarr store is written chunk by chunk by the workers into
a temporary directory (``--dir``) and deleted afterwards: :func:`daskgmm.datasets.write_blobs_zarr`
with :data:`DATA` (uncompressed, one seed per block's first row, weights drawn).

The functions here also serve ``tests/test_out_of_core.py`` at a small size, and
:class:`MemoryWatch` the segmentation scale run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time

import numpy as np

from daskgmm.datasets import write_blobs_zarr


def worker_rss() -> int:
    """Resident memory of the calling process in bytes (run on workers with ``client.run``)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


#: the options of :func:`daskgmm.datasets.write_blobs_zarr` for this benchmark's data: uncompressed,
#: every block seeded by its first row, means in [-5, 5], weights ~ Dirichlet(10)
DATA = {"separation": 5.0, "concentration": 10.0, "seed_by": "row", "compressed": False}


def write_mixture_zarr(
    path: str, n_samples: int, n_features: int, n_components: int, chunk_rows: int, seed: int = 0
) -> np.ndarray:
    """Write this benchmark's synthetic mixture to a new Zarr array at ``path``, chunk by chunk
    (:func:`daskgmm.datasets.write_blobs_zarr` with :data:`DATA`); returns the generating means."""
    return write_blobs_zarr(path, n_samples, n_features, n_components, chunk_rows, seed, **DATA).means


def sample_init(
    z,
    n_components: int,
    seed: int = 0,
    n_blocks: int = 20,
    rows_per_block: int = 5000,
    covariance_type: str = "full",
) -> dict:
    """Initial parameters from ``KMeans(n_init=10)`` on a small sample of the store.

    The sample is ``n_blocks`` contiguous runs of rows spread over the array (the
    rows are independent draws, so runs are as good as scattered rows and read
    far fewer chunks). ``KMeans(n_init=1)``, which ``init_params='kmeans'`` runs as
    scikit-learn does, lands in a local optimum for about one seed in four with
    K=8 here; ten restarts on the sample make the benchmark's result reliable.
    ``covariance_type`` is 'full' or 'diag'.
    """
    from sklearn.cluster import KMeans

    n = z.shape[0]
    starts = np.linspace(0, max(0, n - rows_per_block), n_blocks).astype(int)
    sample = np.concatenate([np.asarray(z[s : s + rows_per_block]) for s in np.unique(starts)])
    km = KMeans(n_components, n_init=10, random_state=seed).fit(sample)
    labels = km.labels_
    d = sample.shape[1]
    weights = np.bincount(labels, minlength=n_components) / len(labels)
    if covariance_type == "diag":
        precisions = np.stack([1.0 / (sample[labels == k].var(axis=0) + 1e-6) for k in range(n_components)])
        return {"weights_init": weights, "means_init": km.cluster_centers_, "precisions_init": precisions}
    precisions = np.empty((n_components, d, d))
    for k in range(n_components):
        cov = np.cov(sample[labels == k], rowvar=False) + 1e-6 * np.eye(d)
        precisions[k] = np.linalg.inv(cov)
    return {"weights_init": weights, "means_init": km.cluster_centers_, "precisions_init": precisions}


class MemoryWatch:
    """Polls worker memory (``client.run``), worker status and the driver's memory.

    Records the peak resident memory of every worker and of this process, whether a
    worker was ever paused, and the worker processes seen (a restart shows as a new
    process id or address).
    """

    def __init__(self, client, interval: float = 0.25):
        import psutil

        self.client = client
        self.interval = interval
        self.proc = psutil.Process()
        self.peak_worker = 0
        self.peak_driver = self.proc.memory_info().rss
        self.start_driver = self.peak_driver
        self.paused = False
        self.statuses: set[str] = set()
        self.pids_start = client.run(os.getpid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        self.peak_driver = max(self.peak_driver, self.proc.memory_info().rss)
        try:
            rss = self.client.run(worker_rss)
            info = self.client.scheduler_info(n_workers=-1)["workers"]
        except Exception:  # a worker in the middle of leaving
            return
        if rss:
            self.peak_worker = max(self.peak_worker, max(rss.values()))
        for w in info.values():
            status = str(w.get("status", "running"))
            self.statuses.add(status)
            if "paused" in status:
                self.paused = True
            self.peak_worker = max(self.peak_worker, int(w.get("metrics", {}).get("memory", 0)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self.pids_end = self.client.run(os.getpid)

    @property
    def restarted(self) -> bool:
        return self.pids_start != self.pids_end


def fit_on_cluster(
    path: str,
    true_means: np.ndarray,
    *,
    n_components: int,
    covariance_type: str = "full",
    n_workers: int = 2,
    memory_limit: str = "640MiB",
    persist="auto",
    max_iter: int = 10,
    tol: float = 1e-3,
    seed: int = 0,
    client=None,
) -> dict:
    """Fit the Zarr array at ``path`` on a fresh local cluster (or ``client``) and measure it."""
    import logging

    from daskgmm import GaussianMixture

    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Keep(level=logging.INFO)
    log = logging.getLogger("daskgmm")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    cluster = None
    try:
        if client is None:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                memory_limit=memory_limit,
                processes=True,
                dashboard_address=":0",
            )
            client = Client(cluster)
        with client.as_current():
            limits = [w["memory_limit"] for w in client.scheduler_info(n_workers=-1)["workers"].values()]
            import zarr

            z = zarr.open(path, mode="r")
            init = sample_init(z, n_components, seed, covariance_type=covariance_type)
            model = GaussianMixture(
                n_components,
                covariance_type=covariance_type,
                random_state=seed,
                max_iter=max_iter,
                tol=tol,
                persist=persist,
                **init,
            )
            with MemoryWatch(client) as watch:
                t0 = time.perf_counter()
                model.fit(z)
                seconds = time.perf_counter() - t0
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        if cluster is not None:
            client.close()
            cluster.close()
    hist = model.history_
    per_iter = [r["seconds"] for r in hist]
    d = np.linalg.norm(model.means_[:, None, :] - true_means[None], axis=2)
    data_bytes = int(np.prod(z.shape) * z.dtype.itemsize)
    return {
        "n_samples": int(z.shape[0]),
        "n_features": int(z.shape[1]),
        "n_components": n_components,
        "data_bytes": data_bytes,
        "cluster_memory_bytes": int(sum(limits)),
        "data_to_memory": data_bytes / float(sum(limits)),
        "n_workers": len(limits),
        "persist": persist,
        "persist_log": [m for m in messages if "persist" in m or "in-memory" in m],
        "fit_seconds": seconds,
        "n_iter": int(model.n_iter_),
        "converged": bool(model.converged_),
        "seconds_per_iter": float(np.mean(per_iter)),
        "seconds_per_iter_per_million_rows": float(np.mean(per_iter)) / (z.shape[0] / 1e6),
        "bytes_read_per_iter": int(hist[-1]["bytes_read"]),
        "peak_worker_rss": int(watch.peak_worker),
        "peak_driver_rss": int(watch.peak_driver),
        "driver_rss_growth": int(watch.peak_driver - watch.start_driver),
        "driver_maxrss": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "worker_paused": bool(watch.paused),
        "worker_restarted": bool(watch.restarted),
        "max_mean_error": float(d.min(axis=0).max()),
        "means": model.means_.tolist(),
    }


def run(
    n_samples: int = 40_000_000,
    n_features: int = 16,
    n_components: int = 8,
    chunk_rows: int = 250_000,
    memory_limit: str = "640MiB",
    n_workers: int = 2,
    max_iter: int = 10,
    tol: float = 1e-3,
    compare_rows: int = 4_000_000,
    compare_memory_limit: str = "2GiB",
    directory: str | None = None,
    seed: int = 0,
) -> dict:
    """The README's out-of-core case, then the in-memory comparison (``compare_rows`` > 0)."""
    tmp = tempfile.mkdtemp(prefix="daskgmm-ooc-", dir=directory)
    out: dict = {"load_before": os.getloadavg()}
    try:
        from distributed import Client, LocalCluster

        path = os.path.join(tmp, "big.zarr")
        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                memory_limit=memory_limit,
                processes=True,
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            t0 = time.perf_counter()
            means = write_mixture_zarr(path, n_samples, n_features, n_components, chunk_rows, seed)
            out["write_seconds"] = time.perf_counter() - t0
            out["streamed"] = fit_on_cluster(
                path,
                means,
                n_components=n_components,
                persist="auto",
                max_iter=max_iter,
                tol=tol,
                seed=seed,
                client=client,
            )
        shutil.rmtree(path, ignore_errors=True)
        if compare_rows:
            path = os.path.join(tmp, "small.zarr")
            with (
                LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    memory_limit=compare_memory_limit,
                    processes=True,
                    dashboard_address=":0",
                ) as cluster,
                Client(cluster) as client,
            ):
                means = write_mixture_zarr(path, compare_rows, n_features, n_components, chunk_rows, seed)
                out["in_memory"] = fit_on_cluster(
                    path,
                    means,
                    n_components=n_components,
                    persist=True,
                    max_iter=max_iter,
                    tol=tol,
                    seed=seed,
                    client=client,
                )
            s, m = out["streamed"], out["in_memory"]
            out["streamed_over_in_memory_per_row"] = (
                s["seconds_per_iter_per_million_rows"] / m["seconds_per_iter_per_million_rows"]
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m daskgmm.benchmarks.ooc", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=40_000_000)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--chunk-rows", type=int, default=250_000)
    p.add_argument("--memory-limit", default="640MiB")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument(
        "--compare-rows", type=int, default=4_000_000, help="rows of the in-memory comparison (0: skip)"
    )
    p.add_argument("--dir", default=None, help="where to write the temporary Zarr stores")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    out = run(
        args.rows,
        args.features,
        args.components,
        args.chunk_rows,
        args.memory_limit,
        args.workers,
        args.max_iter,
        args.tol,
        args.compare_rows,
        directory=args.dir,
    )
    for name in ("streamed", "in_memory"):
        if name not in out:
            continue
        r = out[name]
        print(
            f"{name:>9}: {r['n_samples']:,} x {r['n_features']} float64 = {r['data_bytes'] / 1e9:.2f} GB on "
            f"{r['n_workers']} workers with {_mib(r['cluster_memory_bytes'])} in all "
            f"(data/memory {r['data_to_memory']:.2f}); {r['n_iter']} iterations, "
            f"{r['seconds_per_iter']:.2f} s/iteration ({r['seconds_per_iter_per_million_rows']:.3f} s per million rows); "
            f"peak worker {_mib(r['peak_worker_rss'])}, driver peak {_mib(r['peak_driver_rss'])}; "
            f"paused={r['worker_paused']} restarted={r['worker_restarted']}; "
            f"largest mean error {r['max_mean_error']:.4f}"
        )
    if "streamed_over_in_memory_per_row" in out:
        print(
            f"streamed / in-memory cost per row and iteration: {out['streamed_over_in_memory_per_row']:.2f}"
        )
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
