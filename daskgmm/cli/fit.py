"""``daskgmm fit``: fit a Gaussian mixture to a Zarr array or .npy file on a Dask cluster."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

from daskgmm.cli._cluster import add_cluster_arguments, connect
from daskgmm.cli._options import (
    UsageError,
    add_data_options,
    add_model_choice,
    add_model_options,
    estimator_class,
    missing_chunks_config,
)
from daskgmm.cli._options import model_kwargs as _model_kwargs

#: the estimator parameters ``daskgmm fit`` takes as options (types, choices, defaults and help
#: from :mod:`daskgmm._params`)
MODEL_OPTIONS = (
    "n_components",
    "covariance_type",
    "max_iter",
    "tol",
    "reg_covar",
    "n_init",
    "init_params",
    "random_state",
    "chunk_size",
    "persist",
    "checkpoint",
    "on_collapse",
    "nan_policy",
    "incremental",
)


#: a Bayesian mixture's component with at least this weight counts as kept
KEPT_WEIGHT = 0.01


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
class NpyFile:
    """A .npy file as an array-like that pickles as its path: each task reads its own rows
    (memory-mapped) where it runs, so the graph does not carry the data (a memory map given
    to ``da.from_array`` is sent whole, with distributed's 'Sending large graph' warning)."""

    def __init__(self, path: str):
        import numpy as np

        self.path = os.path.abspath(path)
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key):
        import numpy as np

        return np.array(np.load(self.path, mmap_mode="r", allow_pickle=False)[key])

    def __reduce__(self):
        return (type(self), (self.path,))

    def __dask_tokenize__(self):
        """The file's path, size and modification time: the dask array's name (and so a
        checkpoint's fingerprint) changes when the file does."""
        st = os.stat(self.path)
        return ("daskgmm.NpyFile", self.path, st.st_size, st.st_mtime_ns)


def open_data(path: str, array: str | None):
    """The Zarr array (or group member) itself, so that a checkpoint records its path, or a
    lazy dask array over a .npy file (:class:`NpyFile`)."""
    import dask.array as da

    from daskgmm._storage import is_url

    if is_url(path) and path.endswith(".npy"):
        raise SystemExit(f"error: {path!r}: a .npy file is read from local disk only; store it as Zarr")
    if not is_url(path) and not os.path.exists(path):
        raise SystemExit(f"error: {path!r} does not exist")
    if path.endswith(".npy"):
        return da.from_array(NpyFile(path), chunks=("auto", -1), asarray=True)
    from daskgmm._input import open_zarr_array

    try:
        return open_zarr_array(path, array)[0]
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------
def add_parser(sub) -> None:
    """Register ``daskgmm fit``."""
    p = sub.add_parser(
        "fit",
        help="fit a Gaussian mixture to a Zarr array or .npy file",
        description="Fit a Gaussian mixture to DATA on a Dask cluster and print the fitted weights and means "
        "(or --json). The model options are GaussianMixture's parameters, with its defaults.",
    )
    p.add_argument(
        "data", help="Zarr array (or group with --array) or .npy file of shape (n_samples, n_features)"
    )
    p.add_argument("--array", help="array name inside a Zarr group (default: DATA is an array)")
    model = p.add_argument_group("model", "GaussianMixture's parameters")
    add_model_options(model, MODEL_OPTIONS)
    add_model_choice(p, model)
    out = p.add_argument_group("output")
    out.add_argument("--save-model", metavar="PATH", help="write the fitted model here (.npz, no pickle)")
    out.add_argument(
        "--json",
        action="store_true",
        help="print the result as one line of JSON on standard output, instead of text",
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint PATH (a new fit if it does not exist yet)",
    )
    add_data_options(p, out)
    add_cluster_arguments(p)
    p.set_defaults(func=run_fit)


def model_kwargs(args) -> dict:
    return _model_kwargs(args, MODEL_OPTIONS)


def summary(model) -> dict:
    import numpy as np

    out = {
        "n_components": int(model.n_components),
        "covariance_type": model.covariance_type,
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "weights": np.round(model.weights_, 6).tolist(),
        "means": np.round(model.means_, 6).tolist(),
    }
    if hasattr(model, "weight_concentration_"):  # --model bayesian: the components it keeps
        out["model"] = "bayesian"
        out["components_kept"] = int((model.weights_ > KEPT_WEIGHT).sum())
    return out


def print_summary(model, out=None) -> None:
    import numpy as np

    out = out or sys.stdout  # looked up now: the stream at import time may be closed since

    print(
        f"converged: {model.converged_}  iterations: {model.n_iter_}  lower bound: {model.lower_bound_:.6f}",
        file=out,
    )
    if hasattr(model, "weight_concentration_"):
        kept = int((model.weights_ > KEPT_WEIGHT).sum())
        print(f"components kept (weight > {KEPT_WEIGHT}): {kept} of {model.n_components}", file=out)
    with np.printoptions(precision=4, suppress=True, linewidth=120):
        for k in np.argsort(-model.weights_):
            print(f"  component {k}: weight {model.weights_[k]:.4f}  mean {model.means_[k]}", file=out)


@missing_chunks_config
def run_fit(args) -> int:
    import dask
    from sklearn.exceptions import ConvergenceWarning

    from daskgmm._progress import is_interactive
    from daskgmm.checkpoint import CheckpointError

    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint PATH (the checkpoint of the fit to continue)")
    from daskgmm.io import check_writable

    try:  # before the fit: an output that cannot be written fails now, not after it
        for path, what in ((args.save_model, "--save-model file"), (args.checkpoint, "--checkpoint file")):
            if path:
                check_writable(path, what)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    cls, names = estimator_class(args, MODEL_OPTIONS)
    X = open_data(args.data, args.array)
    show = is_interactive() and not args.no_progress
    with connect(args) as client:
        if client.dashboard_link:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        model = cls(verbose=0, **_model_kwargs(args, names))
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # a command-line user gets a plain message below, not a Python warning
                warnings.simplefilter("ignore", ConvergenceWarning)
                # the engine draws one bar for the EM passes (a step per pass, all starts
                # together); the initialisation's passes get dask's bar (daskgmm._progress.compute)
                with dask.config.set({"daskgmm.progress": show}):
                    model.fit(X, resume=args.resume)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        seconds = time.perf_counter() - t0
    if not model.converged_ and args.max_iter > 0:
        print(
            f"warning: the fit did not converge in {model.n_iter_} iterations "
            f"(lower bound still changing by more than --tol {args.tol}); "
            "increase --max-iter or --tol, or try --n-init / another --init",
            file=sys.stderr,
        )
    if args.save_model:
        model.save(args.save_model)
    if args.json:
        print(json.dumps({**summary(model), "seconds": seconds}))
    else:
        print_summary(model)
        print(
            f"fitted in {seconds:.2f}s" + (f"; model saved to {args.save_model}" if args.save_model else "")
        )
    return 0
