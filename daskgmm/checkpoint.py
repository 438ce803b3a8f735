"""Checkpoints of a running fit: resume after the driver dies or the job is pre-empted.

With ``GaussianMixture(checkpoint=PATH)`` (``daskgmm fit --checkpoint PATH``, or
``select_model(..., checkpoint=PATH)``) the engine writes the EM state after the
initialisation and after every pass over the data: every start's parameters,
iteration and lower-bound history (all starts of all candidates share the passes),
the re-seeding state (``on_collapse="reseed"``), incremental EM's per-chunk
statistics, the random state, the fit's settings and the data's fingerprint (shape, dtype, row
chunks, and what identifies the content: see :func:`data_fingerprint`). ``fit(X, resume=True)`` (``--resume``) continues from it, to the
same final result as an uninterrupted run: EM iterations are deterministic functions
of the parameters, which are stored exactly (float64).

The file is one ``.npz`` archive of numeric arrays plus a JSON ``metadata`` entry,
read with ``numpy.load(allow_pickle=False)``; on local disk it is written to a temporary name in
the same directory and renamed into place, and at a URL (``s3://...``) written as one object in
one put, so the file under ``PATH`` is always a complete checkpoint, never a torn one.

A checkpoint is refused, with a message saying what differs, when it belongs to
other data or was written with other settings (``n_components``, ``covariance_type``,
``tol``, ``reg_covar``, ``max_iter``, ``n_init``, ``init_params``, ``random_state``,
the initial parameters, ``sample_weight``, ...).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass

import numpy as np

from daskgmm import _storage
from daskgmm._bayesian import EXTRA_ARRAYS, VariationalParams
from daskgmm._engine import EMState
from daskgmm._gaussian import Params
from daskgmm._input import from_array_api
from daskgmm.io import check_writable, read_container, write_container

logger = logging.getLogger("daskgmm")

FORMAT_NAME = "daskgmm-checkpoint"
#: 2: every start of every candidate in one file (the one engine); 1 (start by start) is not read
FORMAT_VERSION = 2

_PARAM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this fit (other data, other settings, damaged)."""


def _digest(a) -> str | None:
    if a is None:
        return None
    a = np.ascontiguousarray(np.asarray(from_array_api(a), dtype=np.float64))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:32]


def _normalise_source(source: str | None) -> str | None:
    if not source:
        return None
    if source.startswith("file://"):
        source = source[len("file://") :]
    if "://" in source:
        return source
    return os.path.abspath(source)


def data_fingerprint(inp) -> dict:
    """Shape, dtype, row chunks, the path, and what identifies the data's content.

    ``inp`` is a :class:`daskgmm._input.Input`. Zarr input (a local store or a URL) is identified by its
    path, a hash of its metadata files (``zarr.json``/``.zarray``/``.zattrs``) and a hash of every
    chunk file's name, size and modification time (:func:`zarr_stamp`: file metadata only, no
    data is read). Every other input by dask's token of the array (its name): numpy arrays by
    their content, a ``.npy`` file read by ``daskgmm fit`` by its path, size and modification
    time, other dask arrays by their graph.
    """
    X = inp.data
    rows = tuple(int(c) for c in X.chunks[0])
    fp = {
        "shape": [int(s) for s in X.shape],
        "dtype": str(X.dtype),
        "n_chunks": len(rows),
        "largest_chunk_rows": max(rows) if rows else 0,
        "row_chunks_hash": hashlib.sha256(repr(rows).encode()).hexdigest()[:32],
        "path": _normalise_source(inp.source),
    }
    if inp.kind == "zarr":
        fp.update(zarr_stamp(fp["path"]))
    else:
        fp["content"] = X.name
    return fp


_ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def zarr_stamp(path: str | None) -> dict:
    """What identifies a local Zarr store's content without reading its chunks: a hash of its
    metadata files and a hash of every chunk file's name, size and modification time (a store
    rewritten in place changes the modification times). A remote store (a URL) the same way from
    one listing of its objects (:func:`daskgmm._storage.remote_zarr_stamp`: ETags or times)."""
    if path and _storage.is_url(path):
        return _storage.remote_zarr_stamp(path)
    if not path or "://" in path or not os.path.isdir(path):
        return {}
    meta, files, n = hashlib.sha256(), hashlib.sha256(), 0
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if name in _ZARR_METADATA:
                with open(full, "rb") as f:
                    meta.update(rel.encode() + b"\0" + f.read())
            else:
                st = os.stat(full)
                files.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                n += 1
    return {
        "zarr_metadata": meta.hexdigest()[:32],
        "zarr_chunk_files": f"{n} chunk files, {files.hexdigest()[:16]}",
    }


def fit_settings(model, sample_weight=None) -> dict:
    """The estimator settings a resumed fit must share with the checkpoint."""
    rs = model.random_state
    if rs is None or isinstance(rs, (int, np.integer)):
        rs = None if rs is None else int(rs)
    else:
        rs = "RandomState instance"
    return {
        "n_components": int(model.n_components),
        "covariance_type": model.covariance_type,
        "tol": float(model.tol),
        "reg_covar": float(model.reg_covar),
        "max_iter": int(model.max_iter),
        "n_init": int(model.n_init),
        "init_params": model.init_params,
        "random_state": rs,
        "init_sample_size": int(model.init_sample_size),
        "split_every": int(model.split_every),
        "weights_init": _digest(getattr(model, "weights_init", None)),
        "means_init": _digest(getattr(model, "means_init", None)),
        "precisions_init": _digest(getattr(model, "precisions_init", None)),
        "sample_weight": None if sample_weight is None else str(sample_weight.name),
        "on_collapse": getattr(model, "on_collapse", "raise"),
        "nan_policy": getattr(model, "nan_policy", "raise"),
        "incremental": None if getattr(model, "incremental", None) is None else int(model.incremental),
    }


@dataclass
class Resumed:
    """What a checkpoint holds: where the fit stands."""

    states: list  # every start of every candidate, in the engine's order
    rng_state: tuple | None
    hooks: list  # per start: None or {"counts": {...}, "init_events": [...]}
    incremental: dict | None  # incremental EM's cursor and per-chunk statistics
    finished: bool


_STAT_KEYS = ("n", "loglik", "nk", "u", "s2")


def _state_to(prefix: str, state: EMState, arrays: dict) -> dict:
    p = state.params
    for name in _PARAM_ARRAYS + (EXTRA_ARRAYS if isinstance(p, VariationalParams) else ()):
        value = getattr(p, name)
        if value is not None:
            arrays[f"{prefix}_{name}"] = np.asarray(value, dtype=np.float64)
    return {
        "n_iter": int(state.n_iter),
        "lower_bound": float(state.lower_bound),
        "lower_bounds": [float(v) for v in state.lower_bounds],
        "converged": bool(state.converged),
        "history": state.history,
    }


def _state_from(prefix: str, meta: dict, arrays: dict) -> EMState:
    values = {name: arrays.get(f"{prefix}_{name}") for name in _PARAM_ARRAYS}
    if f"{prefix}_{EXTRA_ARRAYS[0]}" in arrays:  # a variational posterior (daskgmm._bayesian)
        params = VariationalParams(**values, **{name: arrays[f"{prefix}_{name}"] for name in EXTRA_ARRAYS})
    else:
        params = Params(**values)
    return EMState(
        params=params,
        n_iter=int(meta["n_iter"]),
        lower_bound=float(meta["lower_bound"]),
        lower_bounds=[float(v) for v in meta["lower_bounds"]],
        converged=bool(meta["converged"]),
        history=list(meta["history"]),
    )


def _incremental_to(inc: dict, arrays: dict) -> dict:
    """Incremental EM's state: per-chunk statistics stacked into one array per key and start."""
    for i, stored in inc["stored"].items():
        for key in _STAT_KEYS:
            arrays[f"incr{i}_{key}"] = np.stack([np.asarray(s[key], dtype=np.float64) for s in stored])
        arrays[f"incr{i}_centers"] = np.stack([np.asarray(c, dtype=np.float64) for c in inc["centers"][i]])
    return {
        "chunks_per_iter": int(inc["chunks_per_iter"]),
        "n_chunks": int(inc["n_chunks"]),
        "cursor": int(inc["cursor"]),
        "refreshed": int(inc["refreshed"]),
        "starts": [int(i) for i in inc["stored"]],
        "sweep_start": {str(i): float(v) for i, v in inc["sweep_start"].items()},
    }


