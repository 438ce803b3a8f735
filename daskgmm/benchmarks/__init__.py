"""Benchmarks (the applications layer: nothing in the library imports them).

* :mod:`~daskgmm.benchmarks.kernel`: EM iterations against scikit-learn (``daskgmm bench``);
  :mod:`~daskgmm.benchmarks.limit`, the kernel's limit on this machine (its flops and
  exponentials at the measured rates); :mod:`~daskgmm.benchmarks.phases`, where its time goes
  (``daskgmm bench --profile``).
* :mod:`~daskgmm.benchmarks.beyond`: a ``select_model`` sweep against separate fits, and
  incremental against full EM (``daskgmm bench --beyond``).
* :mod:`~daskgmm.benchmarks.ooc`: a Zarr store larger than the cluster's memory
  (``python -m daskgmm.benchmarks.ooc``).
* :mod:`~daskgmm.benchmarks.segmentation`: the raster scale run (``daskgmm segment-bench``).

The size presets of ``daskgmm bench`` live here, so that the command's ``--help`` can show
them without importing numpy.
"""

QUICK_SHAPES = ((100_000, 16, 16), (400_000, 3, 8), (40_000, 64, 32))
FULL_SHAPES = ((500_000, 16, 16), (2_000_000, 3, 8), (200_000, 64, 32))
CHUNK_COUNTS = (1, 10, 100, 1000)
