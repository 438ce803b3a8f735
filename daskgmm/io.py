"""Files: model files without pickle, and the one safe Zarr writer.

A model file is one ``.npz`` archive of plain numeric arrays plus a ``metadata``
entry holding UTF-8 JSON bytes (estimator parameters, format version, the
daskgmm version that wrote it). It is read with ``numpy.load(allow_pickle=False)``,
so loading a file can never execute code. A local file is written to a temporary name
in the same directory and renamed into place, so a crash never leaves a
half-written model under the final name; a URL (``s3://...``, :mod:`daskgmm._storage`) is
written as one object in one put, which an object store makes visible whole or not at all.

Zarr outputs (segmentation, ``daskgmm segment``) are written by :mod:`daskgmm._zarr_output`.

This module never imports the estimator: functions that build a model take its class.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from io import BytesIO
from typing import Any

import numpy as np

from daskgmm import _storage

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
    path whose nearest existing directory is not writable (:class:`ValueError`); a URL whose
    protocol is unknown (:class:`ValueError`) or whose package is missing (:class:`ImportError`)."""
    if _storage.is_url(path):
        _storage.check_writable_url(os.fspath(path), what)
        return
    path = _storage.local_path(path)
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
    if _storage.is_url(path):  # one object, one put: never seen half-written
        buffer = BytesIO()
        np.savez(buffer, **payload)
        _storage.write_bytes(os.fspath(path), buffer.getvalue())
        return
    atomic_write_bytes(_storage.local_path(path), lambda f: np.savez(f, **payload))


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
        source = _storage.as_file(path)  # a local path, or the object's bytes read in one get
        if isinstance(source, str):
            with open(source, "rb") as f:
                head = f.read(4)
        else:
            head = source.getvalue()[:4]
    except OSError as e:
        raise error(f"{path!r} cannot be read as a daskgmm {what} ({e}).{remedy}") from e
    if head != b"PK\x03\x04":
        raise error(f"{path!r} is not a daskgmm {what} (not an .npz archive).{remedy}")
    try:
        with np.load(source, allow_pickle=False) as z:
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
    if not _storage.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}. Check the path given to save().")
    return read_container(path, FORMAT_NAME, FORMAT_VERSION, "model file")


# --------------------------------------------------------------------------
# Models as JSON (the attribute ``model`` of a Zarr output, see daskgmm._zarr_output)
# --------------------------------------------------------------------------
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
