"""``daskgmm segment-bench``: the raster scale run (:mod:`daskgmm.benchmarks.segmentation`)."""

from __future__ import annotations

import json

from daskgmm.cli._cluster import add_local_cluster_arguments
from daskgmm.cli._options import int_at_least


def add_parser(subparsers) -> None:
    """Register ``daskgmm segment-bench``."""
    b = subparsers.add_parser(
        "segment-bench",
        help="scale run: generate a uint16 raster with known classes, segment it on a memory-limited "
        "local cluster (fit and predict+write timed apart, memory watched), check, delete",
        description="Generate a HEIGHT x WIDTH x BANDS uint16 raster with known classes in WORKDIR, segment it "
        "on a memory-limited local cluster (fit and predict+write timed apart, worker memory watched), check "
        "the labels against the true classes, delete both, and print the report as JSON. The default run "
        "writes a 3.2 GB raster (20,000 x 20,000 x 4 bands of 2 bytes, before compression) and takes minutes: try "
        "--height 2000 --width 2000 first.",
    )
    b.add_argument("workdir", help="directory for the generated raster and the output (deleted afterwards)")
    raster = b.add_argument_group("raster")
    raster.add_argument(
        "--height", type=int_at_least(1), default=20_000, help="rows of pixels (default: %(default)s)"
    )
    raster.add_argument(
        "--width", type=int_at_least(1), default=20_000, help="columns of pixels (default: %(default)s)"
    )
    raster.add_argument(
        "--bands", type=int_at_least(1), default=4, help="bands per pixel (default: %(default)s)"
    )
    raster.add_argument(
        "--classes",
        type=int_at_least(1),
        default=5,
        help="true classes, and the components fitted (default: %(default)s)",
    )
    raster.add_argument(
        "--chunk",
        type=int_at_least(1),
        default=2000,
        help="spatial chunk side of the generated Zarr raster (default: %(default)s)",
    )
    raster.add_argument(
        "--sample",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="fit on this fraction of the pixels (default: %(default)s)",
    )
    cluster = b.add_argument_group("local cluster")
    add_local_cluster_arguments(cluster, nworkers_default=2, memory_default="3GiB")
    b.add_argument("--keep", action="store_true", help="keep the raster and the output")
    b.add_argument("--json", action="store_true", help="the report is JSON on standard output in any case")
    b.set_defaults(func=run)


def run(args) -> int:
    """``daskgmm segment-bench``: :func:`~daskgmm.benchmarks.segmentation.scale_run`, printed as JSON."""
    import dask

    from daskgmm._progress import is_interactive
    from daskgmm.benchmarks.segmentation import scale_run

    if not 0.0 < args.sample <= 1.0:
        raise SystemExit(f"error: --sample {args.sample} must be a fraction in (0, 1], e.g. 0.01")
    # on a terminal: progress bars for the initialisation, the EM passes and the writing
    with dask.config.set({"daskgmm.progress": is_interactive()}):
        report = scale_run(
            args.workdir,
            height=args.height,
            width=args.width,
            bands=args.bands,
            classes=args.classes,
            chunk=args.chunk,
            sample=args.sample,
            workers=args.workers,
            memory_limit=args.memory_limit,
            keep=args.keep,
        )
    print(json.dumps(report, indent=1))
    return 0
