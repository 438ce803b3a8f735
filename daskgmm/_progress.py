"""A progress bar per EM start, for terminals and notebooks.

One bar per start of a fit: the iteration out of ``max_iter``, the lower bound,
its change and the seconds per iteration. It is drawn with ``tqdm.auto``, which
renders as a notebook widget when ipywidgets is installed and as text otherwise.

When is it shown? :class:`~daskgmm.GaussianMixture` shows it when ``verbose >= 1``
*and* the output is interactive (standard error is a terminal, or the code runs in
a Jupyter kernel). ``verbose=0`` is silent, as in scikit-learn, and so is any
``verbose`` when the output goes to a file or a pipe (logs of batch jobs get
scikit-learn's plain lines instead, which ``verbose >= 1`` always prints). The
``daskgmm fit`` command shows it whenever standard error is a terminal, unless
``--no-progress`` is given.

The other waits (the initialisation's passes, writing a segmentation) go through
:func:`compute`, which draws dask's own progress bar on standard error when dask's
config key ``daskgmm.progress`` is true (``daskgmm fit`` and ``daskgmm segment`` set it
on a terminal): ``dask.diagnostics.ProgressBar`` on the local schedulers, and
``distributed``'s text bar on a cluster.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget can be drawn)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - defensive
        return False
    return shell is not None and hasattr(shell, "kernel")


def is_interactive(stream=None) -> bool:
    """True when a person can watch ``stream`` (default: standard error) or a notebook."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty or in_notebook()


def show_progress(verbose: int, progress: bool | None = None) -> bool:
    """Whether to draw a bar: ``progress`` when given, else dask's config key
    ``daskgmm.progress`` when set (``daskgmm fit`` sets it on a terminal), else
    ``verbose >= 1`` and interactive."""
    if progress is None:
        import dask

        progress = dask.config.get("daskgmm.progress", None)
    if progress is not None:
        return bool(progress)
    return bool(verbose) and is_interactive()


def _current_client():
    """The ``distributed.Client`` that dask computes on now, or None (local schedulers)."""
    if "distributed" not in sys.modules:
        return None
    from dask.base import get_scheduler
    from distributed import Client

    client = getattr(get_scheduler(), "__self__", None)
    return client if isinstance(client, Client) else None


def compute(*collections):
    """``dask.compute(*collections)``, with dask's progress bar on standard error when the
    config key ``daskgmm.progress`` is true (see the module docstring); same results either way."""
    import dask

    if not dask.config.get("daskgmm.progress", False):
        return dask.compute(*collections)
    client = _current_client()
    if client is None:
        with local_bar():
            return dask.compute(*collections)
    futures = client.compute(list(collections))
    cluster_progress(futures)
    return tuple(client.gather(futures))


def local_bar(enabled: bool = True):
    """dask's progress bar for computations on a local scheduler, on standard error (a context;
    a no-op when not ``enabled``)."""
    if not enabled:
        return contextlib.nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar(minimum=0.5, out=sys.stderr)


def cluster_progress(futures) -> None:
    """distributed's text bar for ``futures``, until they finish, on standard error (the bar
    writes to standard output, which is kept for results)."""
    from distributed import progress

    with contextlib.redirect_stdout(sys.stderr):
        progress(futures, notebook=False)


def _change(value: float) -> str:
    """The change of the lower bound as shown: none yet on the first iteration (not ``inf``)."""
    return f"{value:.3g}" if math.isfinite(value) else "first"


class FitProgress:
    """The bar of one fit: a step per pass over the data (a no-op when ``enabled`` is false).

    With several starts or candidates sharing the passes, the bar shows the best
    lower bound so far, the largest change of the pass and the number of live starts.

    Parameters
    ----------
    total : int
        Most passes of the fit (``max_iter``).
    enabled : bool
        Draw the bar; when false every method does nothing (except :meth:`write`,
        which prints).
    desc : str
        Label before the bar, e.g. ``"GMM, 3 starts"``.
    initial : int, default=0
        Passes already done (a resumed fit).
    file : file-like, default=None
        Where to draw; ``sys.stderr`` by default.
    """

    def __init__(self, total: int, enabled: bool, desc: str = "GMM", initial: int = 0, file=None):
        self.enabled = bool(enabled)
        self._bar = None
        #: the last pass shown
        self.last = int(initial)
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="it",
                file=file if file is not None else sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, record: dict) -> None:
        """Advance to ``record["iteration"]`` and show its lower bound, change and seconds."""
        self.last = int(record["iteration"])
        if self._bar is None:
            return
        self._bar.set_postfix(
            {
                "lower bound": f"{record['lower_bound']:.6g}",
                "change": _change(record["change"]),
                "s/it": f"{record['seconds']:.2f}",
                **({"live starts": record["live"]} if "live" in record else {}),
            },
            refresh=False,
        )
        self._bar.update(max(0, int(record["iteration"]) - self._bar.n))

    def write(self, line: str) -> None:
        """Print ``line`` on standard output without breaking the bar."""
        if self._bar is None:
            print(line)
        else:
            self._bar.write(line, file=sys.stdout)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> FitProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# scikit-learn's verbose lines, per start in start order, whatever the path
# --------------------------------------------------------------------------
class VerboseLines:
    """Prints ``verbose`` lines as scikit-learn does: each start's lines together, in
    start order. Starts share passes here, so a later start's lines wait until the
    earlier starts have finished (the first unfinished start prints live)."""

    def __init__(self, verbose: int, interval: int, prefixes: list[str]):
        self.verbose, self.interval, self.prefixes = verbose, interval, prefixes
        self.pending: list[list[str]] = [[] for _ in prefixes]
        self.done = [False] * len(prefixes)
        self.began = [0.0] * len(prefixes)
        self.cursor = 0
        self.write: Callable[[str], None] = print

    def _emit(self, i: int, line: str) -> None:
        if i == self.cursor:
            self.write(line)
        else:
            self.pending[i].append(line)

    def begin(self, i: int, start: int) -> None:
        self.began[i] = time.perf_counter()
        if self.verbose:
            self._emit(i, f"{self.prefixes[i]}Initialization {start}")

    def iteration(self, i: int, record: dict) -> None:
        n_iter = record["iteration"]
        if self.verbose and n_iter % self.interval == 0:
            line = f"{self.prefixes[i]}  Iteration {n_iter}"
            if self.verbose >= 2:
                line += f"\t time lapse {record['seconds']:.5f}s\t ll change {record['change']:.5f}"
            self._emit(i, line)

    def end(self, i: int, state) -> None:
        if self.done[i]:
            return
        if self.verbose:
            msg = (
                f"{self.prefixes[i]}Initialization {'converged' if state.converged else 'did not converge'}."
            )
            if self.verbose >= 2:
                seconds = time.perf_counter() - self.began[i]
                msg += f" time lapse {seconds:.5f}s\t lower bound {state.lower_bound:.5f}."
            self._emit(i, msg)
        self.done[i] = True
        while self.cursor < len(self.done) and self.done[self.cursor]:
            self.cursor += 1
            if self.cursor < len(self.done):
                for line in self.pending[self.cursor]:
                    self.write(line)
                self.pending[self.cursor].clear()


__all__ = ["FitProgress", "VerboseLines", "compute", "in_notebook", "is_interactive", "show_progress"]
