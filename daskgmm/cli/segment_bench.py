"""``daskgmm segment-bench``: the raster scale run (:mod:`daskgmm.benchmarks.segmentation`)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    """Register ``daskgmm segment-bench``."""
    b = subparsers.add_parser(
        "segment-bench",
        help="scale run: generate a uint16 raster with known classes, segment it on a memory-limited "
        "local cluster (fit and predict+write timed apart, memory watched), check, delete",
    )
    b.add_argument("workdir", help="directory for the generated raster and the output (deleted afterwards)")
    b.add_argument("--height", type=int, default=20_000)
    b.add_argument("--width", type=int, default=20_000)
    b.add_argument("--bands", type=int, default=4)
    b.add_argument("--classes", type=int, default=5)
    b.add_argument("--chunk", type=int, default=2000, help="spatial chunk side of the generated Zarr raster")
    b.add_argument("--sample", type=float, default=0.01)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--memory-limit", default="3GiB", help="per worker")
    b.add_argument("--keep", action="store_true", help="keep the raster and the output")
    b.set_defaults(func=run)


def run(args) -> int:
    """``daskgmm segment-bench``: :func:`~daskgmm.benchmarks.segmentation.scale_run`, printed as JSON."""
    from daskgmm.benchmarks.segmentation import scale_run

    report = scale_run(
        args.workdir, height=args.height, width=args.width, bands=args.bands, classes=args.classes,
        chunk=args.chunk, sample=args.sample, workers=args.workers, memory_limit=args.memory_limit,
        keep=args.keep,
    )
    print(json.dumps(report, indent=1))
    return 0
