"""The one safe Zarr writer (segmentation outputs, ``daskgmm segment``) and its readers.

A store is complete when its group carries the attribute ``daskgmm_complete``, written after
every array; every reader (:func:`open_segmentation`, :func:`check_output`, the CLI) refuses a
store without it. How the stamp comes last depends on where the store lives:

* **local disk**: the group is written under a hidden temporary name next to the destination
  (``.NAME.partial-<id>``), stamped, and renamed into place (a checked swap with
  ``overwrite``): the final name only ever holds a complete output.
* **object stores** (any URL, :mod:`daskgmm._storage`; there is no rename): the group's
  metadata is written first with the attribute ``daskgmm_writing`` (the arrays this write may
  create); with ``overwrite`` this one put also removes the old stamp, then the old output's own
  arrays are deleted (only the names daskgmm recorded, never other keys); then every array is
  written under the final prefix, and the stamp is written last. A crash leaves an unstamped
  store that readers refuse ("incomplete daskgmm output, rerun"), and that a rerun with
  ``overwrite`` may replace; a prefix that is neither stamped nor marked as daskgmm's is never
  touched.

A failed write is cleaned up only once no chunk write of it is still running (dask raises at
the first error while other tasks run on): on the local schedulers each target is gated, and
on a cluster every chunk's future is awaited, so no chunk comes back after the cleanup.

Consolidated metadata (:func:`zarr.consolidate_metadata`) is written with the stamp, so
``xarray.open_zarr`` opens the output without a warning. Zarr chunks are the dask chunks of
the arrays, so each task writes whole Zarr chunks and no two tasks write the same chunk.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from daskgmm import _geo, _storage
from daskgmm.io import _version, model_from_json, model_json

logger = logging.getLogger("daskgmm")

COMPLETE_ATTR = "daskgmm_complete"
#: set first on an object store, removed by the stamp: the arrays a write in progress may create
WRITING_ATTR = "daskgmm_writing"
INCOMPLETE = "an incomplete daskgmm output (its write was interrupted)"
RERUN = "rerun the command with --overwrite (overwrite=True) to replace it"


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


def _fill_group(group, arrays, dims, coords, array_attrs) -> tuple[list, list]:
    """Create the output arrays (to be stored by dask) and write the coordinates (small, numpy)."""
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
            attributes=_jsonable(dict((array_attrs or {}).get(name, {}))),
            config={"write_empty_chunks": True},  # every chunk stored: none reads as missing
        )
        sources.append(arr)
        targets.append(target)
    for name, (cdims, values, _) in (coords or {}).items():
        if len(cdims) != np.ndim(values):
            raise ValueError(f"coordinate {name!r} has dims {cdims} but {np.ndim(values)} dimension(s).")
    # in xarray's layout (text as Zarr variable-length strings, as xarray writes it)
    _geo.write_coords(group, {n: (d, v, _jsonable(dict(a or {}))) for n, (d, v, a) in (coords or {}).items()})
    return sources, targets


def _finish(group, meta: dict) -> None:
    """The commit: attributes with the stamp (one metadata write), then consolidated metadata
    (which repeats the stamp: ``xarray.open_zarr`` reads the store without a warning)."""
    group.attrs.put(_jsonable({**meta, COMPLETE_ATTR: True}))  # also drops WRITING_ATTR
    _geo.consolidate(group)


def write_zarr(
    path,
    arrays: Mapping[str, Any],
    *,
    dims: Mapping[str, Sequence[str]],
    model=None,
    attrs: Mapping[str, Any] | None = None,
    source: str | None = None,
    overwrite: bool = False,
    coords: Mapping[str, tuple] | None = None,
    array_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Write lazy ``arrays`` to a new Zarr group at ``path`` (a local path or a URL) without ever
    leaving a store that looks complete after a failure (module docs: how, per store type).

    Parameters
    ----------
    path : str or path-like
        A local path, or a URL (``s3://bucket/out.zarr``) read with the storage options in
        use (:func:`daskgmm._storage.using`).
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
    coords : mapping of name to ``(dims, values, attrs)``, optional
        Extra (small, in-memory) arrays written in the group: ``dims`` a tuple of dimension
        names (``()`` for a scalar such as ``spatial_ref``), ``values`` a numpy array, ``attrs``
        a dict of its attributes. ``xarray.open_zarr`` reads one named like its dimension as
        that dimension's coordinate.
    array_attrs : mapping of output name to dict, optional
        Attributes of each output array (e.g. ``{"labels": {"grid_mapping": "spatial_ref"}}``).

    Returns
    -------
    str
        The path written: absolute for a local path, the URL as given for a URL.
    """
    path = _storage.normalise(path)
    check_output(path, source=source, overwrite=overwrite)
    for name in coords or {}:
        if name in arrays:
            raise ValueError(f"coordinate {name!r} has the name of an output array; rename it.")
    meta = {
        "daskgmm_version": _version(),
        "outputs": list(arrays),
        "arrays": list(arrays) + list(coords or {}),
        "source": source,
    }
    if model is not None:
        meta["model"] = model_json(model)
    meta.update(attrs or {})
    write = _write_url if _storage.is_url(path) else _write_local
    write(path, arrays, dims, coords, array_attrs, meta, source=source, overwrite=overwrite)
    return path