def _incremental_from(meta: dict, arrays: dict) -> dict:
    stored, centers = {}, {}
    for i in meta["starts"]:
        stacks = {key: arrays[f"incr{i}_{key}"] for key in _STAT_KEYS}
        n = stacks["n"].shape[0]
        stored[i] = [
            {key: (float(stacks[key][c]) if key in ("n", "loglik") else stacks[key][c]) for key in _STAT_KEYS}
            for c in range(n)
        ]
        centers[i] = list(arrays[f"incr{i}_centers"])
    return {
        "chunks_per_iter": int(meta["chunks_per_iter"]),
        "n_chunks": int(meta["n_chunks"]),
        "cursor": int(meta["cursor"]),
        "refreshed": int(meta["refreshed"]),
        "stored": stored,
        "centers": centers,
        "sweep_start": {int(i): float(v) for i, v in meta["sweep_start"].items()},
    }


_CONTENT_KEYS = {
    "content": "the data's content or origin differs (another array, or a file rewritten)",
    "zarr_metadata": "the Zarr array's metadata changed",
    "zarr_chunk_files": "the Zarr store's chunk files changed (rewritten, added or removed)",
}


def _describe_difference(key: str, then, now) -> str:
    hint = f" ({_CONTENT_KEYS[key]})" if key in _CONTENT_KEYS else ""
    return f"{key}={then!r} in the checkpoint, {now!r} now{hint}"


