"""The ``daskgmm`` command: fit on Zarr/.npy through a real local cluster, and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import daskgmm
from daskgmm.cli import main
from tests.conftest import make_mixture


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, labels, weights, means, _ = make_mixture(
        n_samples=3000, n_features=3, n_components=3, seed=7, separation=6
    )
    d = tmp_path_factory.mktemp("cli")
    z = zarr.open_array(str(d / "x.zarr"), mode="w", shape=X.shape, chunks=(700, 3), dtype="f8")
    z[:] = X
    g = zarr.open_group(str(d / "g.zarr"), mode="w")
    g.create_array("features", shape=X.shape, chunks=(1000, 3), dtype="f8")[:] = X
    np.save(d / "x.npy", X)
    return d, X, means


def assert_quiet(stderr: str, allowed=("dashboard: ",)) -> None:
    """Standard error of a successful command: nothing but the dashboard link (no warning,
    error, traceback or distributed chatter)."""
    noise = [line for line in stderr.splitlines() if line.strip() and not line.startswith(allowed)]
    assert not noise, stderr


def _fit(argv, capsys):
    assert main(["fit"] + argv + ["--workers", "1", "--threads-per-worker", "2", "--json"]) == 0
    captured = capsys.readouterr()
    return {**json.loads(captured.out.strip().splitlines()[-1]), "stderr": captured.err}


def test_fit_zarr_group_and_npy_agree_and_recover_the_means(data, capsys):
    d, X, means = data
    out_group = _fit(
        [
            str(d / "g.zarr"),
            "--array",
            "features",
            "-k",
            "3",
            "--seed",
            "0",
            "--save-model",
            str(d / "m.npz"),
        ],
        capsys,
    )
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
    out = _fit(
        [
            str(d / "x.zarr"),
            "-k",
            "2",
            "--covariance-type",
            "diag",
            "--max-iter",
            "3",
            "--tol",
            "0",
            "--init",
            "random_from_data",
            "--seed",
            "1",
        ],
        capsys,
    )
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
    out = subprocess.run(
        [sys.executable, "-m", "daskgmm.cli", "demo", "--n-samples", "60000", "--chunk-rows", "15000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "dashboard: http://" in out.stdout
    assert "lower bound" in out.stdout and "iteration" in out.stdout
    err = float(out.stdout.strip().splitlines()[-1].split(":")[-1])
    assert err < 0.1
    # it says what it generated, what it fitted and what the numbers mean; no 'change inf'
    assert "60,000 rows x 8 features" in out.stdout and "mixture of 5 isotropic Gaussians" in out.stdout
    assert "GaussianMixture(n_components=5, covariance_type='full'" in out.stdout
    assert "average log-likelihood of a row" in out.stdout and "true weight" in out.stdout
    assert "inf" not in out.stdout
    assert_quiet(out.stderr, allowed=())


def test_building_the_parser_imports_only_the_cli_modules():
    """``daskgmm --help`` builds every subcommand's parser; the subcommands import the library
    (numpy, dask, scikit-learn, the benchmarks, the datasets) only when they run."""
    code = (
        "import sys, daskgmm; before = set(sys.modules); from daskgmm.cli import build_parser; build_parser(); "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    new = __import__("ast").literal_eval(out.stdout.strip().splitlines()[-1])
    # ``import daskgmm`` itself is lazy now: the parser also brings the parameter table the model
    # options come from, and standard-library modules, but no third-party package
    ours = [m for m in new if m.split(".")[0] == "daskgmm"]
    light = ("daskgmm.benchmarks", "daskgmm._params", "daskgmm._typing")
    assert ours and all(m in light or m.startswith("daskgmm.cli") for m in ours), ours
    assert not {m.split(".")[0] for m in new} & {
        "numpy",
        "scipy",
        "dask",
        "distributed",
        "zarr",
        "xarray",
        "sklearn",
    }


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
        assert not re.search(r"daskgmm(\.|/)(cli|benchmarks)\b|from daskgmm import (cli|benchmarks)", text), (
            path.name
        )


def on_a_terminal(cmd: list[str]) -> tuple[int, str, str]:
    """Run ``cmd`` with standard error on a 120-column pseudo-terminal: (status, stdout, screen)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
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
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_fit_on_a_terminal_draws_one_bar_for_all_starts(data):
    """``daskgmm fit --n-init 3`` with standard error on a terminal: one bar that steps once per
    pass for all three starts (issue 12: the command opened 7 bars)."""
    d, *_ = data
    cmd = [
        sys.executable,
        "-m",
        "daskgmm.cli",
        "fit",
        str(d / "x.zarr"),
        "-k",
        "3",
        "--n-init",
        "3",
        "--seed",
        "0",
        "--max-iter",
        "5",
        "--tol",
        "0",
        "--workers",
        "1",
        "--threads-per-worker",
        "1",
        "--json",
    ]
    returncode, out, screen = on_a_terminal(cmd)
    assert returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["n_iter"] == 5
    bar_lines = [line for line in screen.replace("\r", "\n").splitlines() if "GMM, 3 starts" in line]
    assert bar_lines and all("/5" in line for line in bar_lines)
    # one bar: it reaches 5/5 once and never starts over at 0/5 after a later start began
    finals = [line for line in bar_lines if "5/5" in line]
    assert finals and "GMM start" not in screen
    starts = [line for line in bar_lines if " 0/5" in line]
    assert len(starts) <= 1
    # and the initialisation's passes (the k-means sample, the first statistics) show dask's bar
    assert "100% Completed" in screen


