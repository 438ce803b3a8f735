"""Where data live: local paths and URLs (``s3://``, ``gs://``, ``az://``, ``memory://`` ...).

Every path daskgmm takes (data, images, outputs, model files, checkpoints) goes through here.
A local path (or a ``file://`` URL) stays a local path: the local-disk code keeps its atomic
renames. Any other URL goes through `fsspec <https://filesystem-spec.readthedocs.io>`_ and
Zarr's :class:`~zarr.storage.FsspecStore`, with the storage options

* given to the public function (``storage_options=``, ``--storage-option KEY=VALUE``), and
* what fsspec and the storage library find by themselves: environment variables
  (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...), fsspec's
  configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/``), credential files.

daskgmm never holds credentials of its own. A public function sets the options for the duration
of the call with :func:`using`; the helpers below read them with :func:`current_options`. A Zarr
array opened here carries its filesystem (and so its options) to the workers when pickled.

A URL whose protocol fsspec does not know, or whose package is missing (``s3fs``, ``gcsfs``,
``adlfs``), is refused with what to install: never written as a local file named ``s3:/...``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from contextvars import ContextVar
from typing import Any

_OPTIONS: ContextVar[dict | None] = ContextVar("daskgmm_storage_options", default=None)

#: what to install for a protocol whose fsspec implementation is missing
INSTALL = {
    "s3": "pip install 'daskgmm[s3]' (s3fs)",
    "s3a": "pip install 'daskgmm[s3]' (s3fs)",
    "gs": "pip install gcsfs",
    "gcs": "pip install gcsfs",
    "az": "pip install adlfs",
    "abfs": "pip install adlfs",
    "abfss": "pip install adlfs",
    "adl": "pip install adlfs",
}

#: protocols whose keys need no parent directories (and where makedirs may create a bucket)
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


@contextlib.contextmanager
def using(storage_options: dict | None):
    """Use ``storage_options`` (merged over any already in use) for the paths of this call."""
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(
            f"storage_options must be a dict (fsspec's keyword arguments, e.g. "
            f'{{"anon": True}}), not {type(storage_options).__name__}.'
        )
    token = _OPTIONS.set({**(_OPTIONS.get() or {}), **(storage_options or {})})
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def current_options() -> dict:
    """The storage options in use (:func:`using`), empty by default."""
    return dict(_OPTIONS.get() or {})


def protocol(path) -> str | None:
    """The protocol of a URL (``"s3"``), ``None`` for a local path or ``file://`` URL."""
    if not isinstance(path, str):
        return None
    if "::" in path:  # fsspec chained URL, e.g. simplecache::s3://...
        return path.rsplit("::", 1)[-1].split("://", 1)[0] if "://" in path else None
    m = _URL.match(path)
    if m is None or m.group(1).lower() in ("file", "local"):
        return None
    return m.group(1).lower()


def is_url(path) -> bool:
    """Whether ``path`` is a URL of a non-local filesystem (not a local path, not ``file://``)."""
    return isinstance(path, (str, os.PathLike)) and protocol(os.fspath(path)) is not None


def local_path(path) -> str:
    """A local path as a plain absolute path (``file://`` removed)."""
    path = os.fspath(path)
    m = _URL.match(path)
    if m is not None and m.group(1).lower() in ("file", "local"):
        path = path[m.end() :]
    return os.path.abspath(path)


