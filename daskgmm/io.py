"""Files: model files without pickle, and the one safe Zarr writer.

A model file is one ``.npz`` archive of plain numeric arrays plus a ``metadata``
entry holding UTF-8 JSON bytes (estimator parameters, format version, the
daskgmm version that wrote it). It is read with ``numpy.load(allow_pickle=False)``,
so loading a file can never execute code. Files are written to a temporary name
in the same directory and renamed into place, so a crash never leaves a
half-written model under the final name.

Zarr outputs (:func:`write_zarr`, used by segmentation and ``daskgmm segment``) go to a
hidden temporary group next to the destination, get the attribute ``daskgmm_complete``
last, and are renamed into place; :func:`open_segmentation` refuses a store without that
stamp. Zarr chunks are the dask chunks of the arrays, so each task writes whole Zarr chunks
and no two tasks ever write the same chunk.

This module never imports the estimator: functions that build a model take its class.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("daskgmm")

FORMAT_NAME = "daskgmm-model"
FORMAT_VERSION = 1

_ARRAYS = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _version() -> str:
    return importlib.metadata.version("daskgmm")


def _json_param(value):
    """Estimator parameters as JSON; arrays become nested lists, RandomState becomes None."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.random.RandomState):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _from_json_param(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value.get("dtype", "<f8")))
    return value


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path, what: str = "output file") -> None:
    """Refuse, before any work, an output file ``path`` that cannot be written: a directory, or a
    path whose nearest existing directory is not writable (:class:`ValueError`)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"The {what} {path!r} is a directory; give a file name, e.g. {path}/model.npz.")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"The {what} {path!r} cannot be written: {parent!r} is not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"The {what} {path!r} cannot be written: no write permission in {parent!r}.")


# --------------------------------------------------------------------------
# ONE file container: model files and checkpoints
# --------------------------------------------------------------------------
def write_container(path, arrays: Mapping[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` plus ``meta`` (JSON, as the ``metadata`` entry) as one ``.npz``, atomically."""
    payload = dict(arrays)
    payload["metadata"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, **payload))


def read_container(
    path, format_name: str, format_version: int, what: str, error: type = ValueError, remedy: str = ""
) -> tuple[dict, dict]:
    """``(arrays, metadata)`` of a container written by :func:`write_container`; never unpickles.

    Refuses, with ``error`` and a message naming ``what`` the file should be (plus
    ``remedy``): a file that is not an ``.npz`` archive, holds pickled objects, has no
    readable metadata, is of another format, or of a newer format version than
    ``format_version`` (older versions are for the caller to judge).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise error(f"{path!r} cannot be read as a daskgmm {what} ({e}).{remedy}") from e
    if head != b"PK\x03\x04":
        raise error(f"{path!r} is not a daskgmm {what} (not an .npz archive).{remedy}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise error(
                f"{path!r} holds pickled objects or is not a numpy archive; daskgmm {what}s "
                f"never need pickle and are not loaded that way ({e}).{remedy}"
            ) from e
        raise error(f"{path!r} is not a readable daskgmm {what} ({e}).{remedy}") from e
    except Exception as e:
        raise error(f"{path!r} is not a readable daskgmm {what} ({type(e).__name__}: {e}).{remedy}") from e
    try:
        meta = json.loads(bytes(data.pop("metadata")).decode("utf-8"))
        if not isinstance(meta, dict):
            raise TypeError(type(meta).__name__)
    except Exception as e:
        raise error(f"{path!r} is not a daskgmm {what}: it has no readable 'metadata' entry.{remedy}") from e
    if meta.get("format") != format_name:
        raise error(f"{path!r} is not a daskgmm {what} (format {meta.get('format')!r}).{remedy}")
    version = meta.get("format_version", -1)
    if not isinstance(version, int):
        raise error(
            f"{path!r} is not a daskgmm {what}: its format version {version!r} is not a number.{remedy}"
        )
    if version > format_version:
        raise error(
            f"{path!r} was written by daskgmm {meta.get('daskgmm_version')} in {what.split()[0]} format "
            f"{version}; this daskgmm ({_version()}) reads formats up to {format_version}. "
            "Upgrade daskgmm to use it."
        )
    return data, meta


def _float_array(value) -> np.ndarray:
    """A fitted parameter array: float32 stays float32 (a model fitted on float32 data), else float64."""
    value = np.asarray(value)
    return value.astype(np.float32 if value.dtype == np.float32 else np.float64)


def model_to_dict(model) -> tuple[dict, dict]:
    """Split a fitted model into (arrays, JSON-able metadata)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    arrays = {name: _float_array(getattr(model, name)) for name in (*_ARRAYS, "precisions_")}
    arrays["lower_bounds_"] = np.asarray(model.lower_bounds_, dtype=np.float64)
    arrays.update(model._extra_arrays() if hasattr(model, "_extra_arrays") else {})  # Bayesian mixtures
    params = {k: _json_param(v) for k, v in model.get_params().items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "daskgmm_version": _version(),
        "class": type(model).__name__,
        "params": params,
        "fitted": {
            "converged_": bool(model.converged_),
            "n_iter_": int(model.n_iter_),
            "lower_bound_": float(model.lower_bound_),
            "n_features_in_": int(model.n_features_in_),
            "history_": getattr(model, "history_", []),
        },
    }
    return arrays, meta


