"""scikit-learn's own mixture tests, run against daskgmm (a true drop-in, issue #13).

At test time the source of ``sklearn/mixture/tests/test_gaussian_mixture.py``,
``test_mixture.py`` and ``test_bayesian_mixture.py`` is read from the *installed* scikit-learn
(nothing is vendored), the one import of ``GaussianMixture`` / ``BayesianGaussianMixture`` is
rewritten, and pytest runs the files in a subprocess with
scikit-learn's own conftest (``-p sklearn.conftest``: its ``global_dtype`` and
``global_random_seed`` fixtures), ``SKLEARN_RUN_FLOAT32_TESTS=1`` (the float32 cases) and
``SCIPY_ARRAY_API=1`` (its array-API tests), twice:

* ``numpy``: ``from daskgmm import GaussianMixture`` (and ``BayesianGaussianMixture``): numpy
  input, numpy output;
* ``dask``: ``from tests._sklearn_suite import GaussianMixture``: the same estimator fed
  unevenly chunked dask arrays (four chunks of unequal size), lazy results computed.

Each scikit-learn test function is one item here, per variant: it fails when any of its
cases failed (with their messages), skips when all of them skipped, passes otherwise. One
subprocess per variant runs the functions this session selected (``-k`` works as usual); the
variants' subprocesses run at the same time. By default both variants run everything but the
two dask cases in ``SLOW_ON_DASK`` (``-m slow`` runs those): 40-65 s per variant on this
project's two shared cores, about 60 s for both at once (112 s one after the other).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskgmm import GaussianMixture

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "sklearn.mixture.tests.test_gaussian_mixture",
    "sklearn.mixture.tests.test_mixture",
    "sklearn.mixture.tests.test_bayesian_mixture",
)
VARIANTS = {"numpy": "daskgmm", "dask": "tests._sklearn_suite"}

#: tests left out: they exercise scikit-learn's private helpers or private methods, not the estimator
LEFT_OUT = {
    "test_suffstat_sk_full": "sklearn's private _estimate_gaussian_covariances_full only",
    "test_suffstat_sk_tied": "sklearn's private _estimate_gaussian_covariances_{full,tied} only",
    "test_suffstat_sk_diag": "sklearn's private _estimate_gaussian_covariances_{full,diag} only",
    "test_gaussian_suffstat_sk_spherical": "sklearn's private _estimate_gaussian_covariances_spherical only",
    "test_compute_log_det_cholesky": "sklearn's private _compute_log_det_cholesky only",
    "test_gaussian_mixture_log_probabilities": "sklearn's private _estimate_log_gaussian_prob only",
    "test_gaussian_mixture_precisions_init": (
        "calls the private methods _set_parameters and _initialize of sklearn's estimator "
        "(daskgmm's equivalent: test_precisions_init_gives_sklearns_cholesky below)"
    ),
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        "counts calls of sklearn's private _estimate_gaussian_parameters, which daskgmm never calls "
        "(daskgmm's equivalent: test_precisions_init_gives_sklearns_cholesky below)"
    ),
    # BayesianGaussianMixture (test_bayesian_mixture.py)
    "test_log_dirichlet_norm": "sklearn's private _log_dirichlet_norm only",
    "test_log_wishart_norm": "sklearn's private _log_wishart_norm only",
    "test_compare_covar_type": (
        "calls the private methods _check_parameters and _initialize_parameters of sklearn's estimator "
        "(daskgmm's first variational step from the same start: tests/test_bayesian.py::test_parity_with_sklearn)"
    ),
}

#: (variants, test, substring of the case id, reason): deliberate differences, skipped with
#: the reason (each is a line in README.md, "Same numbers as scikit-learn")
DIFFERENCES = [
    (
        ("numpy", "dask"),
        "test_check_weights",
        "",
        "sklearn's range error prints the smallest weight as 'max value' and the largest as 'min value'; "
        "daskgmm prints them the right way round (its other checks: tests/test_validation.py)",
    ),
    (
        ("numpy", "dask"),
        "test_gaussian_mixture_array_api_compliance",
        "array_api_strict",
        "array-API inputs are converted to NumPy at the boundary and results are NumPy arrays, not "
        "arrays of the input's namespace and device (the NumPy namespace cases run)",
    ),
    (
        ("numpy", "dask"),
        "test_gaussian_mixture_raises_where_array_api_not_implemented",
        "",
        "kmeans and k-means++ initialisation work under array_api_dispatch (inputs become NumPy), "
        "so there is no NotImplementedError to raise",
    ),
    (
        ("dask",),
        "test_score",
        "float32",
        "score() of lazy input sums the float32 log-densities chunk by chunk in float64; the test wants "
        "numpy's float32 pairwise mean of score_samples to 1.5e-7, one float32 ulp (numpy input gives it)",
    ),
]


def _sources() -> dict[str, str] | None:
    """``{file name: source}`` of scikit-learn's mixture tests, or None when not installed."""
    out = {}
    for module in MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return None
        out[Path(spec.origin).name] = Path(spec.origin).read_text()
    return out


