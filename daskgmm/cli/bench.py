"""``daskgmm bench``: the kernel benchmark (:mod:`daskgmm.benchmarks.kernel`) from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from daskgmm.benchmarks import CHUNK_COUNTS, FULL_SHAPES, QUICK_SHAPES


def _shape(text: str) -> tuple[int, int, int]:
    try:
        n, d, k = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D,K (three integers), got {text!r}") from None
    if min(n, d, k) < 1 or n < k:
        raise argparse.ArgumentTypeError(f"need N >= K >= 1 and D >= 1, got {text!r}")
    return n, d, k


def _counts(text: str) -> tuple[int, ...]:
    if text.strip() in ("", "none"):
        return ()
    try:
        out = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated chunk counts, got {text!r}") from None
    if min(out) < 1:
        raise argparse.ArgumentTypeError(f"chunk counts must be >= 1, got {text!r}")
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``daskgmm bench``."""
    p = subparsers.add_parser(
        "bench",
        help="time EM iterations of daskgmm against scikit-learn on the same data",
        description=(
            "Time full-covariance EM iterations of daskgmm and scikit-learn on the same generated data "
            "and starting parameters, in this process, and print a markdown table: seconds per "
            "iteration, speed-up, GFLOP/s and percent of the float64 GEMM peak measured in the same run, "
            "the kernel's limit (its flops at the GEMM rate plus its exponentials at the exp rate, both "
            "measured in the same run) and the fraction of it reached, "
            "peak memory, parameter agreement; plus float32, the other covariance types and the "
            "per-chunk overhead. --quick (default) takes about a minute, --full a few minutes."
        ),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"small shapes {QUICK_SHAPES} (default)")
    size.add_argument("--full", action="store_true", help=f"the issue's shapes {FULL_SHAPES}")
    p.add_argument(
        "--shape",
        type=_shape,
        action="append",
        metavar="N,D,K",
        help="a full-covariance case (repeatable; replaces the preset shapes)",
    )
    p.add_argument("--iters", type=int, default=3, help="EM iterations timed per case (default: %(default)s)")
    p.add_argument(
        "--chunks",
        type=_counts,
        default=CHUNK_COUNTS,
        metavar="C1,C2,...",
        help="chunk counts for the overhead rows (default 1,10,100,1000; 'none' to skip)",
    )
    p.add_argument(
        "--sklearn",
        choices=("auto", "all", "none"),
        default="auto",
        help="where scikit-learn runs: auto = all shapes but the preset D=64 one "
        "(about a minute per scikit-learn iteration there), all, none (default: %(default)s)",
    )
    p.add_argument("--no-other-types", action="store_true", help="skip the tied/diag/spherical rows")
    p.add_argument("--no-float32", action="store_true", help="skip the float32 rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data (default: %(default)s)")
    p.add_argument(
        "--gemm-size",
        type=int,
        default=2048,
        metavar="N",
        help="size of the float64 N x N matrix product that measures the GEMM peak (default: %(default)s)",
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the README-ready report (machine, table, derived figures, command)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="print the results as one line of JSON on standard output, instead of the table "
        "(as in fit and segment); with PATH, write them to PATH as well as printing the table",
    )
    p.add_argument(
        "--beyond",
        action="store_true",
        help="also run the select_model sweep vs separate fits and incremental vs full EM rows "
        "(daskgmm.benchmarks.beyond; a few minutes)",
    )
    p.add_argument(
        "--storage",
        action="store_true",
        help="only the streamed fit from a local moto S3 server against local disk "
        "(daskgmm.benchmarks.storage; needs the test extra's moto; about a minute)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark, time the phases of the fused kernel (design matrix, the two "
        "products, the log-sum-exp, ...) on one thread for each shape, float64 and float32, and print "
        "where the time goes (daskgmm.benchmarks.phases)",
    )
    p.set_defaults(func=run)
    return p


def _command(args) -> str:
    """The command line that reproduces this run (for the report)."""
    parts = ["daskgmm bench"] + (["--full"] if args.full else [])
    parts += [f"--shape {n},{d},{k}" for n, d, k in args.shape or ()]
    if args.iters != 3:
        parts.append(f"--iters {args.iters}")
    if tuple(args.chunks) != tuple(CHUNK_COUNTS):
        parts.append("--chunks " + (",".join(map(str, args.chunks)) or "none"))
    if args.sklearn != "auto":
        parts.append(f"--sklearn {args.sklearn}")
    parts += [
        flag
        for flag, on in (("--no-other-types", args.no_other_types), ("--no-float32", args.no_float32))
        if on
    ]
    return " ".join(parts + ["--markdown"])


def run(args) -> int:
    """Entry point of ``daskgmm bench``."""
    from daskgmm.benchmarks.kernel import format_report, format_table, rates_line, run_benchmark

    if args.iters < 1:
        raise SystemExit(f"error: --iters must be >= 1, got {args.iters}")
    if args.storage:  # object storage vs local disk, nothing else
        from daskgmm.benchmarks.storage import bench_storage, format_storage

        rows = bench_storage(iters=args.iters, seed=args.seed)
        print(json.dumps(rows) if args.json == "-" else format_storage(rows, 1_000_000, 8, 16, 2))
        return 0
    if args.gemm_size < 16:
        raise SystemExit(f"error: --gemm-size must be >= 16, got {args.gemm_size}")
    json_only = args.json == "-"
    preset = FULL_SHAPES if args.full else QUICK_SHAPES
    shapes = tuple(args.shape) if args.shape else preset
    if args.profile:
        from daskgmm.benchmarks.phases import format_profile, phase_profile

        dtypes = ("float64",) if args.no_float32 else ("float64", "float32")
        profiles = [phase_profile(n, d, k, dt, seed=args.seed) for n, d, k in shapes for dt in dtypes]
        print(format_profile(profiles))
        return 0
    if args.sklearn == "none":
        sk = []
    elif args.sklearn == "all" or args.shape:
        sk = None
    else:
        sk = [i for i, s in enumerate(shapes) if s[1] < 64]
    result = run_benchmark(
        shapes=shapes,
        n_iter=args.iters,
        chunk_counts=args.chunks,
        sklearn_shapes=sk,
        other_types=not args.no_other_types,
        float32=not args.no_float32,
        seed=args.seed,
        gemm_n=args.gemm_size,
        progress=lambda msg: print(f"# {msg}", flush=True, file=sys.stderr if json_only else sys.stdout),
    )
    command = _command(args)
    if json_only:
        pass  # printed at the end
    elif args.markdown:
        print(format_report(result, command))
    else:
        print(format_table(result))
        print(f"\n{rates_line(result)}")
        oh = result.get("chunk_overhead") or {}
        print(
            f"\nfloat64 GEMM peak {result['gemm_peak_gflops']:.0f} GFLOP/s; load {result['machine']['load']}"
        )
        if oh:
            print(
                f"per-chunk cost {1e3 * oh['per_chunk_seconds']:.2f} ms; default chunking loses "
                f"{100 * oh['default_overhead_fraction']:.1f}%"
            )
    if args.beyond:  # select_model sweep vs separate fits; incremental vs full EM
        from daskgmm.benchmarks.beyond import bench_beyond, format_beyond

        result["beyond"] = bench_beyond()
        if not json_only:
            print(format_beyond(result["beyond"]))
    if json_only:
        print(json.dumps(result, default=float))
    elif args.json:
        from daskgmm.io import atomic_write_bytes

        payload = json.dumps(result, indent=2, default=float).encode()
        atomic_write_bytes(args.json, lambda f: f.write(payload))
    return 0
