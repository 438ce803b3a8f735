"""Validation of the cost model (``daskgmm plan --validate``) and the scaling curves.

Every measurement fits :class:`~daskgmm.GaussianMixture` from given parameters
(``weights_init``/``means_init``/``precisions_init``, so no initialisation pass) with
``tol=0`` on generated data, and times whole iterations (graph, scheduler, tasks,
reduction, gather and the driver's M-step) from the fit's callback: the median of the
intervals between consecutive iterations, after the first. Data "in chunks" is a Zarr
store written with those row chunks and streamed (``persist=False``), as a store too big
to hold would be. The scheduler's share of an iteration is
``1 − Σ task compute time / (threads · iteration time)`` from ``client.get_task_stream``
(the time the threads did not spend in the statistics tasks: scheduler, reduction, gather,
M-step, idle threads at the end of a pass).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from daskgmm._placement import cluster_threads, housekeeping_config, housekeeping_environ
from daskgmm.benchmarks.scale import (
    auto_chunks_per_task,
    estep_params,
    measure_constants,
    predict,
    synthetic_params,
    synthetic_rows,
)
from daskgmm.benchmarks.scale_data import measure_data


def write_store(path: str, X: np.ndarray, chunk_rows: int) -> str:
    """A Zarr array of ``X`` with row chunks of ``chunk_rows`` (uncompressed, as a fair read)."""
    import zarr

    z = zarr.create_array(
        path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype, compressors=None
    )
    z[:] = X
    return path


def fit_seconds(
    X, k: int, covariance_type: str, iters: int = 4, client=None, chunks_per_task=None, persist=False
) -> dict:
    """Measured seconds per iteration (median after the first) and the non-compute share."""
    import dask
    from sklearn.exceptions import ConvergenceWarning

    from daskgmm import GaussianMixture

    d = X.shape[1]
    weights, means, cov, _ = synthetic_params(k, d, covariance_type)
    precisions = cov if covariance_type in ("full", "tied") else 1.0 / cov  # unit covariances
    stamps, walls = [], []
    gm = GaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        max_iter=iters,
        tol=0.0,
        persist=persist,
    )
    config = {} if chunks_per_task is None else {"daskgmm.chunks_per_task": chunks_per_task}
    stream = contextlib.nullcontext() if client is None else _task_stream(client)
    with warnings.catch_warnings(), dask.config.set(config), stream as ts:
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(
            X, callback=lambda state, record: (stamps.append(time.perf_counter()), walls.append(time.time()))
        )
    laps = np.diff(stamps)
    seconds = float(np.median(laps)) if len(laps) else math.nan
    out = {"seconds": seconds, "iterations": len(stamps)}
    if client is not None and ts is not None:
        slots = cluster_threads(client)
        if not slots:
            raise RuntimeError(f"the cluster at {client.scheduler.address} has no workers left after the fit")
        busy = sum(
            s["stop"] - s["start"]
            for t in ts.data
            for s in t.get("startstops", ())
            if s.get("action") == "compute" and str(t.get("key", "")).find("gmm-em-stats") >= 0
        )
        wall = float(np.sum(laps)) + (stamps[0] - ts.t0 if stamps else 0.0)
        out["compute_share"] = busy / max(slots * wall, 1e-9)
        out["overhead_share"] = max(0.0, 1.0 - out["compute_share"])
        out.update(iteration_breakdown(ts.data, walls, slots))
    return out


def iteration_breakdown(stream: list, walls: list, slots: int) -> dict:
    """Median over the iterations after the first, from the task stream (wall clock): ``start``,
    end of the previous iteration to the first statistics task (graph, submission, scheduler);
    ``kernel``, statistics-task compute time per thread; ``end``, last statistics task to the
    end of the iteration (reduction transfers, gather, M-step); ``idle``, the rest (threads idle
    between tasks and at the end of a pass). ``gaps``, the part of ``idle`` between a thread's
    consecutive tasks (a task's dispatch and report), per thread; and ``measured_scheduler_share``, the
    share of an iteration that waited on the scheduler, ``(start + gaps) / iteration``."""
    rows = []
    for t0, t1 in zip(walls, walls[1:]):
        spans = [
            (s["start"], s["stop"], "combine" in str(t.get("key", "")), (t.get("worker"), t.get("thread")))
            for t in stream
            if "gmm-em-stats" in str(t.get("key", ""))
            for s in t.get("startstops", ())
            if s.get("action") == "compute" and t0 <= s["start"] < t1
        ]
        if not spans:
            continue
        kernel = sum(b - a for a, b, combine, _ in spans if not combine) / slots
        start = min(a for a, _, _, _ in spans) - t0
        end = t1 - max(b for _, b, _, _ in spans)
        by_thread: dict = {}
        for a, b, _, where in spans:
            by_thread.setdefault(where, []).append((a, b))
        runs = [sorted(r) for r in by_thread.values()]
        gaps = sum(max(0.0, a - b) for r in runs for (_, b), (a, _) in zip(r, r[1:])) / slots
        rows.append((start, kernel, end, (t1 - t0) - start - kernel - end, gaps, (start + gaps) / (t1 - t0)))
    if not rows:
        return {}
    med = np.median(np.array(rows), axis=0)
    names = ("t_start", "t_kernel", "t_end", "t_idle", "t_gaps", "measured_scheduler_share")
    return dict(zip(names, (float(v) for v in med)))


class _Stream:
    def __init__(self, client):
        from distributed import get_task_stream

        self.cm = get_task_stream(client)
        self.data = []
        self.t0 = 0.0

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.ts = self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        self.data = self.ts.data
        return False


def _task_stream(client):
    return _Stream(client)


@contextlib.contextmanager
def local_cluster(n_workers: int, threads: int = 1, housekeeping: bool = True):
    """A ``LocalCluster(processes=True)`` and its client; with ``housekeeping`` started with
    daskgmm's housekeeping intervals (:data:`daskgmm._placement.HOUSEKEEPING`), as ``daskgmm fit``
    starts its local cluster, else with dask's defaults."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(housekeeping_config() if housekeeping else {}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            memory_limit=0,
        )
    with cluster, Client(cluster) as client:
        yield client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_cluster(n_workers: int, threads: int = 1, housekeeping: bool = True):
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (what a real deployment runs);
    with ``housekeeping``, daskgmm's housekeeping intervals in their environment."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, **(housekeeping_environ(housekeeping_config()) if housekeeping else {}))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(n_workers):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        address,
                        "--nthreads",
                        str(threads),
                        "--memory-limit",
                        "0",
                        "--dashboard-address",
                        ":0",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)
            yield client
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