def _shapes(covariance_type: str, k: int, d: int) -> dict:
    cov = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
    return {"weights_": (k,), "means_": (k, d), "covariances_": cov, "precisions_cholesky_": cov}


def check_model_arrays(arrays: Mapping[str, Any], covariance_type: str, n_features: int) -> None:
    """Refuse (:class:`ValueError`) fitted arrays that no fit produces: wrong shapes, non-finite
    values, weights that are negative or do not sum to 1, precisions that are not positive definite."""
    k = len(np.asarray(arrays["weights_"]).reshape(-1))
    for name, shape in _shapes(covariance_type, k, n_features).items():
        a = np.asarray(arrays[name])
        if a.shape != shape:
            raise ValueError(
                f"{name} has shape {a.shape}; a {covariance_type!r} model of {k} components "
                f"and {n_features} features has {shape}."
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} holds NaN or infinite values.")
    w = np.asarray(arrays["weights_"], dtype=np.float64)
    tol = 1e-4 if np.asarray(arrays["weights_"]).dtype == np.float32 else 1e-8
    if np.any(w < 0) or abs(w.sum() - 1.0) > tol:
        raise ValueError(f"weights_ must be non-negative and sum to 1; they sum to {w.sum():.10g}.")
    pc = np.asarray(arrays["precisions_cholesky_"], dtype=np.float64)
    diag = np.diagonal(pc, axis1=-2, axis2=-1) if covariance_type in ("full", "tied") else pc
    if not np.all(diag > 0):
        raise ValueError(
            "precisions_cholesky_ is not the Cholesky factor of positive-definite "
            "precisions (a diagonal entry is not positive)."
        )


def model_from_dict(arrays: dict, meta: dict, model_class: type):
    """A fitted ``model_class`` (:class:`~daskgmm.GaussianMixture`) from (arrays, metadata):
    the inverse of :func:`model_to_dict` (arrays may be numpy arrays or nested lists).

    Raises :class:`ValueError` for malformed metadata or arrays (:func:`check_model_arrays`)."""
    try:
        return _model_from_dict(arrays, meta, model_class)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        what = f"missing entry {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"Malformed daskgmm model ({what}); the file is damaged or not a daskgmm model."
        ) from e


