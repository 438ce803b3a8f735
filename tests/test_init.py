"""``import daskgmm``: cheap (public names on first use), and still registers ``DataArray.gmm``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("dask", "distributed", "zarr", "xarray", "sklearn", "scipy", "numpy")


def _run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_daskgmm_imports_no_heavy_package():
    got = _run(
        f"import sys, json, daskgmm; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert got == []


def test_public_names_and_submodules_on_first_use():
    got = _run(
        "import json, daskgmm; "
        "names = {n: type(getattr(daskgmm, n)).__name__ for n in daskgmm.__all__}; "
        "names['image.predict_image'] = daskgmm.image.predict_image.__name__; "
        "print(json.dumps(names))"
    )
    assert got["GaussianMixture"] == "type" and got["load"] == "function" and got["__version__"] == "str"
    assert got["image.predict_image"] == "predict_image"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import daskgmm

        daskgmm.nope  # noqa: B018


ACCESSOR = (
    "import numpy as np; "
    "a = xr.DataArray(np.arange(40.0).reshape(2, 20), dims=('band', 'x')); "
    "m = a.gmm.fit(2, feature_dim='band', random_state=0); "
    "print(json.dumps([type(a.gmm).__name__, m.means_.shape[0]]))"
)


@pytest.mark.parametrize(
    "imports",
    [
        "import json, xarray as xr, daskgmm",  # xarray first: registered at once
        "import json, daskgmm, xarray as xr",  # daskgmm first: registered by the import hook
        "import json, daskgmm; from daskgmm import GaussianMixture; import xarray as xr",  # xarray via daskgmm
    ],
)
def test_import_daskgmm_registers_the_accessor_in_any_order(imports):
    # -W error: no AccessorRegistrationWarning (registered once), no other warning
    assert _run(imports + "; " + ACCESSOR) == ["GMMAccessor", 2]


def test_the_hook_is_gone_once_xarray_is_imported():
    assert (
        _run(
            "import json, sys, daskgmm, daskgmm._accessor_hook as h, xarray; "
            "print(json.dumps(h._finder in sys.meta_path))"
        )
        is False
    )
