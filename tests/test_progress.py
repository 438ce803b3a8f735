"""Progress you can watch: the bar (only with verbose >= 1 on a terminal), scikit-learn's
verbose lines, the daskgmm logger, and the per-iteration history on the fitted model."""

from __future__ import annotations

import io
import logging

import dask
import dask.array as da
import numpy as np
import pytest

from daskgmm import GaussianMixture
from daskgmm._progress import FitProgress, show_progress
from tests.conftest import make_mixture

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (what a person watching would be)."""

    def isatty(self):
        return True


@pytest.fixture(scope="module")
def X():
    return make_mixture(n_samples=2_000, n_features=3, n_components=3, seed=4)[0]


def test_verbose_0_is_silent_even_on_a_terminal(X, capsys, monkeypatch):
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    GaussianMixture(3, random_state=0, verbose=0).fit(X)
    assert capsys.readouterr().out == "" and term.getvalue() == ""


def test_no_bar_without_a_terminal_but_scikit_learn_lines(X, capsys):
    GaussianMixture(3, random_state=0, verbose=2, verbose_interval=1, max_iter=3, tol=0).fit(X)
    out, err = capsys.readouterr()
    assert "Initialization 0" in out and "  Iteration 1\t time lapse" in out and "ll change" in out
    assert "Initialization did not converge." in out
    assert "lower bound=" not in err and "it/s" not in err and "s/it" not in err


def test_bar_on_a_terminal_shows_iteration_lower_bound_change_and_time(X, capsys, monkeypatch):
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    gm = GaussianMixture(3, random_state=0, verbose=1, max_iter=4, tol=0).fit(X)
    bar = term.getvalue()
    assert "GMM" in bar and "4/4" in bar
    assert "lower bound=" in bar and f"{gm.lower_bound_:.6g}" in bar
    assert "change=" in bar and "s/it=" in bar
    # scikit-learn's lines still go to standard output
    assert "Initialization 0" in capsys.readouterr().out


def test_show_progress_rules(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not show_progress(1) and not show_progress(0)
    assert show_progress(0, progress=True) and not show_progress(2, progress=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress(1) and not show_progress(0)


def test_fit_progress_resumes_at_the_done_iterations():
    term = Terminal()
    with FitProgress(10, True, desc="resumed", initial=4, file=term) as bar:
        bar.update({"iteration": 6, "lower_bound": -1.5, "change": 0.25, "seconds": 0.5})
    assert "6/10" in term.getvalue() and "change=0.25" in term.getvalue()


def test_history_has_lower_bound_time_and_bytes_read(X):
    gm = GaussianMixture(3, random_state=0, max_iter=5, tol=0).fit(X)
    assert [r["iteration"] for r in gm.history_] == [1, 2, 3, 4, 5]
    assert [r["lower_bound"] for r in gm.history_] == gm.lower_bounds_
    assert all(r["seconds"] > 0 for r in gm.history_)
    lb = np.array(gm.lower_bounds_)
    np.testing.assert_allclose([r["change"] for r in gm.history_][1:], np.diff(lb), rtol=1e-12)
    assert all(r["bytes_read"] == 0 for r in gm.history_)  # numpy input: held in memory
    Xd = da.from_array(X, chunks=500)
    with dask.config.set(scheduler="threads"):
        gd = GaussianMixture(3, random_state=0, max_iter=2, tol=0).fit(Xd)
    assert [r["bytes_read"] for r in gd.history_] == [X.nbytes, X.nbytes]  # streamed: every pass reads it all


def test_iterations_are_logged_on_the_daskgmm_logger(X, caplog):
    caplog.set_level(logging.INFO, logger="daskgmm")
    gm = GaussianMixture(3, random_state=0, max_iter=2, tol=0).fit(X)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "daskgmm" and r.getMessage().startswith("iteration")
    ]
    assert len(lines) == 2
    assert lines[1].startswith(f"iteration 2: lower bound {gm.lower_bound_:.6f}") and "bytes read" in lines[1]


def _sklearn_verbose_lines(out: str) -> list[str]:
    # the lines without the timings, which differ between runs
    return [line.split("\t")[0].split(" time lapse")[0] for line in out.splitlines()]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_verbose_prints_every_start_as_scikit_learn_does(X, capsys, tmp_path, checkpoint):
    """The starts share each pass, yet the lines come per start, in start order, as in scikit-learn;
    with or without a checkpoint (issue 12: n_init=3 printed nothing)."""
    from sklearn.mixture import GaussianMixture as SkGMM

    kw = dict(n_components=3, n_init=3, random_state=0, verbose=2, verbose_interval=1, max_iter=5, tol=0.0)
    SkGMM(**kw).fit(X)
    expected = _sklearn_verbose_lines(capsys.readouterr().out)
    assert sum(line.startswith("Initialization ") for line in expected) == 6  # begin and end of 3 starts
    extra = {"checkpoint": tmp_path / "c.npz"} if checkpoint else {}
    GaussianMixture(**kw, **extra).fit(X)
    assert _sklearn_verbose_lines(capsys.readouterr().out) == expected


def test_one_bar_for_all_starts(X, monkeypatch):
    """n_init starts share passes: one bar with a step per pass, not a bar per start (issue 12:
    daskgmm fit --n-init 3 opened 7 bars)."""
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    GaussianMixture(3, n_init=3, random_state=0, verbose=1, max_iter=4, tol=0).fit(X)
    bar = term.getvalue()
    assert bar.count("GMM, 3 starts") >= 1 and "GMM start" not in bar
    assert "4/4" in bar and "live starts=3" in bar
    assert "change=inf" not in bar  # the first pass has no change to show ("first")


def test_progress_config_draws_the_bar_without_verbose_lines(X, capsys, monkeypatch):
    """daskgmm fit sets dask's config key ``daskgmm.progress`` on a terminal: a bar, no stdout lines."""
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    with dask.config.set({"daskgmm.progress": True}):
        GaussianMixture(3, n_init=2, random_state=0, max_iter=3, tol=0).fit(X)
    assert "3/3" in term.getvalue() and capsys.readouterr().out == ""


def test_compute_shows_dask_bar_only_when_asked(capsys):
    """``_progress.compute``: dask's bar on standard error under ``daskgmm.progress`` (the
    command sets it on a terminal), nothing otherwise; the same results either way."""
    import time

    from daskgmm._progress import compute

    slow = dask.delayed(lambda x: (time.sleep(0.8), x)[1])(da.arange(6, chunks=2).sum())
    assert compute(slow) == (15,)
    assert capsys.readouterr().err == ""
    with dask.config.set({"daskgmm.progress": True, "scheduler": "threads"}):
        assert compute(slow, da.ones(3, chunks=1))[0] == 15
    captured = capsys.readouterr()
    assert "100% Completed" in captured.err and captured.out == ""


def test_compute_on_a_cluster_draws_distributed_bar_on_stderr(client, capsys):
    from daskgmm._progress import compute

    x = da.arange(12, chunks=3)
    with dask.config.set({"daskgmm.progress": True}):  # ``client`` is the scheduler of this test
        total, doubled = compute(x.sum(), 2 * x)
    assert total == 66 and doubled.tolist() == (2 * np.arange(12)).tolist()
    captured = capsys.readouterr()
    assert "Completed" in captured.err and captured.out == ""


def test_the_first_pass_shows_no_infinite_change():
    term = Terminal()
    with FitProgress(3, True, file=term) as bar:
        bar.update({"iteration": 1, "lower_bound": -1.5, "change": float("inf"), "seconds": 0.5})
        bar._bar.refresh()
    assert "change=first" in term.getvalue() and "inf" not in term.getvalue()
