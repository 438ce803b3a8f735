"""``daskgmm plan``: measure the cost model's constants on a cluster and predict seconds per
EM iteration (:mod:`daskgmm.benchmarks.scale`); ``--validate`` compares predictions with
measured fits on local clusters (:mod:`daskgmm.benchmarks.scale_validate`)."""

from __future__ import annotations

import argparse
import json
import sys

from daskgmm._typing import COVARIANCE_TYPES
from daskgmm.cli._cluster import add_cluster_arguments, connect
from daskgmm.cli._options import UsageError, chunks_per_task, int_at_least


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return out


def add_parser(sub) -> None:
    """Register ``daskgmm plan``."""
    p = sub.add_parser(
        "plan",
        help="predict seconds per EM iteration on a cluster, with the dominant cost and what to change",
        description=(
            "Measure on the cluster (--scheduler, or a local cluster) the constants of a cost model of one "
            "EM iteration: kernel time per row per core for K, D and the covariance type, read throughput "
            "per thread from --data (the fit's own tasks: reads and kernel), the gap between consecutive "
            "tasks of a thread, scheduler cost per task, reduction latency per level, submit and gather, "
            "the M-step on this machine; then print the predicted seconds per iteration for --rows rows in "
            "chunks of --chunk-rows on --target-workers x --target-threads, term by term, with the dominant term "
            "and advice. --validate instead fits generated data on local clusters of 1-4 workers and "
            "10-10,000 chunks and prints predicted against measured seconds per iteration."
        ),
    )
    m = p.add_argument_group("model and data")
    m.add_argument(
        "--data", metavar="PATH", help="Zarr array to measure read throughput on (default: in memory)"
    )
    m.add_argument("--array", help="array name inside a Zarr group given as --data")
    m.add_argument("--rows", type=int_at_least(1), metavar="N", help="rows of the data (default: --data's)")
    m.add_argument(
        "--features", type=int_at_least(1), metavar="D", help="features (default: --data's, else 16)"
    )
    m.add_argument(
        "--components", type=int_at_least(1), default=16, metavar="K", help="K (default: %(default)s)"
    )
    m.add_argument(
        "--covariance-type", choices=list(COVARIANCE_TYPES), default="full", help="(default: full)"
    )
    m.add_argument("--dtype", choices=["float64", "float32"], help="(default: --data's, else float64)")
    m.add_argument("--split-every", type=int_at_least(2), default=16, metavar="N", help="(default: 16)")
    t = p.add_argument_group("target cluster and chunking")
    t.add_argument("--target-workers", type=int_at_least(1), metavar="W", help="workers (default: measured)")
    t.add_argument(
        "--target-threads", type=int_at_least(1), metavar="T", help="threads per worker (default: measured)"
    )
    t.add_argument(
        "--cores",
        type=int_at_least(1),
        metavar="N",
        help="cores the target's threads run on, when fewer than W x T (default: W x T; the measured c_row "
        "already includes the sharing of the measured cluster's cores)",
    )
    t.add_argument(
        "--chunk-rows", type=int_at_least(1), metavar="C", help="rows per chunk (default: --data's)"
    )
    t.add_argument(
        "--chunks-per-task",
        type=chunks_per_task,
        default="auto",
        metavar="N",
        help="storage chunks per task (default: auto, as a fit chooses)",
    )
    a = p.add_argument_group(
        "assumptions (replace a measured constant, to predict for a cluster other than the one measured)"
    )
    a.add_argument("--read-rate", type=float, metavar="MB/S", help="read throughput per worker, MB/s")
    a.add_argument(
        "--dispatch-gap", type=float, metavar="MS", help="gap between consecutive tasks of a thread, ms"
    )
    a.add_argument("--task-overhead", type=float, metavar="MS", help="scheduler cost per task, ms")
    a.add_argument("--level-latency", type=float, metavar="MS", help="latency of one reduction level, ms")
    a.add_argument("--fixed-latency", type=float, metavar="MS", help="submit and gather per iteration, ms")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one line of JSON instead of text")
    v = p.add_argument_group("validation (starts its own local clusters; the cluster options are ignored)")
    v.add_argument("--validate", action="store_true", help="predicted against measured s/iter on a grid")
    v.add_argument(
        "--validate-workers", type=_ints, default=(1, 2, 3, 4), metavar="W,...", help="(default: 1,2,3,4)"
    )
    v.add_argument(
        "--validate-chunks",
        type=_ints,
        default=(10, 100, 1000, 10_000),
        metavar="N,...",
        help="(default: 10..10000)",
    )
    v.add_argument(
        "--validate-rows", type=int_at_least(100), default=500_000, metavar="N", help="(default: 500000)"
    )
    v.add_argument(
        "--curves",
        action="store_true",
        help="measure s/iter against chunks (grouped and not), K, D, and the threaded scheduler against "
        "distributed ones (several minutes)",
    )
    v.add_argument(
        "--ungrouped-max",
        type=int_at_least(1),
        default=10_000,
        metavar="N",
        help="--curves: time one chunk per task only up to N chunks (default: %(default)s)",
    )
    v.add_argument(
        "--processes",
        action="store_true",
        help="validate (or measure the curves) on 'dask scheduler'/'dask worker' processes on 127.0.0.1 "
        "instead of LocalCluster",
    )
    add_cluster_arguments(p)
    p.set_defaults(func=run_plan)