def validate(
    workers=(1, 2, 3, 4),
    chunk_counts=(10, 100, 1000, 10_000),
    rows: int = 500_000,
    d: int = 16,
    k: int = 16,
    covariance_type: str = "full",
    iters: int = 5,
    processes: bool = False,
    log=print,
) -> list[dict]:
    """Predicted against measured seconds per iteration on every (workers, chunks) pair."""
    import dask.array as da

    _, means, _, _ = synthetic_params(k, d, covariance_type)
    X = synthetic_rows(rows, means)
    tmp = tempfile.mkdtemp(prefix="daskgmm-plan-")
    out = []
    try:
        stores = {}
        for n in chunk_counts:
            cr = -(-rows // n)
            stores[n] = (write_store(os.path.join(tmp, f"c{n}.zarr"), X, cr), cr)
        for w in workers:
            cm = process_cluster(w) if processes else local_cluster(w)
            with cm as client:
                with dask_client(client):
                    c = measure_constants(client, k, d, covariance_type)
                    c_row, params = c.c_row, estep_params(k, d, covariance_type, "float64")[0]
                    for n in chunk_counts:
                        path, cr = stores[n]
                        per = auto_chunks_per_task(d, "float64", n, cr)
                        Xz = da.from_zarr(path)  # what the fit reads, read as its tasks read it
                        c.read_rate, c.c_row = measure_data(client, Xz, None, per, params, c_row, c.c_task)
                        c.read_span = per
                        pred = predict(c, rows, cr)
                        meas = fit_seconds(Xz, k, covariance_type, iters, client)
                        row = {"workers": w, "chunks": n, **_compared(pred, meas)}
                        row["detail"] = {  # the terms, the constants and the measured breakdown
                            "terms": pred["terms"],
                            "constants": c.as_dict(),
                            "measured": {k: v for k, v in meas.items() if k.startswith("t_")},
                        }
                        log(row)
                        out.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def dask_client(client):
    """Make ``client`` dask's scheduler for the block (``as_current`` plus the global default)."""
    with client.as_current():
        import dask

        with dask.config.set(scheduler=client):
            yield client


def markdown(rows: list[dict]) -> str:
    """The validation table."""
    head = "| workers | chunks | chunks/task | tasks | predicted s/iter | measured s/iter | predicted/measured | non-compute share | dominant | load (1 min) |"
    lines = [head, "|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['chunks']:,} | {r['chunks_per_task']} | {r['tasks']} | {r['predicted']:.3f} | "
            f"{r['measured']:.3f} | {r['ratio']:.2f} | {100 * r['overhead_share']:.0f}% | {r['dominant']} | "
            f"{r['load']:.1f} |"
        )
    return "\n".join(lines)


__all__ = ["fit_seconds", "local_cluster", "markdown", "process_cluster", "validate", "write_store"]


# --------------------------------------------------------------------------
# the scaling curves (README "How it scales")
# --------------------------------------------------------------------------
def _case(
    client, X, chunk_rows: int, k: int, covariance_type: str, tmp: str, per=None, iters: int = 4
) -> dict:
    """One measured and predicted iteration on a Zarr copy of ``X`` in chunks of ``chunk_rows``."""
    import dask.array as da

    n, d = X.shape
    path = write_store(os.path.join(tmp, f"x{n}-{d}-{chunk_rows}.zarr"), X, chunk_rows)
    c = measure_constants(client, k, d, covariance_type)
    n_chunks = -(-n // chunk_rows)
    span = per or auto_chunks_per_task(d, "float64", n_chunks, chunk_rows)
    Xz = da.from_zarr(path)
    params = estep_params(k, d, covariance_type, "float64")[0]
    c.read_rate, c.c_row = measure_data(client, Xz, None, span, params, c.c_row, c.c_task)
    c.read_span = span
    pred = predict(c, n, chunk_rows, chunks_per_task=per)
    meas = fit_seconds(Xz, k, covariance_type, iters, client, chunks_per_task=per)
    shutil.rmtree(path, ignore_errors=True)
    return {
        "N": n,
        "D": d,
        "K": k,
        "cov": covariance_type,
        "workers": c.workers,
        "chunks": n_chunks,
        **_compared(pred, meas),
        "scheduler_share": pred["terms"]["scheduler"] / pred["seconds"],
    }


def _compared(pred: dict, meas: dict) -> dict:
    """One row's prediction against its measurement (and the load when it was measured)."""
    return {
        "chunks_per_task": pred["chunks_per_task"],
        "tasks": pred["tasks"],
        "predicted": pred["seconds"],
        "measured": meas["seconds"],
        "ratio": pred["seconds"] / meas["seconds"],
        "overhead_share": meas.get("overhead_share", math.nan),
        "measured_scheduler_share": meas.get("measured_scheduler_share", math.nan),
        "dominant": pred["dominant"],
        "load": os.getloadavg()[0],
    }


def curves(log=print, quick: bool = False, ungrouped_max: int = 10_000, processes: bool = False) -> dict:
    """s/iter against chunks (grouped and one chunk per task), K and D on 2 workers, and the
    threaded scheduler against a distributed cluster at 500,000×16, K=16. ``processes``: the
    curves on ``dask scheduler``/``dask worker`` processes instead of a LocalCluster (the
    scheduler comparison, which runs both, is then left out)."""
    from daskgmm import GaussianMixture  # noqa: F401  (imported before the clusters start)

    out: dict = {"chunks": [], "K": [], "D": [], "schedulers": []}
    tmp = tempfile.mkdtemp(prefix="daskgmm-curves-")
    n = 100_000 if quick else 500_000
    try:
        _, means, _, _ = synthetic_params(16, 16, "full")
        X = synthetic_rows(n, means)
        with (process_cluster if processes else local_cluster)(2) as client:
            for chunks in (1, 10, 100, 1000, 10_000):
                for per in (None, 1):
                    if per == 1 and (chunks == 1 or chunks > ungrouped_max):
                        continue
                    row = _case(client, X, -(-n // chunks), 16, "full", tmp, per=per, iters=3 if per else 4)
                    row["grouping"] = "1 chunk per task" if per == 1 else "auto"
                    log(row)
                    out["chunks"].append(row)
            for k in (4, 16, 64, 256):
                _, mk, _, _ = synthetic_params(k, 16, "full")
                row = _case(client, synthetic_rows(100_000, mk), 1000, k, "full", tmp)
                log(row)
                out["K"].append(row)
            for d, ct in ((4, "full"), (16, "full"), (64, "full"), (64, "diag"), (256, "diag")):
                _, md, _, _ = synthetic_params(16, d, ct)
                row = _case(client, synthetic_rows(100_000, md), 1000, 16, ct, tmp)
                log(row)
                out["D"].append(row)
        if not processes:
            out["schedulers"] = scheduler_comparison(X, log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def scheduler_comparison(X, k: int = 16, log=print, iters: int = 8, rounds: int = 3) -> list[dict]:
    """The same in-memory fit on the threaded scheduler, a LocalCluster and scheduler/worker
    processes, each started with dask's default housekeeping intervals and with daskgmm's
    (:data:`daskgmm._placement.HOUSEKEEPING`), with each distributed iteration broken down
    (:func:`iteration_breakdown`).

    ``rounds`` rounds, each timing the threaded fit and then each cluster (a fresh one per round,
    in reverse order every other round);
    a row gives the medians over the rounds, its ratio the median of the rounds' ratios to the
    same round's threaded fit, and the range of those ratios (the machine's load moves them)."""
    setups = (
        ("LocalCluster, 2 workers x 1 thread, dask's defaults", local_cluster, False),
        ("the same with daskgmm's housekeeping (as daskgmm fit starts it)", local_cluster, True),
        ("dask scheduler + 2 dask workers, dask's defaults", process_cluster, False),
        ("the same with daskgmm's housekeeping in their environment", process_cluster, True),
    )
    runs: dict = {"threaded (2 threads)": []}
    for r in range(rounds):
        base = fit_seconds(X, k, "full", iters)["seconds"]
        runs["threaded (2 threads)"].append({"seconds": base, "ratio": 1.0, "load": os.getloadavg()[0]})
        for name, cm, housekeeping in setups if r % 2 == 0 else setups[::-1]:  # no order favoured
            saved = dict(os.environ)  # a nanny writes pre-spawn-environ into this process's environment
            try:
                with cm(2, housekeeping=housekeeping) as client:
                    m = fit_seconds(X, k, "full", iters, client, persist="auto")  # held on the workers
            finally:
                os.environ.clear()
                os.environ.update(saved)
            runs.setdefault(name, []).append({**m, "ratio": m["seconds"] / base, "load": os.getloadavg()[0]})
            log({"scheduler": name, **runs[name][-1]})
    rows = []
    for name, rs in runs.items():
        row = {"scheduler": name, "rounds": len(rs)}
        for key in ("seconds", "ratio", "t_start", "t_kernel", "t_idle", "t_end"):
            if all(key in r for r in rs):
                row[key] = float(np.median([r[key] for r in rs]))
        row["measured"] = row.pop("seconds")
        row["ratio_min"] = min(r["ratio"] for r in rs)
        row["ratio_max"] = max(r["ratio"] for r in rs)
        row["load_min"] = min(r["load"] for r in rs)
        row["load_max"] = max(r["load"] for r in rs)
        rows.append(row)
    return rows


def curves_markdown(out: dict) -> str:
    parts = []
    cols = (
        "grouping",
        "chunks",
        "chunks_per_task",
        "tasks",
        "predicted",
        "measured",
        "overhead_share",
        "measured_scheduler_share",
        "scheduler_share",
        "load",
    )
    for name, keys in (("chunks", cols), ("K", ("K",) + cols[2:]), ("D", ("D", "cov") + cols[2:])):
        rows = out.get(name) or []
        if not rows:
            continue
        parts.append(f"s/iter against {name} (2 workers x 1 thread, N={rows[0]['N']:,}):\n")
        parts.append("| " + " | ".join(keys) + " |")
        parts.append("|" + "--:|" * len(keys))
        for r in rows:
            cells = []
            for key in keys:
                v = r.get(key, "")
                if key in ("predicted", "measured"):
                    cells.append(f"{v:.3f}")
                elif key.endswith("share"):
                    cells.append(f"{100 * v:.0f}%")
                elif key == "load":
                    cells.append(f"{v:.1f}")
                else:
                    cells.append(f"{v:,}" if isinstance(v, int) else str(v))
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    if out.get("schedulers"):
        parts.append(schedulers_markdown(out["schedulers"]))
    return "\n".join(parts)


def schedulers_markdown(rows: list[dict]) -> str:
    parts = [
        "| scheduler | s/iter | vs threaded | range over rounds | start s | kernel s/thread | idle s | end s | load (1 min) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        cells = [f"{r[key]:.3f}" if key in r else "" for key in ("t_start", "t_kernel", "t_idle", "t_end")]
        spread = (
            "" if r["scheduler"].startswith("threaded") else f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}x"
        )
        parts.append(
            f"| {r['scheduler']} | {r['measured']:.3f} | {r['ratio']:.2f}x | {spread} | "
            + " | ".join(cells)
            + f" | {r['load_min']:.1f}–{r['load_max']:.1f} |"
        )
    return "\n".join(parts)


def idle_cpu(housekeeping: bool, seconds: float = 8.0, n_workers: int = 2) -> dict:
    """Percent of one core that an idle ``LocalCluster`` (client, scheduler and nannies in this
    process; ``n_workers`` worker processes) takes over ``seconds``, measured with psutil."""
    import psutil

    with local_cluster(n_workers, housekeeping=housekeeping) as client:
        time.sleep(2.0)  # past the start
        procs = [psutil.Process()] + [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(seconds)
        used = [100 * (sum(p.cpu_times()[:2]) - b) / seconds for p, b in zip(procs, before)]
    return {"driver": used[0], "workers": used[1:], "total": sum(used)}


def main() -> None:
    """``python -m daskgmm.benchmarks.scale_validate [ROUNDS]``: an idle cluster's CPU, then
    threaded against distributed."""
    from daskgmm import GaussianMixture  # noqa: F401  (imported before the clusters start)

    for housekeeping in (False, True):
        u = idle_cpu(housekeeping)
        print(
            f"idle LocalCluster, 2 workers, {'daskgmm' if housekeeping else 'dask'}'s housekeeping: "
            f"{u['total']:.1f}% of one core (driver {u['driver']:.1f}%, workers "
            + ", ".join(f"{w:.1f}%" for w in u["workers"])
            + f"), load {os.getloadavg()[0]:.1f}"
        )
    _, means, _, _ = synthetic_params(16, 16, "full")
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = scheduler_comparison(synthetic_rows(500_000, means), log=lambda r: None, rounds=rounds)
    print(schedulers_markdown(rows))


if __name__ == "__main__":
    main()