def normalise(path) -> str:
    """A URL as given (without a trailing slash), a local path absolute."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else local_path(path)


def check_protocol(url: str) -> None:
    """Refuse a URL that fsspec cannot handle here, saying what to install or what is wrong."""
    import fsspec

    proto = protocol(url)
    try:
        fsspec.get_filesystem_class(proto)
    except ImportError as e:
        hint = INSTALL.get(proto, f"the fsspec implementation of {proto!r}")
        raise ImportError(
            f"daskgmm cannot read or write {url!r}: the package for {proto}:// URLs is not installed "
            f"({e}). Install it: {hint}."
        ) from e
    except ValueError as e:
        raise ValueError(
            f"daskgmm cannot read or write {url!r}: fsspec knows no protocol {proto!r} ({e}). Give a "
            "local path, or a URL such as s3://bucket/key, gs://bucket/key, az://container/key."
        ) from e


def filesystem(url: str):
    """``(fs, path)``: the fsspec filesystem of ``url`` (with the options in use) and the path in it."""
    from fsspec.core import url_to_fs

    check_protocol(url)
    fs, path = url_to_fs(url, **current_options())
    # listings are cached per filesystem instance (s3fs, gcsfs): another process (a worker, a
    # second run) may have written since; what daskgmm checks here must be the store's state now
    fs.invalidate_cache()
    return fs, path


def zarr_store(url: str, read_only: bool = True):
    """Zarr's :class:`~zarr.storage.FsspecStore` of ``url`` (with the options in use)."""
    from zarr.storage import FsspecStore

    check_protocol(url)
    return FsspecStore.from_url(url, storage_options=current_options() or None, read_only=read_only)


def join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}" if is_url(path) else os.path.join(path, name)


# --------------------------------------------------------------------------
# whole objects: model files and checkpoints
# --------------------------------------------------------------------------
def exists(path) -> bool:
    if is_url(path):
        fs, p = filesystem(os.fspath(path))
        return fs.exists(p)
    return os.path.exists(local_path(path))