SOURCES = _sources()


def _test_names(sources: dict[str, str] | None) -> list[tuple[str, str]]:
    """``(file, function)`` of every top-level test function, in file order."""
    if sources is None:
        return []
    return [
        (fname, node.name)
        for fname, src in sources.items()
        for node in ast.parse(src).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


#: slow on dask input (marked ``slow`` there; run by default on numpy input): dozens of
#: k-means-initialised fits of 50-200 rows, where the dask scheduler's per-iteration overhead
#: dominates; the dask path of ``n_init`` > 1 runs by default in test_multiple_init,
#: test_gaussian_mixture_fit_predict_n_init and test_gaussian_mixture_fit
SLOW_ON_DASK = {
    "test_init",
    "test_gaussian_mixture_fit_best_params",
    # BayesianGaussianMixture: 16 fits of 100 iterations; 10 starts (numpy input runs them)
    "test_invariant_translation",
    "test_bayesian_mixture_fit_predict_n_init",
}

ALL_TESTS = _test_names(SOURCES)
CASES = [
    pytest.param(
        variant,
        f,
        n,
        id=f"{n}-{variant}",
        marks=[pytest.mark.slow] if variant == "dask" and n in SLOW_ON_DASK else [],
    )
    for f, n in ALL_TESTS
    if n not in LEFT_OUT
    for variant in VARIANTS
]


def retarget(source: str, module: str) -> str:
    """Rewrite the import of ``GaussianMixture`` and ``BayesianGaussianMixture`` (and only those)
    to come from ``module``."""
    patterns = [
        (r"^from sklearn\.mixture import GaussianMixture$", f"from {module} import GaussianMixture"),
        (
            r"^from sklearn\.mixture import BayesianGaussianMixture, GaussianMixture$",
            f"from {module} import BayesianGaussianMixture, GaussianMixture",
        ),
        (
            r"^from sklearn\.mixture import BayesianGaussianMixture$",
            f"from {module} import BayesianGaussianMixture",
        ),
    ]
    for pattern, repl in patterns:
        new, n = re.subn(pattern, repl, source, flags=re.MULTILINE)
        if n:
            assert n == 1, f"{n} imports of the mixtures matched {pattern!r}"
            return new
    raise AssertionError("scikit-learn's test file no longer imports its mixtures as expected")


def start_suite(variant: str, workdir: Path, only: list[str]) -> tuple[subprocess.Popen, Path]:
    """Start a subprocess running the tests ``only`` of the retargeted files; returns it and the
    path of its JUnit XML (read by :func:`suite_results`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for fname, src in SOURCES.items():
        (workdir / fname).write_text(retarget(src, VARIANTS[variant]))
    (workdir / "pytest.ini").write_text("[pytest]\naddopts =\n")
    spec = workdir / "suite.json"
    differences = [d[1:] for d in DIFFERENCES if variant in d[0]]
    spec.write_text(json.dumps({"left_out": sorted(LEFT_OUT), "differences": differences, "only": only}))
    xml = workdir / "results.xml"
    env = dict(
        os.environ,
        SKLEARN_RUN_FLOAT32_TESTS="1",
        SCIPY_ARRAY_API="1",
        DASKGMM_SKLEARN_SUITE=str(spec),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "sklearn.conftest",
        "-p",
        "tests._sklearn_suite",
        "--rootdir",
        str(workdir),
        "-c",
        str(workdir / "pytest.ini"),
        # daskgmm's own warnings are errors, as in this test suite (pyproject.toml)
        "-W",
        "error::UserWarning:daskgmm",
        "-W",
        "error::RuntimeWarning:daskgmm",
        "-W",
        "ignore::pytest.PytestRemovedIn10Warning",  # sklearn's generator parametrisations
        f"--junitxml={xml}",
        "-o",
        "junit_family=xunit2",
        *SOURCES,
    ]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, xml


def suite_results(proc: subprocess.Popen, xml: Path) -> dict[str, list[dict]]:
    """Wait for a :func:`start_suite` run; ``{test function: [case results]}`` from its JUnit XML."""
    try:
        stdout, stderr = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    if not xml.exists():
        raise AssertionError(f"pytest did not run scikit-learn's tests:\n{stdout[-4000:]}\n{stderr[-4000:]}")
    results: dict[str, list[dict]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "")
        stem = case.get("classname", "").split(".")[-1]
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = tag
                message = (node.get("message") or "") + (
                    "\n" + node.text if tag != "skipped" and node.text else ""
                )
                break
        results.setdefault(f"{stem}::{name.split('[')[0]}", []).append(
            {"id": name, "outcome": outcome, "message": message}
        )
    return results


@pytest.fixture(scope="session")
def suite(request, tmp_path_factory):
    """``results(variant)``: one subprocess run per variant, of the tests this session selected.
    The first call starts every selected variant's run at once (they are independent, and each
    waits on its own imports and processes part of the time), then waits for the one asked."""
    cache: dict[str, dict] = {}
    running: dict[str, tuple] = {}
    selected = [
        item.callspec.params
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_sklearn"
    ]

    def results(variant: str) -> dict[str, list[dict]]:
        if not cache and not running:
            for v in sorted({p["variant"] for p in selected}):
                only = sorted(
                    {f"{Path(p['fname']).stem}::{p['name']}" for p in selected if p["variant"] == v}
                )
                running[v] = start_suite(v, tmp_path_factory.mktemp(f"sklearn_suite_{v}"), only)
        if variant not in cache:
            cache[variant] = suite_results(*running.pop(variant))
        return cache[variant]

    yield results
    for proc, _ in running.values():  # started but never asked for (a -k selection)
        proc.kill()
        proc.communicate()


needs_sources = pytest.mark.skipif(SOURCES is None, reason="scikit-learn's tests are not installed")


@needs_sources
@pytest.mark.parametrize("variant, fname, name", CASES)
def test_sklearn(suite, variant, fname, name):
    """One of scikit-learn's mixture tests (all its cases) against daskgmm."""
    cases = suite(variant).get(f"{Path(fname).stem}::{name}")
    assert cases, f"{fname}::{name} ran no case"
    bad = [c for c in cases if c["outcome"] in ("failure", "error")]
    if bad:
        pytest.fail(
            "\n\n".join(f"{c['id']}: {c['outcome']}\n{c['message']}" for c in bad)[-6000:], pytrace=False
        )
    if all(c["outcome"] == "skipped" for c in cases):
        pytest.skip("; ".join(sorted({c["message"] for c in cases})))


