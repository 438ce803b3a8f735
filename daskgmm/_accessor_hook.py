"""Registers the xarray ``.gmm`` accessor without importing xarray (or dask) early.

``import daskgmm`` calls :func:`install`:

* xarray already imported: the accessor is registered at once;
* otherwise a one-shot import hook (a :data:`sys.meta_path` finder) waits for ``import xarray``
  and registers it as soon as xarray's own module has run.

Either way what xarray holds is :class:`LazyGMMAccessor`, a stand-in that needs nothing but
xarray: the first ``DataArray.gmm`` imports :mod:`daskgmm.accessor` (dask, the estimator) and
returns its :class:`~daskgmm.accessor.GMMAccessor`. Registering the real class from inside
xarray's import could re-enter a daskgmm module that is itself importing xarray.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading

_NAME = "gmm"
_lock = threading.Lock()


class LazyGMMAccessor:
    """``DataArray.gmm``: see :class:`daskgmm.accessor.GMMAccessor` (imported on first use)."""

    def __new__(cls, obj):
        from daskgmm.accessor import GMMAccessor

        return GMMAccessor(obj)


def register(xr=None) -> None:
    """Register ``DataArray.gmm`` on the imported xarray (once; a no-op when it is there)."""
    xr = xr if xr is not None else sys.modules.get("xarray")
    if xr is None:
        return
    with _lock:
        held = xr.DataArray.__dict__.get(_NAME)
        if held is not None and getattr(held, "_accessor", None) is LazyGMMAccessor:
            return
        xr.register_dataarray_accessor(_NAME)(LazyGMMAccessor)


class _RegisterAfterExec(importlib.abc.Loader):
    """xarray's own loader, plus :func:`register` once xarray's module has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        register(module)

    def __getattr__(self, name):  # resource readers and the like: xarray's loader answers
        return getattr(self._loader, name)


class _XarrayFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for ``xarray`` it asks the other finders and wraps the loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "xarray":
            return None
        uninstall()  # one shot, and so that the look-up below does not come back here
        spec = importlib.util.find_spec("xarray")
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


_finder = _XarrayFinder()


def install() -> None:
    """Register now when xarray is imported, else when it is (see the module docstring)."""
    if "xarray" in sys.modules:
        register()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove the import hook (it removes itself once xarray is imported)."""
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


__all__ = ["LazyGMMAccessor", "install", "register", "uninstall"]