def _model_from_dict(arrays: dict, meta: dict, model_class: type):
    from daskgmm._gaussian import precisions_from_cholesky

    params = {k: _from_json_param(v) for k, v in meta["params"].items()}
    model = model_class(**params)
    fitted = meta["fitted"]
    check_model_arrays(arrays, model.covariance_type, int(fitted["n_features_in_"]))
    if len(np.asarray(arrays["weights_"])) != model.n_components:
        raise ValueError(
            f"The model has {len(arrays['weights_'])} weights but n_components={model.n_components}."
        )
    for name in _ARRAYS:
        setattr(model, name, _float_array(arrays[name]))
    if "precisions_" in arrays:  # saved since float32 attributes (computed in float64, then rounded)
        model.precisions_ = _float_array(arrays["precisions_"])
    else:
        model.precisions_ = precisions_from_cholesky(model.precisions_cholesky_, model.covariance_type)
    model.converged_ = bool(fitted["converged_"])
    model.n_iter_ = int(fitted["n_iter_"])
    model.lower_bound_ = float(fitted["lower_bound_"])
    model.n_features_in_ = int(fitted["n_features_in_"])
    model.history_ = list(fitted.get("history_", []))
    model.lower_bounds_ = np.asarray(arrays.get("lower_bounds_", []), dtype=np.float64).tolist()
    if hasattr(model, "_load_extra_arrays"):
        model._load_extra_arrays(arrays)
    return model


def save_model(model, path) -> None:
    """Write a fitted :class:`~daskgmm.GaussianMixture` to ``path`` (see module docs)."""
    arrays, meta = model_to_dict(model)
    write_container(path, arrays, meta)


def read_model(path) -> tuple[dict, dict]:
    """The (arrays, metadata) of a model file written by :func:`save_model` (never unpickles).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a daskgmm model, or was written in a newer model format
        than this daskgmm reads.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}. Check the path given to save().")
    return read_container(path, FORMAT_NAME, FORMAT_VERSION, "model file")


# --------------------------------------------------------------------------
# Zarr output: temporary group, completion stamp, rename
# --------------------------------------------------------------------------
COMPLETE_ATTR = "daskgmm_complete"


def model_json(model) -> dict:
    """The fitted model as JSON-able data (parameters and arrays; no pickle)."""
    arrays, meta = model_to_dict(model)
    meta["arrays"] = {k: np.asarray(v).tolist() for k, v in arrays.items()}
    return meta


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def model_from_json(meta: dict, model_class: type):
    """Inverse of :func:`model_json`: a fitted ``model_class``."""
    model = model_from_dict(meta["arrays"], meta, model_class)
    model.history_ = [
        {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in entry.items()}
        if isinstance(entry, dict)
        else entry
        for entry in model.history_
    ]
    return model


def _jsonable(value):
    """Strict JSON: numpy scalars as Python numbers; NaN and infinities as the strings "NaN",
    "Infinity" and "-Infinity" (as Zarr writes such fill values), at any depth."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _regular_chunks(chunks: tuple) -> tuple:
    """Zarr chunk shape for dask ``chunks``, or ``()`` if they are not regular."""
    shape = []
    for cs in chunks:
        first = cs[0]
        if any(c != first for c in cs[:-1]) or cs[-1] > first:
            return ()
        shape.append(int(first))
    return tuple(shape)