@needs_sources
def test_left_out_and_differences_name_existing_tests():
    """The tables above name tests that exist in the installed scikit-learn (no silent drift)."""
    names = {n for _, n in ALL_TESTS}
    assert set(LEFT_OUT) <= names, set(LEFT_OUT) - names
    assert {d[1] for d in DIFFERENCES} <= names, {d[1] for d in DIFFERENCES} - names


def test_readme_names_the_checked_scikit_learn_version():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Same numbers as scikit-learn", 1)[1].split("\n## ", 1)[0]
    assert "tests/test_sklearn_suite.py" in section
    assert re.search(r"scikit-learn \d+\.\d+", section)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_precisions_init_gives_sklearns_cholesky(covariance_type):
    """What the two left-out private-API tests check, through the public API: with all three
    initial parameters given, the start *is* them (nothing re-estimated from the data), and its
    precision Cholesky factor is scikit-learn's (#26415), so one EM step lands where
    scikit-learn's does."""
    rng = np.random.RandomState(0)
    X = rng.random_sample((100, 3))
    A = rng.random_sample((4, 3, 3))
    full = np.einsum("kij,klj->kil", A, A) + np.eye(3)
    precisions = {
        "full": full,
        "tied": full[0],
        "diag": 1 + rng.random_sample((4, 3)),
        "spherical": 1 + rng.random_sample(4),
    }[covariance_type]
    init = dict(
        weights_init=np.full(4, 0.25), means_init=rng.random_sample((4, 3)), precisions_init=precisions
    )
    start = GaussianMixture(4, covariance_type=covariance_type, max_iter=0, **init).fit(X)
    np.testing.assert_array_equal(start.means_, init["means_init"])
    np.testing.assert_array_equal(start.weights_, init["weights_init"])
    np.testing.assert_allclose(start.precisions_, precisions, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(4, covariance_type=covariance_type, max_iter=1, **init).fit(X)
        ref = SkGaussianMixture(4, covariance_type=covariance_type, max_iter=1, **init).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(ours, name), getattr(ref, name), rtol=1e-10, atol=1e-12, err_msg=name
        )