class Checkpoint:
    """Writes and reads the checkpoint of one fit at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint file (conventionally ``*.ckpt.npz``); its directory is created.
    settings : dict
        :func:`fit_settings` of the estimator.
    fingerprint : dict
        :func:`data_fingerprint` of the data.
    """

    def __init__(self, path, settings: dict, fingerprint: dict):
        self.path = os.fspath(path)
        self.settings = settings
        self.fingerprint = fingerprint
        self.n_saved = 0

    # -- writing --------------------------------------------------------
    def save(
        self,
        states: list,
        *,
        random_state=None,
        hooks: list | None = None,
        incremental: dict | None = None,
        finished: bool = False,
    ) -> None:
        """Atomically write where the fit stands (write to a temporary name, then rename).

        ``states`` are every start of every candidate (:class:`~daskgmm._engine.EMState`),
        ``hooks`` their re-seeding state, ``incremental`` incremental EM's state.
        """
        arrays: dict[str, np.ndarray] = {}
        rng = None
        if random_state is not None:
            name, keys, pos, has_gauss, cached = random_state.get_state()
            arrays["rng_keys"] = np.asarray(keys, dtype=np.uint32)
            rng = {
                "name": name,
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            }
        best = None
        first = [s for s in states if s.candidate == 0]
        if first:
            from daskgmm._engine import best_start

            best = best_start(first, int(self.settings.get("max_iter", 1)))
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "daskgmm_version": _version(),
            "settings": self.settings,
            "data": self.fingerprint,
            "finished": bool(finished),
            "rng": rng,
            "states": [_state_to(f"state{i}", s, arrays) for i, s in enumerate(states)],
            "hooks": hooks if hooks is not None else [None] * len(states),
            "incremental": None if incremental is None else _incremental_to(incremental, arrays),
            "best": None if best is None else _state_to("best", best, arrays),
        }
        write_container(self.path, arrays, meta)
        self.n_saved += 1
        logger.debug(
            "checkpoint %s: %d start(s), iterations %s", self.path, len(states), [s.n_iter for s in states]
        )

    # -- reading --------------------------------------------------------
    def load(self) -> Resumed | None:
        """The saved state, or None when there is no checkpoint at ``path`` yet.

        Raises
        ------
        CheckpointError
            The file is damaged or not a checkpoint, or it belongs to other data or
            other settings.
        """
        if not _storage.exists(self.path):
            logger.info("no checkpoint at %s yet: starting a new fit", self.path)
            return None
        meta, arrays = read_checkpoint(self.path)
        if not all(isinstance(meta.get(key), dict) for key in ("data", "settings")):
            raise CheckpointError(
                f"{self.path!r} is a damaged daskgmm checkpoint (its 'data' or 'settings' metadata is "
                "missing or malformed). Delete it, or fit without resume to start over."
            )
        self._check(meta)
        try:
            rng = meta["rng"]
            rng_state = None
            if rng is not None:
                rng_state = (
                    rng["name"],
                    arrays["rng_keys"],
                    rng["pos"],
                    rng["has_gauss"],
                    rng["cached_gaussian"],
                )
            states = [_state_from(f"state{i}", m, arrays) for i, m in enumerate(meta["states"])]
            incremental = (
                None if meta["incremental"] is None else _incremental_from(meta["incremental"], arrays)
            )
            resumed = Resumed(
                states=states,
                rng_state=rng_state,
                hooks=list(meta["hooks"]),
                incremental=incremental,
                finished=bool(meta["finished"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise CheckpointError(
                f"{self.path!r} is a damaged daskgmm checkpoint ({type(e).__name__}: {e}). "
                "Delete it, or fit without resume to start over."
            ) from e
        logger.info(
            "resuming from checkpoint %s: %d start(s) at iterations %s%s",
            self.path,
            len(states),
            [s.n_iter for s in states],
            " (finished fit)" if resumed.finished else "",
        )
        return resumed

    def _check(self, meta: dict) -> None:
        then, now = meta.get("data", {}), self.fingerprint
        diffs = [_describe_difference(k, then.get(k), now.get(k)) for k in now if then.get(k) != now.get(k)]
        if diffs:
            raise CheckpointError(
                f"Checkpoint {self.path!r} belongs to other data: " + "; ".join(diffs) + ". "
                "Resume with the data it was written for, or fit without resume to start over "
                "(the checkpoint is then overwritten)."
            )
        then, now = meta.get("settings", {}), self.settings
        keys = list(now) + [k for k in then if k not in now]
        diffs = [_describe_difference(k, then.get(k), now.get(k)) for k in keys if then.get(k) != now.get(k)]
        if diffs:
            raise CheckpointError(
                f"Checkpoint {self.path!r} was written with other settings: " + "; ".join(diffs) + ". "
                "Resume with the settings it was written with, or fit without resume to start over "
                "(the checkpoint is then overwritten)."
            )


def read_checkpoint(path) -> tuple[dict, dict]:
    """Read a checkpoint file into (metadata, arrays) without pickle; refuse anything else."""
    arrays, meta = read_container(
        path,
        FORMAT_NAME,
        FORMAT_VERSION,
        "checkpoint",
        CheckpointError,
        " Delete it, or fit without resume to start over.",
    )
    if meta["format_version"] < FORMAT_VERSION:
        raise CheckpointError(
            f"{os.fspath(path)!r} was written by daskgmm {meta.get('daskgmm_version')} in checkpoint format "
            f"{meta['format_version']}, which this daskgmm cannot continue: fit without resume to start over."
        )
    return meta, arrays


def open_checkpoint(path, settings: dict, inp, resume: bool) -> Checkpoint | None:
    """The checkpoint at ``path`` for a fit with ``settings`` on ``inp`` (None without a path).

    The engine reads it (``resume=True``) before any work and writes it as the fit goes. A
    ``path`` that cannot be written (a directory, a missing bucket, no right to write) is
    refused here, before the fit (:func:`daskgmm.io.check_writable`).
    """
    if path is None:
        if resume:
            raise ValueError(
                "resume=True needs a checkpoint to resume from: set checkpoint=PATH "
                "(the file written by an earlier fit with the same PATH)."
            )
        return None
    check_writable(path, "checkpoint")  # written after every iteration: refuse it now, before any work
    ckpt = Checkpoint(path, settings, data_fingerprint(inp))
    if not resume and _storage.exists(ckpt.path):
        logger.info("checkpoint %s exists; resume=False: starting over and overwriting it", ckpt.path)
    return ckpt


def _version() -> str:
    return importlib.metadata.version("daskgmm")


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Resumed",
    "data_fingerprint",
    "fit_settings",
    "open_checkpoint",
    "read_checkpoint",
]
