"""The raster scale run (``daskgmm segment-bench``): generate a uint16 raster with known classes,
segment it on a memory-limited local cluster, time the fit and the predict+write apart, watch
memory, check the labels against the true classes, delete. The command line is in
:mod:`daskgmm.cli.segment_bench`; the README's "Segmenting a 3.2 GB raster" figures come from here."""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import numpy as np

from daskgmm.benchmarks.ooc import MemoryWatch
from daskgmm.datasets import make_raster, true_classes
from daskgmm.image import Segmentation, as_image, fit_image


def scale_run(
    workdir: str,
    *,
    height: int = 20_000,
    width: int = 20_000,
    bands: int = 4,
    classes: int = 5,
    chunk: int = 2000,
    sample: float = 0.01,
    nodata: int | None = 0,
    workers: int = 2,
    memory_limit: str = "3GiB",
    seed: int = 0,
    keep: bool = False,
) -> dict:
    """Generate a raster with known classes in ``workdir``, segment it on a local cluster with
    memory limits, time the fit and the predict+write separately, watch memory, check the labels
    against the true classes on a few windows, and delete the stores (unless ``keep``)."""
    from distributed import Client, LocalCluster
    from sklearn.metrics import adjusted_rand_score

    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "raster.zarr")
    out = os.path.join(workdir, "classes.zarr")
    n_pixels = height * width
    report: dict[str, Any] = {
        "shape": [height, width, bands],
        "dtype": "uint16",
        "gigabytes": n_pixels * bands * 2 / 1e9,
        "chunks": [chunk, chunk, bands],
        "classes": classes,
        "sample": sample,
        "workers": workers,
        "threads_per_worker": 1,
        "memory_limit": memory_limit,
    }
    try:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                memory_limit=memory_limit,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            if not os.path.exists(src):
                t0 = time.perf_counter()
                make_raster(src, (height, width), bands, classes, (chunk, chunk), seed, nodata=nodata)
                report["generate_seconds"] = time.perf_counter() - t0
            with MemoryWatch(client) as watch:
                img = as_image(src)
                t0 = time.perf_counter()
                model = fit_image(img, classes, nodata=nodata, sample=sample, random_state=seed)
                fit_s = time.perf_counter() - t0
                seg = Segmentation(model=model, image=img, nodata=nodata)
                t1 = time.perf_counter()
                seg.to_zarr(out, overwrite=True)
                write_s = time.perf_counter() - t1
            report.update(
                n_pixels=n_pixels,
                n_pixels_fit=int(model.n_pixels_fit_),
                n_iter=int(model.n_iter_),
                converged=bool(model.converged_),
                fit_seconds=fit_s,
                fit_image_pixels_per_second=n_pixels / fit_s,
                predict_write_seconds=write_s,
                predict_write_pixels_per_second=n_pixels / write_s,
                total_pixels_per_second=n_pixels / (fit_s + write_s),
                peak_worker_rss_mib=watch.peak_worker / 2**20,
                peak_driver_rss_mib=watch.peak_driver / 2**20,
                worker_paused=watch.paused,
                worker_restarted=watch.restarted,
            )
        # the labels against the true classes, on a few windows
        import zarr

        labels = zarr.open_group(out, mode="r")["labels"]
        aris = []
        rng = np.random.default_rng(seed)
        for _ in range(4):
            y0 = int(rng.integers(0, max(1, height - 500)))
            x0 = int(rng.integers(0, max(1, width - 500)))
            lab = labels[y0 : y0 + 500, x0 : x0 + 500]
            truth = true_classes(lab.shape, classes, seed, 64, origin=(y0, x0))
            ok = lab >= 0
            aris.append(float(adjusted_rand_score(truth[ok], lab[ok])))
        report["adjusted_rand_index_windows"] = aris
    finally:
        if not keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    return report