class _Gate:
    """A store target that :meth:`close` shuts: it waits for the writes in flight, and drops
    any write after it. A failed local compute raises at its first error while the other
    threads' tasks run on; without the gate, a chunk they write after the cleanup would
    bring the removed directory back. It pickles as its target (other processes write
    ungated; a cluster's writes are awaited in :func:`_store_all` instead)."""

    def __init__(self, target):
        self.target = target
        self._cond = threading.Condition()
        self._open = True
        self._writing = 0

    def __setitem__(self, key, value):
        with self._cond:
            if not self._open:
                return
            self._writing += 1
        try:
            self.target[key] = value
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._open = False
            self._cond.wait_for(lambda: self._writing == 0)

    def __reduce__(self):
        return _identity, (self.target,)


def _identity(value):
    return value


def _store_all(sources, targets, names) -> None:
    """Store every array; when it fails, return only once no write of it is still running,
    so the caller's cleanup is final."""
    import dask.array as da

    from daskgmm import _progress

    t0 = time.perf_counter()
    client = _progress._current_client()
    if client is None:
        gates = [_Gate(t) for t in targets]
        try:  # a progress bar on a terminal
            _progress.compute(da.store(sources, gates, lock=False, compute=False))
        except BaseException:
            for gate in gates:
                gate.close()
            raise
    else:
        _store_on_cluster(client, da.store(sources, targets, lock=False, compute=False))
    logger.info("wrote %s in %.1fs", list(names), time.perf_counter() - t0)


def _store_on_cluster(client, stored) -> None:
    """One future per stored chunk, all awaited (written or failed) before the first error is
    raised: a worker goes on with its task after another task failed."""
    import dask
    from distributed import futures_of, wait

    from daskgmm._progress import cluster_progress

    futures = futures_of(client.persist(list(stored) if isinstance(stored, tuple) else [stored]))
    if dask.config.get("daskgmm.progress", False):
        cluster_progress(futures)
    wait(futures)
    for future in futures:
        if future.status == "error":
            future.result()  # raises the task's error


def _write_local(path, arrays, dims, coords, array_attrs, meta, *, source, overwrite) -> None:
    import zarr

    parent, base = os.path.split(path.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}.partial-{uuid.uuid4().hex[:12]}")
    try:
        group = zarr.open_group(tmp, mode="w")
        sources, targets = _fill_group(group, arrays, dims, coords, array_attrs)
        _store_all(sources, targets, arrays)
        _finish(group, meta)  # last: the store is complete from here on
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _place(tmp, path, source=source, overwrite=overwrite)


def _write_url(path, arrays, dims, coords, array_attrs, meta, *, source, overwrite) -> None:
    import zarr

    store = _storage.zarr_store(path, read_only=False)
    fs, prefix = _storage.filesystem(path)
    old = _group_attrs(path)
    ours = set()
    if old is not None:  # check_output allowed it: a complete output or an interrupted daskgmm write
        ours = set(old.get("arrays") or old.get("outputs") or []) | set(
            (old.get(WRITING_ATTR) or {}).get("arrays", [])
        )
    marker = {
        WRITING_ATTR: {"arrays": sorted(ours | set(meta["arrays"])), "version": meta["daskgmm_version"]}
    }
    if old is None:
        group = zarr.create_group(store, attributes=marker)
    else:  # one put: the old stamp (and consolidated metadata) gone, the marker in place
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        group.attrs.put(marker)
        for name in sorted(ours):  # only the arrays daskgmm recorded as its own
            key = f"{prefix}/{name}"
            if fs.exists(key):
                fs.rm(key, recursive=True)
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
    try:
        sources, targets = _fill_group(group, arrays, dims, coords, array_attrs)
        _store_all(sources, targets, arrays)
    except Exception:
        if old is None:  # a new output that failed (not a killed process): remove what this run wrote
            for name in [*meta["arrays"], "zarr.json"]:
                key = f"{prefix}/{name}"
                if fs.exists(key):
                    fs.rm(key, recursive=True)
        raise  # a failed replace stays marked as an interrupted write: refused, rerun replaces it
    _finish(group, meta)


# --------------------------------------------------------------------------
# what is at a path
# --------------------------------------------------------------------------
def _group_attrs(path: str) -> dict | None:
    """The attributes of the Zarr group at ``path`` (local or URL), None if there is none."""
    try:
        if _storage.is_url(path):
            fs, p = _storage.filesystem(path)
            raw = fs.cat_file(f"{p}/zarr.json")
        else:
            with open(os.path.join(path, "zarr.json"), "rb") as f:
                raw = f.read()
        meta = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def is_complete_output(path: str) -> bool:
    """Whether ``path`` is a Zarr group written by :func:`write_zarr` to completion (its stamp)."""
    attrs = _group_attrs(path)
    return attrs is not None and attrs.get(COMPLETE_ATTR) is True


