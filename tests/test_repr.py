"""The Jupyter HTML repr: scikit-learn's parameter view plus the fit summary."""

from __future__ import annotations

import html
import re
import warnings

import numpy as np
import pytest
import sklearn
from IPython.core.formatters import DisplayFormatter
from sklearn.exceptions import ConvergenceWarning

import daskgmm
from daskgmm import GaussianMixture
from tests.conftest import make_mixture


def _summary_rows(page: str) -> dict[str, str]:
    """The rows of the daskgmm summary table, as {header: text}."""
    start = page.index('<div class="daskgmm-summary">')
    table = page[start:]
    rows = re.findall(r"<th[^>]*>(.*?)</th><td[^>]*>(.*?)</td>", table)
    return {k: html.unescape(re.sub(r"<[^>]+>", "", v)) for k, v in rows}


@pytest.fixture(scope="module")
def fitted():
    X, *_ = make_mixture(n_samples=500, n_features=2, n_components=3, seed=2)
    return GaussianMixture(3, covariance_type="diag", random_state=0).fit(X), X


def test_fitted_summary_shows_the_fit(fitted):
    model, _ = fitted
    page = model._repr_html_()
    assert "sk-top-container" in page  # scikit-learn's parameter view is kept
    rows = _summary_rows(page)
    assert rows["components (K)"] == "3"
    assert rows["covariance type"] == "diag"
    assert rows["features"] == "2"
    assert rows["converged"] == ("yes" if model.converged_ else "no (raise max_iter or tol)")
    assert rows["EM iterations"] == str(model.n_iter_)
    assert float(rows["lower bound"]) == pytest.approx(model.lower_bound_, rel=1e-5)
    seconds = sum(r["seconds"] for r in model.history_)
    assert float(rows["time in EM"].removesuffix(" s")) == pytest.approx(seconds, rel=1e-2)
    np.testing.assert_allclose([float(w) for w in rows["weights"].split(", ")], model.weights_, rtol=1e-2)


def test_unfitted_model_renders_with_a_not_fitted_line():
    page = GaussianMixture(4, covariance_type="tied")._repr_html_()
    assert "sk-top-container" in page
    assert "not fitted yet" in page
    assert "n_components" in page and "tied" in page  # the parameter view shows the params
    assert _summary_rows(page) == {}


def test_not_converged_is_flagged():
    X, *_ = make_mixture(n_samples=300, n_features=2, n_components=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = GaussianMixture(3, max_iter=1, tol=1e-12, random_state=0).fit(X)
    assert not model.converged_
    assert _summary_rows(model._repr_html_())["converged"] == "no (raise max_iter or tol)"


def test_jupyter_display_gets_the_summary(fitted):
    """What Jupyter calls: IPython's display formatter on the object."""
    model, _ = fitted
    data, _ = DisplayFormatter().format(model)
    assert data["text/plain"] == repr(model)
    assert _summary_rows(data["text/html"])["EM iterations"] == str(model.n_iter_)
    assert model._repr_mimebundle_()["text/html"].count("daskgmm-summary") == 1


def test_text_display_config_is_respected(fitted):
    model, _ = fitted
    with sklearn.config_context(display="text"):
        assert not hasattr(model, "_repr_html_")
        assert "text/html" not in model._repr_mimebundle_()


def test_loaded_model_renders_the_same_summary(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "m.npz")
    loaded = daskgmm.load(tmp_path / "m.npz")
    assert _summary_rows(loaded._repr_html_()) == _summary_rows(model._repr_html_())


def test_many_weights_are_truncated():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(400, 2)) + rng.randint(0, 15, size=(400, 1)) * 6
    model = GaussianMixture(15, covariance_type="spherical", random_state=0, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    assert _summary_rows(model._repr_html_())["weights"].endswith("… (3 more)")
