"""daskgmm: Gaussian mixture models fitted by out-of-core, map-reduce EM on Dask."""

from importlib.metadata import version

from daskgmm import accessor  # noqa: F401  (registers the DataArray.gmm accessor)
from daskgmm._gaussian_mixture import GaussianMixture, load
from daskgmm.image import segment
from daskgmm.selection import ModelSelection, select_model

__version__ = version("daskgmm")

__all__ = ["GaussianMixture", "load", "select_model", "ModelSelection", "segment", "__version__"]
