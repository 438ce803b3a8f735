"""daskgmm: Gaussian mixture models fitted by out-of-core, map-reduce EM on Dask.

``import daskgmm`` is cheap: the public names (and the submodules, e.g. ``daskgmm.image``)
are imported on first use (PEP 562), so the ``daskgmm`` command's ``--help`` starts without
dask, distributed, zarr, xarray or scikit-learn. It still registers the xarray ``.gmm``
accessor, see :mod:`daskgmm._accessor_hook`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from daskgmm import _accessor_hook

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from daskgmm._bayesian_mixture import BayesianGaussianMixture
    from daskgmm._gaussian_mixture import GaussianMixture, load
    from daskgmm.image import segment
    from daskgmm.selection import ModelSelection, select_model

#: public name -> the module that defines it
_PUBLIC = {
    "GaussianMixture": "daskgmm._gaussian_mixture",
    "BayesianGaussianMixture": "daskgmm._bayesian_mixture",
    "load": "daskgmm._gaussian_mixture",
    "select_model": "daskgmm.selection",
    "ModelSelection": "daskgmm.selection",
    "segment": "daskgmm.image",
}
#: submodules reachable as attributes after ``import daskgmm`` (as before they were lazy)
_SUBMODULES = ("accessor", "checkpoint", "datasets", "image", "io", "plot", "selection")

__all__ = [
    "GaussianMixture",
    "BayesianGaussianMixture",
    "load",
    "select_model",
    "ModelSelection",
    "segment",
    "__version__",
]

_accessor_hook.install()


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import version

        value = version("daskgmm")
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"daskgmm.{name}")
    else:
        raise AttributeError(f"module 'daskgmm' has no attribute {name!r}")
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
