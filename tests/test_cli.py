"""The ``daskgmm`` command: fit on Zarr/.npy through a real local cluster, and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

import daskgmm
from daskgmm.cli import main
from tests.conftest import make_mixture


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, labels, weights, means, _ = make_mixture(n_samples=3000, n_features=3, n_components=3, seed=7, separation=6)
    d = tmp_path_factory.mktemp("cli")
    z = zarr.open_array(str(d / "x.zarr"), mode="w", shape=X.shape, chunks=(700, 3), dtype="f8")
    z[:] = X
    g = zarr.open_group(str(d / "g.zarr"), mode="w")
    g.create_array("features", shape=X.shape, chunks=(1000, 3), dtype="f8")[:] = X
    np.save(d / "x.npy", X)
    return d, X, means


def _fit(argv, capsys):
    assert main(["fit"] + argv + ["--workers", "1", "--threads-per-worker", "2", "--json"]) == 0
    captured = capsys.readouterr()
    return {**json.loads(captured.out.strip().splitlines()[-1]), "stderr": captured.err}


def test_fit_zarr_group_and_npy_agree_and_recover_the_means(data, capsys):
    d, X, means = data
    out_group = _fit([str(d / "g.zarr"), "--array", "features", "-k", "3", "--seed", "0", "--save-model", str(d / "m.npz")], capsys)
    out_npy = _fit([str(d / "x.npy"), "-k", "3", "--seed", "0"], capsys)
    assert out_group["converged"]
    fitted = np.array(out_group["means"])
    np.testing.assert_allclose(np.array(out_npy["means"]), fitted, atol=1e-5)
    for m in means:  # each true mean has a fitted mean near it
        assert np.linalg.norm(fitted - m, axis=1).min() < 0.2
    model = daskgmm.load(d / "m.npz")
    np.testing.assert_allclose(model.means_, fitted, atol=1e-5)
    ref = daskgmm.GaussianMixture(3, random_state=0).fit(X)
    np.testing.assert_allclose(model.lower_bound_, ref.lower_bound_, rtol=1e-9)


def test_fit_options_reach_the_model(data, capsys):
    d, X, _ = data
    out = _fit([str(d / "x.zarr"), "-k", "2", "--covariance-type", "diag", "--max-iter", "3", "--tol", "0", "--init", "random_from_data", "--seed", "1"], capsys)
    assert out["covariance_type"] == "diag" and out["n_iter"] == 3 and out["n_components"] == 2
    assert not out["converged"]
    assert "did not converge in 3 iterations" in out["stderr"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.zarr", "-k", "2"], "does not exist"),
        (["g.zarr", "-k", "2"], "is a Zarr group; choose an array with --array"),
        (["g.zarr", "--array", "nope", "-k", "2"], "no array 'nope'"),
        (["x.zarr", "--array", "features", "-k", "2"], "is a Zarr array, not a group"),
    ],
)
def test_fit_bad_data_arguments(data, argv, message):
    d, *_ = data
    argv = [str(d / argv[0])] + argv[1:]
    with pytest.raises(SystemExit, match=message):
        main(["fit"] + argv)


def test_fit_needs_n_components(data, capsys):
    d, *_ = data
    with pytest.raises(SystemExit):
        main(["fit", str(d / "x.zarr")])
    assert "--n-components" in capsys.readouterr().err


def test_demo_runs_and_recovers_its_means():
    """The README's first command, at a small size, as a user runs it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, "-m", "daskgmm.cli", "demo", "--n-samples", "60000", "--chunk-rows", "15000"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "dashboard: http://" in out.stdout
    assert "lower bound" in out.stdout and "iteration" in out.stdout
    err = float(out.stdout.strip().splitlines()[-1].split(":")[-1])
    assert err < 0.1


def test_building_the_parser_imports_only_the_cli_modules():
    """``daskgmm --help`` builds every subcommand's parser; the subcommands import the library
    (numpy, dask, scikit-learn, the benchmarks, the datasets) only when they run."""
    code = (
        "import sys, daskgmm; before = set(sys.modules); from daskgmm.cli import build_parser; build_parser(); "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    new = __import__("ast").literal_eval(out.stdout.strip().splitlines()[-1])
    # ``import daskgmm`` itself is lazy now: the parser also brings the parameter table the model
    # options come from, and standard-library modules, but no third-party package
    ours = [m for m in new if m.split(".")[0] == "daskgmm"]
    light = ("daskgmm.benchmarks", "daskgmm._params", "daskgmm._typing")
    assert ours and all(m in light or m.startswith("daskgmm.cli") for m in ours), ours
    assert not {m.split(".")[0] for m in new} & {"numpy", "scipy", "dask", "distributed", "zarr", "xarray", "sklearn"}


def test_segment_states_the_image_order_rule():
    from daskgmm.cli.segment import ORDER_RULE
    from daskgmm.image import ORDER_RULE as IMAGE_RULE

    assert ORDER_RULE == IMAGE_RULE


def test_library_modules_import_no_application_code():
    import pathlib
    import re

    root = pathlib.Path(daskgmm.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"daskgmm(\.|/)(cli|benchmarks)\b|from daskgmm import (cli|benchmarks)", text), path.name


def test_fit_on_a_terminal_draws_one_bar_for_all_starts(data):
    """``daskgmm fit --n-init 3`` with standard error on a terminal: one bar that steps once per
    pass for all three starts (issue 12: the command opened 7 bars)."""
    import fcntl
    import pty
    import struct
    import termios

    d, *_ = data
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    cmd = [sys.executable, "-m", "daskgmm.cli", "fit", str(d / "x.zarr"), "-k", "3", "--n-init", "3", "--seed", "0",
           "--max-iter", "5", "--tol", "0", "--workers", "1", "--threads-per-worker", "1", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    out, _ = proc.communicate(timeout=180)
    os.close(master)
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["n_iter"] == 5
    screen = b"".join(chunks).decode(errors="replace")
    bar_lines = [line for line in screen.replace("\r", "\n").splitlines() if "GMM, 3 starts" in line]
    assert bar_lines and all("/5" in line for line in bar_lines)
    # one bar: it reaches 5/5 once and never starts over at 0/5 after a later start began
    finals = [line for line in bar_lines if "5/5" in line]
    assert finals and "GMM start" not in screen
    starts = [line for line in bar_lines if " 0/5" in line]
    assert len(starts) <= 1
