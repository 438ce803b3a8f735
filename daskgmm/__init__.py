"""daskgmm: Gaussian mixture models fitted by out-of-core, map-reduce EM on Dask."""

from daskgmm._gaussian_mixture import GaussianMixture
from daskgmm.io import load

__version__ = "0.1.0"

__all__ = ["GaussianMixture", "load", "__version__"]