# --------------------------------------------------------------------------
# usage errors: one line, exit 2, no traceback
# --------------------------------------------------------------------------
USAGE_MISTAKES = [
    (["fit", "x.npy", "-k", "0"], "argument --n-components/-k: must be >= 1, got 0"),
    (["fit", "x.npy", "-k", "2", "--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
    (["fit", "x.npy", "-k", "2", "--tol", "-1"], "argument --tol: must be >= 0"),
    (
        ["fit", "x.npy", "-k", "2", "--memory-limit", "lots"],
        "argument --memory-limit: 'lots' is not a memory size",
    ),
    (["demo", "--chunk-rows", "0"], "argument --chunk-rows: must be >= 1, got 0"),
    (["demo", "--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
    (["demo", "--n-samples", "3", "-k", "5"], "--n-samples 3 is fewer than the 5 components"),
    (["fit", "x.npy", "-k", "2", "--workers", "-1"], "argument --workers: must be >= 1, got -1"),
    (["fit", "x.npy", "-k", "2", "--nworkers", "0"], "argument --nworkers: must be >= 1, got 0"),
    (["segment", "a", "b", "-k", "2", "--nthreads", "0"], "argument --nthreads: must be >= 1, got 0"),
    (["segment-bench", "w", "--workers", "x"], "argument --workers: 'x' is not an integer"),
    (
        ["fit", "x.npy", "-k", "2", "--log-level", "LOUD"],
        "argument --log-level: 'LOUD' is not a logging level",
    ),
    (
        ["--log-level", "chatty", "fit", "x.npy", "-k", "2"],
        "'chatty' is not a logging level; choose from DEBUG",
    ),
    (["fit", "x.npy", "-k", "2", "--connect-timeout", "soon"], "'soon' is not a positive duration"),
    (
        ["fit", "x.npy", "-k", "2", "--scheduler", "tcp://a:1", "--scheduler-file", "s.json"],
        "not allowed with",
    ),
    (["fit", "x.npy", "-k", "2", "--resume"], "--resume needs --checkpoint PATH"),
    # --model bayesian (BayesianGaussianMixture) and its priors
    (["fit", "x.npy", "-k", "2", "--mean-precision-prior", "2"], "need --model bayesian"),
    (
        ["fit", "x.npy", "-k", "2", "--model", "bayesian", "--on-collapse", "reseed"],
        "--on-collapse is for --model gaussian (EM) only",
    ),
    (
        ["fit", "x.npy", "-k", "2", "--model", "bayesian", "--degrees-of-freedom-prior", "0"],
        "argument --degrees-of-freedom-prior: must be > 0, got 0",
    ),
    (
        ["segment", "a", "b", "-k", "2", "--model", "bayesian", "--on-collapse", "reseed"],
        "--on-collapse is for --model gaussian (EM) only",
    ),
]


@pytest.mark.parametrize("argv, message", USAGE_MISTAKES, ids=[" ".join(a) for a, _ in USAGE_MISTAKES])
def test_usage_mistakes_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("daskgmm") and ": error: " in err, err
    assert message in err


def test_a_usage_mistake_from_the_shell():
    r = subprocess.run(
        [sys.executable, "-m", "daskgmm.cli", "fit", "data.zarr", "-k", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == "daskgmm fit: error: argument --n-components/-k: must be >= 1, got 0 (see 'daskgmm fit --help')\n"
    )


def test_runtime_errors_name_the_command(data, capsys):
    d, *_ = data
    with pytest.raises(SystemExit, match=r"^daskgmm fit: error: .* does not exist$"):
        main(["fit", str(d / "missing.zarr"), "-k", "2"])


# --------------------------------------------------------------------------
# a quick, documented command line
# --------------------------------------------------------------------------
HEAVY = ("dask", "distributed", "zarr", "xarray", "sklearn", "scipy", "numpy")


def test_help_imports_none_of_the_heavy_stack():
    """``daskgmm --help`` and every command's ``--help``: standard library and daskgmm.cli only."""
    code = (
        "import json, sys\n"
        "from daskgmm.cli import SUBCOMMANDS, main\n"
        "for argv in [[]] + [[m.__name__.rsplit('.', 1)[1].replace('_', '-')] for m in SUBCOMMANDS]:\n"
        "    try:\n"
        "        main(argv + ['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, argv\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "segment-bench" in r.stdout and "--connect-timeout" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_version():
    from importlib.metadata import version

    r = subprocess.run(
        [sys.executable, "-m", "daskgmm.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout == f"daskgmm {version('daskgmm')}\n"


def _subparsers():
    import argparse

    from daskgmm.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_and_says_its_default():
    import argparse

    for name, parser in _subparsers().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue  # the hidden older spellings
            assert action.help, (name, action.option_strings)
            if action.option_strings and not action.required and action.default not in (None, False):
                assert "default" in action.help, (name, action.option_strings, action.help)


def test_option_names_and_their_older_spellings(tmp_path):
    from daskgmm.cli import build_parser

    parse = build_parser().parse_args
    new = parse(["fit", "x.npy", "-k", "2", "--nworkers", "3", "--nthreads", "2"])
    old = parse(["fit", "x.npy", "-k", "2", "--workers", "3", "--threads-per-worker", "2"])
    assert (new.workers, new.threads_per_worker) == (old.workers, old.threads_per_worker) == (3, 2)
    assert (
        parse(["demo", "--chunk-rows", "7"]).chunk_size
        == parse(["demo", "--chunk-size", "7"]).chunk_size
        == 7
    )
    assert parse(["segment-bench", "w", "--workers", "1"]).workers == 1
    # --log-level before or after the command, any case; WARNING by default
    assert parse(["fit", "x.npy", "-k", "2"]).log_level == "WARNING"
    assert parse(["--log-level", "info", "fit", "x.npy", "-k", "2"]).log_level == "INFO"
    assert parse(["fit", "x.npy", "-k", "2", "--log-level", "debug"]).log_level == "DEBUG"
    # --json is a flag that prints JSON on standard output (bench keeps '--json PATH' for a file)
    assert parse(["fit", "x.npy", "-k", "2", "--json"]).json is True
    assert parse(["bench", "--json"]).json == "-" and parse(["bench", "--json", "b.json"]).json == "b.json"
    assert parse(["fit", "x.npy", "-k", "2", "--memory-limit", "0.5"]).memory_limit == "0.5"
    assert parse(["fit", "x.npy", "-k", "2", "--connect-timeout", "2m"]).connect_timeout == 120


# --------------------------------------------------------------------------
# dask's conventions: scheduler-address, a short connect timeout
# --------------------------------------------------------------------------
def test_a_refused_scheduler_fails_fast_with_what_to_do(data):
    d, *_ = data
    t0 = __import__("time").monotonic()
    with pytest.raises(
        SystemExit, match=r"could not connect to the scheduler at tcp://127\.0\.0\.1:1 within 1s"
    ):
        main(
            [
                "fit",
                str(d / "x.npy"),
                "-k",
                "2",
                "--scheduler",
                "tcp://127.0.0.1:1",
                "--connect-timeout",
                "1s",
            ]
        )
    assert __import__("time").monotonic() - t0 < 20


def test_dask_scheduler_address_from_the_environment_is_used(data):
    d, *_ = data
    env = dict(os.environ, DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:1")
    r = subprocess.run(
        [sys.executable, "-m", "daskgmm.cli", "fit", str(d / "x.npy"), "-k", "2", "--connect-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1
    assert "tcp://127.0.0.1:1 (dask's scheduler-address configuration) within 1s" in r.stderr
    assert "Traceback" not in r.stderr


def test_fit_computes_on_the_configured_scheduler(data, cluster, monkeypatch, capsys):
    import dask
    import distributed

    def no_local_cluster(*args, **kwargs):
        raise AssertionError("started a local cluster although dask's scheduler-address is set")

    d, *_ = data
    monkeypatch.setattr(distributed, "LocalCluster", no_local_cluster)
    saved = dask.config.get("scheduler", None)
    try:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}):
            assert main(["fit", str(d / "x.npy"), "-k", "3", "--seed", "0", "--json"]) == 0
    finally:
        dask.config.set(scheduler=saved)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["converged"]


# --------------------------------------------------------------------------
# quiet success on a local cluster
# --------------------------------------------------------------------------
def test_fit_on_a_local_cluster_is_quiet(data):
    d, *_ = data
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "daskgmm.cli",
            "fit",
            str(d / "x.zarr"),
            "-k",
            "3",
            "--seed",
            "0",
            "--nworkers",
            "2",
            "--nthreads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "converged: True" in r.stdout and "fitted in" in r.stdout
    assert_quiet(r.stderr)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    """A (60, 50, 3) float raster of a 3-component mixture with a nodata stripe."""
    X = make_mixture(n_samples=3000, n_features=3, n_components=3, seed=5, separation=6)[0]
    img = X.reshape(60, 50, 3)
    img[:5] = 0.0
    path = str(tmp_path_factory.mktemp("raster") / "img.zarr")
    zarr.create_array(path, shape=img.shape, chunks=(20, 25, 3), dtype="f8")[:] = img
    return path


def test_segment_on_a_local_cluster_is_quiet(raster, tmp_path):
    out = tmp_path / "seg.zarr"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "daskgmm.cli",
            "segment",
            raster,
            str(out),
            "-k",
            "3",
            "--nodata",
            "0",
            "--seed",
            "0",
            "--nworkers",
            "2",
            "--nthreads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "labelled 3,000 pixels" in r.stdout and out.exists()
    assert_quiet(r.stderr)


def test_segment_on_a_terminal_shows_progress_of_the_writing(raster, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "daskgmm.cli",
        "segment",
        raster,
        str(tmp_path / "seg.zarr"),
        "-k",
        "3",
        "--nodata",
        "0",
        "--seed",
        "0",
        "--nworkers",
        "1",
        "--nthreads",
        "1",
        "--json",
    ]
    returncode, out, screen = on_a_terminal(cmd)
    assert returncode == 0, screen
    assert json.loads(out.strip().splitlines()[-1])["n_pixels"] == 3000
    assert screen.count("100% Completed") >= 2  # the initialisation's passes and the writing
    assert "GMM" in screen  # the engine's bar for the EM passes


def test_demo_keep_open_waits_for_enter():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "daskgmm.cli",
            "demo",
            "--n-samples",
            "4000",
            "--chunk-size",
            "1000",
            "-k",
            "2",
            "--n-features",
            "2",
            "--nworkers",
            "1",
            "--keep-open",
        ],
        input="\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "the dashboard stays open at http://" in r.stdout and "press Enter (or Ctrl-C)" in r.stdout
    assert_quiet(r.stderr, allowed=())


def test_segment_overwrite_never_deletes_the_input_or_other_files(raster, tmp_path):
    """``segment project/img.zarr project --overwrite`` is refused before any fit; nothing is removed."""
    project = tmp_path / "project"
    project.mkdir()
    image = project / "img.zarr"
    zarr.create_array(str(image), shape=(30, 20, 3), chunks=(10, 20, 3), dtype="f8")[:] = 1.0
    (project / "notes.txt").write_text("keep")
    for out, message in [
        (project, "is a directory holding the input image"),
        (image, "is the input image itself"),
        (image / "out.zarr", "is inside the input image"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["segment", str(image), str(out), "-k", "2", "--overwrite"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("keep")
    with pytest.raises(SystemExit, match="is a directory with 1 entry that is not a daskgmm output"):
        main(["segment", str(image), str(other), "-k", "2", "--overwrite"])
    assert sorted(os.listdir(project)) == ["img.zarr", "notes.txt"]
    assert (other / "a.txt").read_text() == "keep"
    assert zarr.open_array(str(image), mode="r")[:].sum() == 30 * 20 * 3


def test_segment_save_model_to_a_directory_fails_before_the_fit(raster, tmp_path):
    with pytest.raises(SystemExit, match="--save-model file .* is a directory"):
        main(["segment", raster, str(tmp_path / "o.zarr"), "-k", "2", "--save-model", str(tmp_path)])
    assert not (tmp_path / "o.zarr").exists()


# --------------------------------------------------------------------------
# no silent hang when no worker can run tasks (issue 14, case 7)
# --------------------------------------------------------------------------
def test_a_scheduler_without_workers_fails_in_bounded_time(data):
    """A real scheduler process with no workers: the command says so within --worker-timeout."""
    d, *_ = data
    sched = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(d / "sched.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            if (d / "sched.json").exists() and (d / "sched.json").stat().st_size:
                break
            time.sleep(0.1)
        t0 = time.monotonic()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "daskgmm.cli",
                "fit",
                str(d / "x.npy"),
                "-k",
                "2",
                "--scheduler-file",
                str(d / "sched.json"),
                "--worker-timeout",
                "3s",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode != 0 and time.monotonic() - t0 < 60
        assert "no worker able to run tasks after 3s: the scheduler has no workers" in r.stderr
    finally:
        sched.terminate()
        sched.wait(30)


@pytest.mark.parametrize("limit", ["50MB", "1e-6", "1000"])
def test_a_memory_limit_below_an_idle_worker_is_a_usage_error(data, capsys, limit):
    d, *_ = data
    with pytest.raises(SystemExit) as e:
        main(["fit", str(d / "x.npy"), "-k", "2", "--memory-limit", limit])
    assert e.value.code == 2
    assert "below what an idle dask worker uses" in capsys.readouterr().err


def test_two_concurrent_segment_runs_to_one_out(raster, tmp_path, cluster):
    """Two real ``daskgmm segment`` processes, neither with --overwrite, to the same OUT: one
    succeeds, the other fails clearly, and OUT is the complete output of the one that succeeded."""
    from daskgmm._zarr_output import open_segmentation

    out = tmp_path / "seg.zarr"
    cmd = [sys.executable, "-m", "daskgmm.cli", "segment", raster, str(out), "-k", "3", "--nodata", "0"]
    procs = [
        subprocess.Popen(
            [*cmd, "--seed", str(seed), "--scheduler", cluster.scheduler_address, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    results = [(p.wait(300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    winner = next(json.loads(o.strip().splitlines()[-1]) for rc, o, _ in results if rc == 0)
    loser_err = next(e for rc, _, e in results if rc != 0)
    assert "appeared while this output was being written" in loser_err or "already exists" in loser_err
    back = open_segmentation(str(out))
    assert back["attrs"]["seed"] in (0, 1) and winner["out"] == str(out)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_fit_model_bayesian_equals_sklearn_and_counts_the_components_it_keeps(data, cluster, capsys):
    """``daskgmm fit --model bayesian``: scikit-learn's BayesianGaussianMixture from the same start."""
    import dask
    from sklearn.mixture import BayesianGaussianMixture as SkBGM

    d, X, _ = data
    argv = ["fit", str(d / "x.npy"), "-k", "6", "--seed", "0", "--model", "bayesian"]
    argv += ["--weight-concentration-prior", "0.01", "--save-model", str(d / "b.npz"), "--json"]
    saved = dask.config.get("scheduler", None)
    try:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}):
            assert main(argv) == 0
    finally:
        dask.config.set(scheduler=saved)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = SkBGM(n_components=6, random_state=0, weight_concentration_prior=0.01).fit(X)
    model = daskgmm.load(d / "b.npz")
    assert type(model).__name__ == "BayesianGaussianMixture"
    np.testing.assert_allclose(model.weights_, ref.weights_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(model.means_, ref.means_, rtol=1e-6)
    assert out["model"] == "bayesian" and out["components_kept"] == int((ref.weights_ > 0.01).sum())


@pytest.mark.parametrize("prior", ["dirichlet_process", "dirichlet_distribution"])
def test_segment_model_bayesian_labels_as_sklearn_predicts(raster, tmp_path, cluster, prior):
    """``daskgmm segment --model bayesian``: K chosen by the fit; every valid pixel's label is what
    scikit-learn's BayesianGaussianMixture predicts with the fitted posterior."""
    import dask

    from daskgmm.segmentation import open_segmentation

    out = tmp_path / f"seg-{prior}.zarr"
    argv = ["segment", raster, str(out), "-k", "6", "--nodata", "0", "--seed", "0", "--model", "bayesian"]
    argv += ["--weight-concentration-prior-type", prior, "--weight-concentration-prior", "0.01"]
    argv += ["--max-iter", "500", "--tol", "0.01"]
    saved = dask.config.get("scheduler", None)
    try:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}):
            assert main(argv) == 0
    finally:
        dask.config.set(scheduler=saved)
    seg = open_segmentation(out)
    model = seg["model"]
    assert type(model).__name__ == "BayesianGaussianMixture"
    kept = (model.weights_ > 0.01).sum()  # 3 true components; the Dirichlet distribution prunes less
    assert kept == 3 if prior == "dirichlet_process" else 3 <= kept < 6
    if prior == "dirichlet_distribution":  # sorted by the first band's mean
        assert np.all(np.diff(model.means_[:, 0]) >= 0)
    img = np.asarray(zarr.open_array(raster, mode="r")[:])
    labels = np.asarray(seg["labels"])
    valid = ~(img == 0).any(axis=-1)
    assert (labels[~valid] == -1).all()
    np.testing.assert_array_equal(labels[valid], model.to_sklearn().predict(img[valid]))


# --------------------------------------------------------------------------
# the local cluster's housekeeping intervals
# --------------------------------------------------------------------------
def test_local_cluster_runs_daskgmms_housekeeping_intervals_unless_the_user_set_them(data):
    """The cluster ``daskgmm fit`` starts runs dask's periodic housekeeping at daskgmm's intervals
    (its processes share this machine's cores with the fit), read from the callbacks that its
    scheduler and worker processes actually run; a value the user set keeps; the driver's own
    config is restored afterwards."""
    import dask
    import distributed  # noqa: F401 - its defaults in dask's config before the set below

    from daskgmm.cli import build_parser
    from daskgmm.cli._cluster import connect

    d, *_ = data
    args = build_parser().parse_args(
        ["fit", str(d / "x.npy"), "-k", "2", "--nworkers", "1", "--nthreads", "1"]
    )

    def worker_intervals(dask_worker):
        pcs = dask_worker.periodic_callbacks
        return {name: pcs[name].callback_time for name in ("tick", "monitor", "profile")}

    def scheduler_intervals(dask_scheduler):
        pcs = dask_scheduler.periodic_callbacks
        return {name: pcs[name].callback_time for name in ("tick", "monitor")}

    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):  # the user's own
        with connect(args) as client:
            (on_worker,) = client.run(worker_intervals).values()
            on_scheduler = client.run_on_scheduler(scheduler_intervals)
        assert dask.config.get("distributed.admin.tick.interval") == "50ms"
    # PeriodicCallback times are in milliseconds; distributed's defaults are 20, 500 and 10
    assert on_worker == {"tick": 50, "monitor": 2000, "profile": 100}
    assert on_scheduler == {"tick": 50, "monitor": 2000}
    assert dask.config.get("distributed.worker.profile.interval") == "10ms"
    with dask.config.set({"daskgmm.housekeeping": False}), connect(args) as client:
        (on_worker,) = client.run(worker_intervals).values()
    assert on_worker == {"tick": 20, "monitor": 500, "profile": 10}


def test_housekeeping_environment_reads_back_through_dasks_own_parser():
    import dask

    from daskgmm._placement import HOUSEKEEPING, housekeeping_environ

    parsed = dask.config.collect_env(housekeeping_environ(HOUSEKEEPING))
    assert {key: dask.config.get(key, config=parsed) for key in HOUSEKEEPING} == HOUSEKEEPING
