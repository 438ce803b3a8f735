"""Every notebook under notebooks/ runs top to bottom at the small size, and reads well when committed.

Each notebook is executed with nbclient in a fresh kernel of *this* interpreter (a
kernelspec pointing at ``sys.executable`` written to a temporary Jupyter path, so it
works from a plain ``pip install -e .[test]`` with no kernel registered). The first
code cell, tagged ``parameters``, reads ``DASKGMM_NOTEBOOK_SIZE``; the tests set it to
``small``. A cell that raises fails the test, and so does a warning from daskgmm
printed by any cell.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01-quickstart.ipynb",
    "02-image-segmentation.ipynb",
    "03-out-of-core-on-a-cluster.ipynb",
    "04-what-gmms-are-for.ipynb",
]
KERNEL_NAME = "daskgmm-tests"
CELL_TIMEOUT_S = 240
MAX_NOTEBOOK_BYTES = 1_000_000


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A Jupyter data dir holding a kernelspec that runs ipykernel in this interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "daskgmm tests",
                "language": "python",
            }
        )
    )
    return root


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


def _execute(path: Path, size: str, jupyter_path: Path, tmp_path: Path, monkeypatch, cell_timeout: int):
    """Run the notebook top to bottom at ``size``; return it with its outputs."""
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    # connection files and IPython's profile in temporary places: no writable home needed,
    # and no user startup scripts or config in the kernel
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(jupyter_path / "ipython"))
    # what a notebook writes to tempfile.mkdtemp() lands under pytest's tmp_path
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("DASKGMM_NOTEBOOK_SIZE", size)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = _read(path)
    client = nbclient.NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},
        record_timing=False,
    )
    client.execute()  # raises CellExecutionError naming the cell when one fails
    size_line = [
        o["text"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and "SIZE=" in o.get("text", "")
    ]
    assert size_line and f"SIZE={size}" in size_line[0], "the setup cell must print the size it runs at"
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                warned = re.findall(r"daskgmm\S*: \w*Warning: .*", out["text"])
                assert not warned, f"cell {i} of {path.name} printed a daskgmm warning: {warned}"
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_small_size(path, jupyter_path, tmp_path, monkeypatch):
    _execute(path, "small", jupyter_path, tmp_path, monkeypatch, CELL_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_full_size(path, jupyter_path, tmp_path, monkeypatch):
    """What a user gets by default (minutes each; 03 writes and streams 2.4 GiB)."""
    _execute(path, "full", jupyter_path, tmp_path, monkeypatch, 1500)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_light_with_outputs(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is over 1 MB: shrink its figures"
    nb = _read(path)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # the size switch: the first code cell, tagged 'parameters', reading DASKGMM_NOTEBOOK_SIZE
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "DASKGMM_NOTEBOOK_SIZE" in code[0].source
    assert 'os.environ.get("DASKGMM_NOTEBOOK_SIZE", "full")' in code[0].source
    # executed in order, without errors, with at least one picture
    counts = [c.execution_count for c in code]
    assert all(n is not None for n in counts), f"{path.name} has unexecuted cells: run it before committing"
    assert counts == sorted(counts), f"{path.name} was not run top to bottom"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # no machine-specific absolute paths from the author's checkout
    text = path.read_text()
    assert str(ROOT) not in text and os.path.expanduser("~") + "/" not in text


def test_readme_links_each_notebook():
    readme = (ROOT / "README.md").read_text()
    for name in EXPECTED:
        assert f"(notebooks/{name})" in readme, f"README.md does not link notebooks/{name}"
