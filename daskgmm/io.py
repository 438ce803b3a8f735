"""Model files without pickle, and small Zarr helpers.

A model file is one ``.npz`` archive of plain numeric arrays plus a ``metadata``
entry holding UTF-8 JSON bytes (estimator parameters, format version, the
daskgmm version that wrote it). It is read with ``numpy.load(allow_pickle=False)``,
so loading a file can never execute code. Files are written to a temporary name
in the same directory and renamed into place, so a crash never leaves a
half-written model under the final name.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile

import numpy as np

FORMAT_NAME = "daskgmm-model"
FORMAT_VERSION = 1

_ARRAYS = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _version() -> str:
    return importlib.metadata.version("daskgmm")


def _json_param(value):
    """Estimator parameters as JSON; arrays become nested lists, RandomState becomes None."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist()}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.random.RandomState):
        return None
    return value


def _from_json_param(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.float64)
    return value


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_to_dict(model) -> tuple[dict, dict]:
    """Split a fitted model into (arrays, JSON-able metadata)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    arrays = {name: np.asarray(getattr(model, name), dtype=np.float64) for name in _ARRAYS}
    arrays["lower_bounds_"] = np.asarray(model.lower_bounds_, dtype=np.float64)
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


def model_from_dict(arrays: dict, meta: dict):
    """A fitted :class:`~daskgmm.GaussianMixture` from (arrays, metadata): the inverse of
    :func:`model_to_dict` (arrays may be numpy arrays or nested lists)."""
    from daskgmm._gaussian import precisions_from_cholesky
    from daskgmm._gaussian_mixture import GaussianMixture

    params = {k: _from_json_param(v) for k, v in meta["params"].items()}
    model = GaussianMixture(**params)
    for name in _ARRAYS:
        setattr(model, name, np.asarray(arrays[name], dtype=np.float64))
    model.precisions_ = precisions_from_cholesky(model.precisions_cholesky_, model.covariance_type)
    fitted = meta["fitted"]
    model.converged_ = fitted["converged_"]
    model.n_iter_ = fitted["n_iter_"]
    model.lower_bound_ = fitted["lower_bound_"]
    model.n_features_in_ = fitted["n_features_in_"]
    model.history_ = fitted.get("history_", [])
    model.lower_bounds_ = np.asarray(arrays.get("lower_bounds_", []), dtype=np.float64).tolist()
    return model


def save_model(model, path) -> None:
    """Write a fitted :class:`~daskgmm.GaussianMixture` to ``path`` (see module docs)."""
    arrays, meta = model_to_dict(model)
    payload = dict(arrays)
    payload["metadata"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, **payload))


def load(path):
    """Load a model written by :meth:`GaussianMixture.save` (never unpickles).

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
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise ValueError(f"{path!r} is not a daskgmm model file (not an .npz archive).")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as e:
        raise ValueError(
            f"{path!r} holds pickled objects or is not a numpy archive; daskgmm model files "
            f"never need pickle and are not loaded that way ({e})."
        ) from e
    except Exception as e:
        raise ValueError(f"{path!r} is not a daskgmm model file ({type(e).__name__}: {e}).") from e
    if "metadata" not in data:
        raise ValueError(f"{path!r} is not a daskgmm model file: it has no 'metadata' entry.")
    meta = json.loads(bytes(data["metadata"]).decode("utf-8"))
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not a daskgmm model file (format {meta.get('format')!r}).")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} was written by daskgmm {meta.get('daskgmm_version')} in model format "
            f"{meta['format_version']}; this daskgmm ({_version()}) reads formats up to "
            f"{FORMAT_VERSION}. Upgrade daskgmm to load it."
        )
    model = model_from_dict(data, meta)
    model.saved_with_version_ = meta.get("daskgmm_version")
    return model