def write_zarr(
    path,
    arrays: Mapping[str, Any],
    *,
    dims: Mapping[str, Sequence[str]],
    model=None,
    attrs: Mapping[str, Any] | None = None,
    source: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write lazy ``arrays`` to a new Zarr group at ``path`` without ever leaving a store that
    looks complete after a failure.

    The group is written under a hidden temporary name in the same directory
    (``.NAME.partial-<id>``), the attribute ``daskgmm_complete`` is set last, and the group
    is renamed to ``path``. A failure removes the temporary group; a killed process leaves
    only the hidden temporary name, which :func:`open_segmentation` refuses. With
    ``overwrite``, an existing ``path`` is replaced only once the new store is complete.

    Parameters
    ----------
    path : str or path-like
    arrays : mapping of name to dask array
        Written with their dask chunks as Zarr chunks (irregular chunks are made regular
        first), so each task writes whole Zarr chunks. Integer arrays get fill value -1,
        float arrays NaN.
    dims : mapping of name to dimension names
    model : fitted GaussianMixture, optional
        Stored as JSON in the attribute ``model`` (read back by :func:`open_segmentation`).
    attrs : mapping, optional
        More group attributes. Written as strict JSON: numpy scalars become numbers and
        non-finite floats the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (a NaN
        ``nodata`` is read back as ``"NaN"``).
    source : str, optional
        Path of the input: refused as ``path``, and stored in the attribute ``source``.
    overwrite : bool, default=False

    Returns
    -------
    str
        The absolute path written.
    """
    import dask.array as da
    import zarr

    from daskgmm._progress import compute

    path = os.path.abspath(os.fspath(path))
    check_output(path, source=source, overwrite=overwrite)
    parent, base = os.path.split(path.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}.partial-{uuid.uuid4().hex[:12]}")
    try:
        group = zarr.open_group(tmp, mode="w")
        sources, targets = [], []
        for name, arr in arrays.items():
            chunks = _regular_chunks(arr.chunks)
            if not chunks:
                # irregular dask chunks cannot map one-to-one onto Zarr chunks: make them regular
                regular = tuple(max(cs) for cs in arr.chunks)
                arr = arr.rechunk(regular)
                chunks = regular
                logger.info("output %s rechunked to regular chunks %s for Zarr", name, regular)
            target = group.create_array(
                name,
                shape=arr.shape,
                chunks=chunks,
                dtype=arr.dtype,
                fill_value=-1 if arr.dtype.kind in "iu" else np.nan,
                dimension_names=list(dims[name]),
                config={"write_empty_chunks": True},  # every chunk stored: none reads as missing
            )
            sources.append(arr)
            targets.append(target)
        t0 = time.perf_counter()
        compute(da.store(sources, targets, lock=False, compute=False))  # a progress bar on a terminal
        logger.info("wrote %s in %.1fs", list(arrays), time.perf_counter() - t0)
        meta = {"daskgmm_version": _version(), "outputs": list(arrays), "source": source}
        if model is not None:
            meta["model"] = model_json(model)
        meta.update(attrs or {})
        group.attrs.update(_jsonable(meta))
        group.attrs[COMPLETE_ATTR] = True  # last: the store is complete from here on
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _place(tmp, path, source=source, overwrite=overwrite)
    return path


def describe_path(path: str) -> str:
    """What is at ``path``, in words, for an error message."""
    if os.path.islink(path):
        return "a symbolic link"
    if os.path.isfile(path):
        return f"a file of {os.path.getsize(path):,} bytes"
    if not os.path.isdir(path):
        return "not a file or directory"
    if is_complete_output(path):
        return "a complete daskgmm output"
    n = len(os.listdir(path))
    if os.path.exists(os.path.join(path, "zarr.json")) or os.path.exists(os.path.join(path, ".zgroup")):
        return f"a Zarr store that is not a complete daskgmm output (no {COMPLETE_ATTR!r} stamp)"
    return f"a directory with {n} entr{'y' if n == 1 else 'ies'} that is not a daskgmm output"


def is_complete_output(path: str) -> bool:
    """Whether ``path`` is a Zarr group written by :func:`write_zarr` to completion (its stamp)."""
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf-8") as f:
            meta = json.load(f)
        return meta.get("node_type") == "group" and meta.get("attributes", {}).get(COMPLETE_ATTR) is True
    except (OSError, ValueError, AttributeError):
        return False


def _inside(inner: str, outer: str) -> bool:
    inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return inner == outer or os.path.commonpath([inner, outer]) == outer


def check_output(path, *, source: str | None = None, overwrite: bool = False) -> None:
    """Refuse an output ``path`` that :func:`write_zarr` must not write or replace.

    ``path`` may not be, or contain, the input ``source``. An existing ``path`` is refused
    without ``overwrite`` (:class:`FileExistsError`), and with it unless it is a complete
    daskgmm output (:class:`ValueError` saying what ``path`` is). Call it before a long fit.
    """
    path = os.path.abspath(os.fspath(path))
    if source and (_inside(source, path) or _inside(path, source)):
        what = (
            "the input image itself"
            if _inside(path, source) and _inside(source, path)
            else "a directory holding the input image"
            if _inside(source, path)
            else "inside the input image"
        )
        raise ValueError(f"The output path {path!r} is {what} ({source!r}); choose another output path.")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(
            f"{path!r} already exists; choose another output or pass overwrite=True (--overwrite). "
            f"It is {describe_path(path)}."
        )
    if os.path.islink(path) or not is_complete_output(path):
        raise ValueError(
            f"{path!r} is {describe_path(path)}; overwrite=True (--overwrite) replaces only a complete "
            "daskgmm output. Choose another output path, or remove it yourself."
        )


def _place(tmp: str, path: str, *, source: str | None, overwrite: bool) -> None:
    """Move the complete group ``tmp`` to ``path``: atomic no-replace, or a checked replace."""
    parent, base = os.path.split(path.rstrip(os.sep))
    if not (overwrite and os.path.lexists(path)):
        try:
            os.mkdir(path)  # atomic reservation: fails if anything appeared at path meanwhile
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(
                f"{path!r} appeared while this output was being written ({describe_path(path)}, "
                "another run?); it was left as it is and this output was discarded."
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, path)  # onto our own empty directory
        return
    try:
        check_output(path, source=source, overwrite=True)  # again, just before the swap
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:12]}")
    os.rename(path, trash)
    try:
        os.rename(tmp, path)
    except BaseException as e:
        try:
            os.rename(trash, path)
        except OSError:
            raise OSError(
                f"Replacing {path!r} failed ({e}): the previous output is at {trash!r} and the new "
                f"one at {tmp!r}; move either to {path!r}."
            ) from e
        raise OSError(
            f"Replacing {path!r} failed ({e}); the previous output is back in place and the new "
            f"one is at {tmp!r}."
        ) from e
    shutil.rmtree(trash, ignore_errors=True)


def open_segmentation(path, model_class: type | None = None) -> dict:
    """Open a store written by :func:`write_zarr` (segmentation, ``daskgmm segment``).

    Returns ``{"labels": dask array, ... (the arrays written), "model": model_class instance
    (when the store holds a model and ``model_class`` is given), "attrs": dict}``. Refuses a
    store that lacks the completion stamp (an interrupted write).
    """
    import dask.array as da
    import zarr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No segmentation at {path!r}.")
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    if not attrs.get(COMPLETE_ATTR):
        raise ValueError(
            f"{path!r} is not a complete daskgmm segmentation (no '{COMPLETE_ATTR}' stamp): its "
            "write was interrupted or it was not written by daskgmm. Run the segmentation again."
        )
    out: dict[str, Any] = {name: da.from_zarr(group[name]) for name in attrs.get("outputs", ["labels"])}
    if model_class is not None and "model" in attrs:
        cls = model_class if isinstance(model_class, type) else model_class(attrs["model"])  # by its meta
        out["model"] = model_from_json(attrs["model"], cls)
    out["attrs"] = attrs
    return out


def check_replaceable(path: str, overwrite: bool, stamp: str) -> None:
    """Refuse to write over ``path`` unless it is new, or ``overwrite`` and it is a Zarr array
    carrying the attribute ``stamp`` (one this package wrote): never any other file or store."""
    if not os.path.exists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path!r} already exists; pass overwrite=True.")
    import zarr

    try:
        ours = stamp in zarr.open_array(path, mode="r").attrs
    except Exception:  # not a Zarr array: a directory, a group, a file
        ours = False
    if not ours:
        raise FileExistsError(f"{path!r} exists and was not written by daskgmm ({stamp!r}): not replaced.")