def _is_interrupted(path: str) -> bool:
    attrs = _group_attrs(path)
    return attrs is not None and COMPLETE_ATTR not in attrs and isinstance(attrs.get(WRITING_ATTR), dict)


def describe_path(path: str) -> str:
    """What is at ``path``, in words, for an error message."""
    if is_complete_output(path):
        return "a complete daskgmm output"
    if _is_interrupted(path):
        return INCOMPLETE
    if _storage.is_url(path):
        fs, p = _storage.filesystem(path)
        if fs.isfile(p):
            return f"an object of {fs.size(p):,} bytes"
        n = len(fs.find(p))
        if _group_attrs(path) is not None or fs.exists(f"{p}/zarr.json"):
            return f"a Zarr store that is not a complete daskgmm output (no {COMPLETE_ATTR!r} stamp)"
        return f"a prefix holding {n} object{'' if n == 1 else 's'} that is not a daskgmm output"
    if os.path.islink(path):
        return "a symbolic link"
    if os.path.isfile(path):
        return f"a file of {os.path.getsize(path):,} bytes"
    if not os.path.isdir(path):
        return "not a file or directory"
    n = len(os.listdir(path))
    if os.path.exists(os.path.join(path, "zarr.json")) or os.path.exists(os.path.join(path, ".zgroup")):
        return f"a Zarr store that is not a complete daskgmm output (no {COMPLETE_ATTR!r} stamp)"
    return f"a directory with {n} entr{'y' if n == 1 else 'ies'} that is not a daskgmm output"


def _inside(inner: str, outer: str) -> bool:
    if _storage.is_url(inner) or _storage.is_url(outer):
        inner, outer = inner.rstrip("/"), outer.rstrip("/")
        return inner == outer or inner.startswith(outer + "/")
    inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return inner == outer or os.path.commonpath([inner, outer]) == outer


def check_output(path, *, source: str | None = None, overwrite: bool = False) -> None:
    """Refuse an output ``path`` (local or URL) that :func:`write_zarr` must not write or replace.

    ``path`` may not be, or contain, the input ``source``. An existing ``path`` is refused
    without ``overwrite`` (:class:`FileExistsError`), and with it unless it is a complete
    daskgmm output, or on an object store an interrupted daskgmm write (:class:`ValueError`
    saying what ``path`` is). A URL daskgmm cannot write is refused (:class:`ImportError`,
    :class:`ValueError`: unknown protocol, missing bucket, no right to write, found by
    :func:`daskgmm._storage.probe_writable`). Call it before a long fit.
    """
    path = _storage.normalise(path)
    if source:
        source = _storage.normalise(source)
    if source and (_inside(source, path) or _inside(path, source)):
        what = (
            "the input image itself"
            if _inside(path, source) and _inside(source, path)
            else "a directory holding the input image"
            if _inside(source, path)
            else "inside the input image"
        )
        raise ValueError(f"The output path {path!r} is {what} ({source!r}); choose another output path.")
    if _storage.is_url(path):
        _storage.probe_writable(path, "output")  # a missing bucket, no right to write: now
        if not _storage.exists(path):
            return
    elif not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(
            f"{path!r} already exists; choose another output or pass overwrite=True (--overwrite). "
            f"It is {describe_path(path)}."
        )
    replaceable = is_complete_output(path) or (_storage.is_url(path) and _is_interrupted(path))
    if (not _storage.is_url(path) and os.path.islink(path)) or not replaceable:
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
    """Open a store written by :func:`write_zarr` (segmentation, ``daskgmm segment``), local or URL.

    Returns ``{"labels": dask array, ... (the arrays written), "model": model_class instance
    (when the store holds a model and ``model_class`` is given), "attrs": dict}``. Refuses a
    store that lacks the completion stamp (an interrupted write).
    """
    import dask.array as da
    import zarr

    path = os.fspath(path)
    url = _storage.is_url(path)
    if not _storage.exists(path):
        raise FileNotFoundError(f"No segmentation at {path!r}.")
    attrs = _group_attrs(path if url else os.path.abspath(path)) or {}
    if not attrs.get(COMPLETE_ATTR):
        if _is_interrupted(path):
            raise ValueError(f"{path!r} is {INCOMPLETE}, not a complete segmentation: {RERUN}.")
        raise ValueError(
            f"{path!r} is not a complete daskgmm segmentation (no '{COMPLETE_ATTR}' stamp): its "
            "write was interrupted or it was not written by daskgmm. Run the segmentation again."
        )
    group = zarr.open_group(_storage.zarr_store(path) if url else path, mode="r")
    attrs = dict(group.attrs)
    out: dict[str, Any] = {name: da.from_zarr(group[name]) for name in attrs.get("outputs", ["labels"])}
    if model_class is not None and "model" in attrs:
        cls = model_class if isinstance(model_class, type) else model_class(attrs["model"])  # by its meta
        out["model"] = model_from_json(attrs["model"], cls)
    out["attrs"] = attrs
    return out
