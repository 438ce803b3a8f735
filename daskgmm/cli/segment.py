"""``daskgmm segment``: segment a multi-band Zarr raster or GeoTIFF into per-pixel classes,
written to a Zarr group (:mod:`daskgmm.image` does the work).

A GeoTIFF (IMAGE ending in ``.tif``/``.tiff``) is read through rioxarray (the ``daskgmm[geo]``
extra): bands on the ``band`` axis, its own nodata value unless ``--nodata`` is given. Its
``x``/``y`` coordinates and CRS (``spatial_ref``) are written with the outputs, as are the
coordinates of a Zarr group written by xarray (``--array VARIABLE``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from daskgmm.cli._cluster import add_cluster_arguments, connect
from daskgmm.cli._options import (
    add_data_options,
    add_model_choice,
    add_model_options,
    estimator_class,
    int_at_least,
    missing_chunks_config,
    model_kwargs,
)

#: the estimator parameters ``daskgmm segment`` takes as options (from :mod:`daskgmm._params`)
MODEL_OPTIONS = ("covariance_type", "max_iter", "tol", "reg_covar", "n_init", "init_params", "on_collapse")

#: the component order rule, as :data:`daskgmm.image.ORDER_RULE` states it (kept here so that
#: building the parser does not import the image module)
ORDER_RULE = (
    "components sorted by their mean in the first band, ties broken by the next bands "
    "(numpy.lexsort of the means); label -1 marks nodata"
)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


#: ``--feature-axis`` not given: the last axis, or ``band`` for a GeoTIFF
AUTO_AXIS = "auto"


def _feature_axis(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        return text  # a dimension name (Zarr arrays with dimension names)


def add_parser(subparsers) -> None:
    """Register ``daskgmm segment``."""
    p = subparsers.add_parser(
        "segment",
        help="segment a multi-band Zarr raster or GeoTIFF into per-pixel classes, written to a Zarr group",
        description="Fit a Gaussian mixture on the valid pixels of IMAGE (or a --sample of them), "
        "label every pixel, and write OUT, a Zarr group with 'labels' (and the asked-for outputs), "
        "chunked like IMAGE, with IMAGE's coordinates and CRS when it has them (a GeoTIFF, a Zarr group "
        "written by xarray). " + ORDER_RULE + ".",
    )
    p.add_argument(
        "image",
        help="Zarr array (or group with --array) of shape (*spatial, bands), or a GeoTIFF (.tif, .tiff; "
        "needs the daskgmm[geo] extra)",
    )
    p.add_argument("out", help="output Zarr group (refused if it exists, unless --overwrite)")
    data = p.add_argument_group("image")
    data.add_argument("--array", help="array name inside a Zarr group (default: IMAGE is an array)")
    data.add_argument(
        "--feature-axis",
        type=_feature_axis,
        default=AUTO_AXIS,
        help="axis holding the bands: an integer, a Zarr dimension name, or 'none' for one band "
        "(default: -1, the last; 'band' for a GeoTIFF)",
    )
    data.add_argument(
        "--nodata",
        type=_number,
        default=None,
        help="pixels equal to this in any band are left out and labelled -1 (default: none; a "
        "GeoTIFF's own nodata value, or the _FillValue of a variable written by xarray)",
    )
    data.add_argument(
        "--sample",
        type=float,
        default=None,
        metavar="FRACTION",
        help="fit on this fraction of the valid pixels, e.g. 0.01 (default: all of them)",
    )
    data.add_argument(
        "--seed",
        type=int_at_least(0),
        default=None,
        help="seed of the pixel sample and the initialisation (default: none, a new draw each run)",
    )
    model = p.add_argument_group("model", "GaussianMixture's parameters")
    add_model_options(model, ("n_components",))
    add_model_options(model, MODEL_OPTIONS)
    add_model_choice(p, model)
    out = p.add_argument_group("output")
    out.add_argument(
        "--save-model", metavar="PATH", help="also write the fitted model here (.npz, no pickle)"
    )
    out.add_argument(
        "--probabilities", action="store_true", help="also write per-pixel probabilities (float32, ..., K)"
    )
    out.add_argument(
        "--log-density", action="store_true", help="also write the per-pixel log-density (an anomaly map)"
    )
    out.add_argument("--confidence", action="store_true", help="also write the largest probability per pixel")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is a complete daskgmm output (only once the new one is complete); "
        "anything else at OUT is refused",
    )
    out.add_argument(
        "--json",
        action="store_true",
        help="print the result as one line of JSON on standard output (timings, pixels per second), "
        "instead of text",
    )
    add_data_options(p, out)
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def _open_image(path: str, array: str | None):
    from daskgmm._input import open_zarr_array

    try:
        return open_zarr_array(path, array)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e


def _open_input(args):
    """``(image, source, feature_axis, nodata)`` of IMAGE: a GeoTIFF through rioxarray (a
    DataArray with its coordinates and CRS), else the Zarr array."""
    from daskgmm import _geo

    axis, nodata = args.feature_axis, args.nodata
    if _geo.is_geotiff(args.image):
        if args.array:
            raise SystemExit("error: --array names an array of a Zarr group; a GeoTIFF holds one raster")
        from daskgmm._storage import is_url

        if is_url(args.image):
            raise SystemExit(
                f"error: {args.image!r}: a GeoTIFF is read from a local path; copy it to local disk, "
                "or write it to Zarr on the object store (xarray's to_zarr) and give that"
            )
        if not os.path.isfile(args.image):
            raise SystemExit(f"error: No GeoTIFF at {args.image!r}: the file does not exist.")
        try:
            raster = _geo.open_geotiff(args.image)
        except ImportError as e:
            raise SystemExit(f"error: {e}") from e
        except Exception as e:  # rasterio's errors for a file it cannot read
            raise SystemExit(f"error: {args.image!r} cannot be read as a GeoTIFF ({e}).") from e
        if nodata is None and raster.rio.nodata is not None:
            nodata = raster.rio.nodata.item()  # a numpy scalar of the raster's dtype
        return raster, os.path.abspath(args.image), "band" if axis == AUTO_AXIS else axis, nodata
    znode, source = _open_image(args.image, args.array)
    return znode, source, -1 if axis == AUTO_AXIS else axis, nodata


@missing_chunks_config
def run(args) -> int:
    """``daskgmm segment``: fit, then write OUT safely; prints a summary."""
    import dask
    import numpy as np

    from daskgmm import _geo, _storage
    from daskgmm._progress import is_interactive
    from daskgmm._zarr_output import check_output, describe_path
    from daskgmm.image import Segmentation, as_image, fit_image
    from daskgmm.io import check_writable

    cls, names = estimator_class(args, MODEL_OPTIONS)
    out = _storage.normalise(args.out)
    try:
        there = _storage.exists(out)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    if there and not args.overwrite:
        raise SystemExit(
            f"error: {args.out!r} already exists; pass --overwrite to replace it (it is {describe_path(out)})"
        )
    if args.sample is not None and not 0.0 < args.sample <= 1.0:
        raise SystemExit(f"error: --sample {args.sample} must be a fraction in (0, 1], e.g. 0.01")
    znode, source, feature_axis, nodata = _open_input(args)
    try:  # before the fit: OUT must not hold the input, and only a complete output is replaced
        check_output(out, source=_storage.normalise(args.image), overwrite=args.overwrite)
        if args.save_model:
            check_writable(args.save_model, "--save-model file")
    except (FileExistsError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    try:
        img = as_image(znode, feature_axis)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from e
    img.source = source
    fill = _geo.attach_group_coords(img)  # a Zarr array of a group written by xarray: its coordinates
    if nodata is None and fill is not None:
        nodata = fill  # the variable's own missing-value marker, as for a GeoTIFF
    n_pixels = int(np.prod(img.spatial_shape))
    show = is_interactive() and not args.no_progress
    # progress bars: the engine's for the EM passes, dask's for the initialisation and the writing
    with connect(args) as client, dask.config.set({"daskgmm.progress": show}):
        if client.dashboard_link:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            model = fit_image(
                img,
                args.n_components,
                nodata=nodata,
                sample=args.sample,
                random_state=args.seed,
                model_class=cls,
                **model_kwargs(args, names),
            )
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e
        fit_s = time.perf_counter() - t0
        seg = Segmentation(model=model, image=img, nodata=nodata)
        t1 = time.perf_counter()
        try:
            seg.to_zarr(
                out,
                probabilities=args.probabilities,
                log_density=args.log_density,
                confidence=args.confidence,
                overwrite=args.overwrite,
                attrs={"command": "daskgmm segment", "sample": args.sample, "seed": args.seed},
            )
        except (FileExistsError, ValueError) as e:
            raise SystemExit(f"error: {e}") from e
        write_s = time.perf_counter() - t1
    if args.save_model:
        model.save(args.save_model)
    summary = {
        "n_pixels": n_pixels,
        "n_pixels_fit": int(model.n_pixels_fit_),
        "n_bands": img.n_bands,
        "n_components": int(model.n_components),
        "nodata": nodata,
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "fit_seconds": fit_s,
        "predict_write_seconds": write_s,
        "fit_pixels_per_second": model.n_pixels_fit_ / fit_s if fit_s > 0 else None,
        "predict_pixels_per_second": n_pixels / write_s if write_s > 0 else None,
        "out": out,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"fitted {model.n_components} components on {model.n_pixels_fit_:,} pixels in {fit_s:.1f}s "
            f"(converged: {model.converged_}, {model.n_iter_} iterations); labelled {n_pixels:,} pixels "
            f"and wrote {out} in {write_s:.1f}s ({n_pixels / max(write_s, 1e-9):,.0f} pixels/s)"
        )
    return 0