def read_bytes(url: str) -> bytes:
    """The whole object at ``url`` (:class:`FileNotFoundError` if there is none)."""
    fs, p = filesystem(url)
    return fs.cat_file(p)


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` as the object ``url`` in one put: the object exists whole, or not at all
    (object stores make a single PUT visible atomically)."""
    fs, p = filesystem(url)
    if fs.isdir(p):
        raise ValueError(f"{url!r} is a directory (a prefix holding objects); give a file name.")
    if protocol(url) not in OBJECT_STORES:  # sftp, ftp, ...: directories must exist
        with contextlib.suppress(Exception):
            fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(p, bytes(data))  # never makedirs on an object store: it could create a bucket


def check_writable_url(url: str, what: str) -> None:
    """Refuse, before any work, a URL that cannot be written: no package, unknown protocol, a
    prefix, a missing bucket, no right to write (:func:`probe_writable`)."""
    probe_writable(url, what)  # first: a store that refuses us says so, whatever is asked
    fs, p = filesystem(url)
    if fs.isdir(p):
        raise ValueError(f"The {what} {url!r} is a directory (a prefix holding objects); give a file name.")


#: protocols whose first path component is a bucket (container) that daskgmm never creates
BUCKETED = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})

PROBE_PREFIX = ".daskgmm-write-probe-"

_CREDENTIALS = (
    "credentials allowed to write there: the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*...), fsspec's configuration, or "
    "storage_options= in Python / --storage-option KEY=VALUE on the command line"
)


def probe_writable(url: str, what: str) -> None:
    """Refuse (:class:`ValueError`), before any work, a URL output that cannot be written.

    One cheap request, a small object ``.daskgmm-write-probe-<uuid>`` put next to ``url`` (in
    its parent prefix) and deleted at once (only that object, which this call created). Its
    error says what is wrong: a bucket that does not exist (daskgmm never creates one),
    credentials the store refuses, or a filesystem that cannot write."""
    import uuid

    fs, p = filesystem(url)
    p = p.rstrip("/")
    parent = p.rsplit("/", 1)[0] if "/" in p else p
    probe = f"{parent}/{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        fs.pipe_file(probe, b"")
    except Exception as e:  # no such bucket, access denied, no credentials, read-only filesystem
        bucket = p.split("/", 1)[0]
        why = f"({type(e).__name__}: {e})"
        if isinstance(e, FileNotFoundError) and protocol(url) in BUCKETED:
            with contextlib.suppress(Exception):
                if not fs.exists(bucket):
                    why = (
                        f"its bucket {bucket!r} does not exist {why}. Create the bucket first (daskgmm "
                        "never creates one), or correct the URL; if it exists, give"
                    )
        if not why.endswith("give"):
            why = f"a test write next to it was refused {why}. Check the URL, and give"
        raise ValueError(f"The {what} {url!r} cannot be written: {why} {_CREDENTIALS}.") from e
    with contextlib.suppress(Exception):  # a store that lets us write but not delete: left, harmless
        fs.rm_file(probe)


def as_file(path) -> Any:
    """A binary file object to read ``path`` from (a local path as itself)."""
    if is_url(path):
        return io.BytesIO(read_bytes(os.fspath(path)))
    return local_path(path)


# --------------------------------------------------------------------------
# Zarr input
# --------------------------------------------------------------------------
def _zarr_exists(path: str) -> bool:
    if is_url(path):
        fs, p = filesystem(path)
        return any(fs.exists(f"{p}/{m}") for m in ("zarr.json", ".zarray", ".zgroup"))
    return os.path.exists(path)


def open_zarr_array(path, array: str | None = None):
    """The Zarr array at ``path`` (a local path or a URL; or the member ``array`` of the group
    there) and its full path.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImportError
        A URL whose filesystem package is not installed (the message says what to install).
    ValueError
        If ``path`` is not a Zarr store, is a group and no (existing) ``array`` is named,
        or is an array while ``array`` is given. Messages name the arrays to choose from.
    """
    import zarr

    path = normalise(path) if is_url(path) else os.fspath(path)
    if not _zarr_exists(path):
        raise FileNotFoundError(
            f"No Zarr array at {path!r}: the path does not exist. Check the path "
            "(for an array inside a group, give 'store.zarr/array_name')."
        )
    try:
        where = zarr_store(path) if is_url(path) else path
        node = zarr.open(where, mode="r")
    except Exception as e:  # zarr raises several types for "not a store"
        raise ValueError(f"{path!r} is not a Zarr array or group ({e}).") from e
    if isinstance(node, zarr.Group):
        names = sorted(name for name, _ in node.arrays())
        if array is None:
            raise ValueError(
                f"{path!r} is a Zarr group; choose an array with --array (one of {names}), "
                f"or pass '{join(path, names[0] if names else 'NAME')}' in Python."
            )
        if array not in names:
            raise ValueError(f"no array {array!r} in {path!r} (arrays: {names})")
        return node[array], join(path, array)
    if array is not None:
        raise ValueError(f"{path!r} is a Zarr array, not a group; drop --array")
    return node, path


_ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def remote_zarr_stamp(url: str) -> dict:
    """What identifies a remote Zarr store's content without reading its chunks: a hash of its
    metadata objects and of every chunk object's name, size and version (ETag, else modification
    time), from one listing of the store."""
    fs, p = filesystem(url)
    listing = fs.find(p, detail=True)
    meta, files, n = hashlib.sha256(), hashlib.sha256(), 0
    for full in sorted(listing):
        info = listing[full]
        rel = full[len(p) :].lstrip("/")
        if rel.rsplit("/", 1)[-1] in _ZARR_METADATA:
            meta.update(rel.encode() + b"\0" + fs.cat_file(full))
        else:
            version = info.get("ETag") or info.get("LastModified") or info.get("mtime") or info.get("created")
            files.update(f"{rel}\0{info.get('size')}\0{version}\n".encode())
            n += 1
    return {
        "zarr_metadata": meta.hexdigest()[:32],
        "zarr_chunk_files": f"{n} chunk files, {files.hexdigest()[:16]}",
    }


def accepts_storage_options(func):
    """Run ``func`` with its keyword ``storage_options`` in use (:func:`using`) for every path it
    opens or writes, including checkpoints and outputs written during the call."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with using(kwargs.get("storage_options")):
            return func(*args, **kwargs)

    return wrapper


def zarr_source(z) -> str:
    """Where the Zarr array ``z`` lives: a URL for a store on an fsspec filesystem, else Zarr's
    description of its store path (``file:///...`` for a local store)."""
    from zarr.storage import FsspecStore

    store = z.store
    if isinstance(store, FsspecStore):
        fs = getattr(store.fs, "sync_fs", store.fs)  # zarr wraps synchronous filesystems
        base = fs.unstrip_protocol(store.path)
        return join(base, z.path) if z.path else base.rstrip("/")
    return str(z.store_path)