def _open(args):
    """The data as a fit opens it (None without --data)."""
    if not args.data:
        return None
    from daskgmm.cli.fit import open_data

    return open_data(args.data, args.array)


def run_plan(args) -> int:
    from daskgmm.benchmarks import scale

    if args.validate:
        return _run_validate(args)
    if args.curves:
        return _run_curves(args)
    data = _open(args)
    shape = None if data is None else (data.shape, getattr(data, "chunks", None), str(data.dtype))
    rows = args.rows or (shape[0][0] if shape else None)
    if rows is None:
        raise UsageError("give --rows N (or --data PATH to take it from the data)")
    d = args.features or (shape[0][1] if shape else 16)
    dtype = args.dtype or ("float32" if shape and shape[2] == "float32" else "float64")
    chunk_rows = args.chunk_rows
    if chunk_rows is None and shape and shape[1] is not None:
        c = shape[1]
        chunk_rows = int(c[0]) if isinstance(c[0], int) else int(c[0][0])
    if chunk_rows is None:
        from daskgmm._input import default_row_chunk

        chunk_rows = default_row_chunk(rows, d, 8 if dtype == "float64" else 4)
    with connect(args) as client:
        w, t = scale.cluster_shape(client)
        n_chunks = -(-rows // chunk_rows)
        per = (
            args.chunks_per_task
            if args.chunks_per_task != "auto"
            else scale.auto_chunks_per_task(d, dtype, n_chunks, chunk_rows)
        )
        consts = scale.measure_constants(
            client,
            args.components,
            d,
            args.covariance_type,
            dtype,
            data=data,
            split_every=args.split_every,
            read_span=per,
        )
    if args.read_rate:
        consts.read_rate = args.read_rate * 1e6 / (args.target_threads or t)  # per thread
        consts.read_span = per
    for name, field in (
        ("dispatch_gap", "c_wave"),
        ("task_overhead", "c_sched"),
        ("level_latency", "c_level"),
        ("fixed_latency", "t_fixed"),
    ):
        if getattr(args, name) is not None:
            setattr(consts, field, getattr(args, name) / 1e3)
    pred = scale.predict(
        consts,
        rows,
        chunk_rows,
        args.target_workers,
        args.target_threads,
        per,
        args.cores,
    )
    if args.json:
        print(json.dumps({"constants": consts.as_dict(), "prediction": pred}))
    else:
        print(scale.format_prediction(consts, pred))
    return 0


def _run_validate(args) -> int:
    import logging
    import os

    from daskgmm.benchmarks import scale_validate

    logging.getLogger("distributed").setLevel(logging.ERROR)
    load0 = os.getloadavg()
    rows = scale_validate.validate(
        args.validate_workers,
        args.validate_chunks,
        args.validate_rows,
        args.features or 16,
        args.components,
        args.covariance_type,
        processes=args.processes,
        log=(lambda r: None) if args.json else (lambda r: print(r, file=sys.stderr)),
    )
    load1 = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "load_start": load0, "load_end": load1}))
    else:
        print(scale_validate.markdown(rows))
        print(f"\nload average (1, 5, 15 min) at the start: {load0}, at the end: {load1}")
    return 0


def _run_curves(args) -> int:
    import logging
    import os

    from daskgmm.benchmarks import scale_validate

    logging.getLogger("distributed").setLevel(logging.ERROR)
    load0 = os.getloadavg()
    out = scale_validate.curves(
        log=lambda r: print(r, file=sys.stderr),
        ungrouped_max=int(os.environ.get("DASKGMM_UNGROUPED_MAX", 10_000)),
        processes=args.processes,
    )
    load1 = os.getloadavg()
    if args.json:
        print(json.dumps({**out, "load_start": load0, "load_end": load1}))
    else:
        print(scale_validate.curves_markdown(out))
        print(f"\nload average (1, 5, 15 min) at the start: {load0}, at the end: {load1}")
    return 0
