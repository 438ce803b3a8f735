"""A streamed fit from an S3-compatible server against the same fit from local disk
(``daskgmm bench --storage``). The README's "Object storage" figures come from here.

The same generated data are written as one Zarr array to a temporary directory and to a
``moto`` S3 server started in this process on 127.0.0.1 (``pip install 'daskgmm[test]'``: it
is the test suite's server); a multi-process local cluster then fits
``GaussianMixture(persist=False)`` on each, so every EM iteration reads every chunk again
(from disk, or over HTTP from the server). Per source: seconds per iteration (median of the
engine's ``history_``), bytes read per iteration (``history_``'s ``bytes_read``) and the
read throughput this implies; and whether the two fits agree (they should, bit for bit).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings

import numpy as np


def bench_storage(
    n: int = 1_000_000,
    d: int = 8,
    k: int = 4,
    n_chunks: int = 16,
    iters: int = 5,
    workers: int = 2,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{source, seconds_per_iter, bytes_per_iter, mb_per_s, write_seconds, same_fit}``."""
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster
    from sklearn.exceptions import ConvergenceWarning

    from daskgmm import GaussianMixture
    from daskgmm._storage import using, zarr_store
    from daskgmm.datasets import make_blobs

    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise SystemExit(
            "error: the storage benchmark needs the moto S3 server: pip install 'daskgmm[test]' "
            f"(or moto[s3] flask flask-cors) and s3fs ({e})"
        ) from e
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    X = make_blobs(n, d, k, np.random.RandomState(seed), separation=4.0).X
    chunks = (-(-n // n_chunks), d)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    rows = []
    try:
        host, port = server.get_host_and_port()
        options = {
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        }
        with tempfile.TemporaryDirectory() as tmp:
            local, url = f"{tmp}/x.zarr", "s3://daskgmm-bench/x.zarr"
            sources = []
            t0 = time.perf_counter()
            da.from_array(X, chunks=chunks).to_zarr(local)
            sources.append(("local disk", local, None, time.perf_counter() - t0))
            with using(options):
                import fsspec

                fsspec.filesystem("s3", **options).mkdir("daskgmm-bench")
                t0 = time.perf_counter()
                z = zarr.create_array(
                    zarr_store(url, read_only=False), shape=X.shape, chunks=chunks, dtype=X.dtype
                )
                z[...] = X
                sources.append(("S3 (moto, 127.0.0.1)", url, options, time.perf_counter() - t0))
            with (
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster, set_as_default=False) as client,
                client.as_current(),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore", ConvergenceWarning)
                fits = []
                for name, where, opts, write_s in sources:
                    gm = GaussianMixture(k, max_iter=iters, tol=0.0, persist=False, random_state=seed)
                    gm.fit(where, storage_options=opts)
                    its = [h for h in gm.history_ if isinstance(h, dict) and "seconds" in h]
                    sec = float(np.median([h["seconds"] for h in its]))
                    nbytes = int(its[-1]["bytes_read"])
                    fits.append(gm)
                    rows.append(
                        {
                            "source": name,
                            "seconds_per_iter": sec,
                            "bytes_per_iter": nbytes,
                            "mb_per_s": nbytes / sec / 1e6,
                            "write_seconds": write_s,
                            "iterations": len(its),
                        }
                    )
                same = bool(np.array_equal(fits[0].means_, fits[1].means_))
                for row in rows:
                    row["same_fit"] = same
    finally:
        server.stop()
    return rows


def format_storage(rows: list[dict], n: int, d: int, n_chunks: int, workers: int) -> str:
    head = (
        f"Streamed fit (persist=False), {n:,} x {d} float64 in {n_chunks} chunks, "
        f"{workers} worker processes x 1 thread\n\n"
        "| source | s / iteration | MB read / iteration | MB/s | write (s) | same fit |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['source']} | {r['seconds_per_iter']:.3f} | {r['bytes_per_iter'] / 1e6:.1f} | "
        f"{r['mb_per_s']:.0f} | {r['write_seconds']:.2f} | {r['same_fit']} |"
        for r in rows
    ]
    return head + "\n".join(lines)
