"""daskgmm.plot: assertions on the drawn artists, against closed forms and the model's own density."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from scipy.stats import norm  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from daskgmm import GaussianMixture  # noqa: E402
from daskgmm import plot as gplot  # noqa: E402
from tests.conftest import make_mixture  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data3d():
    X, *_ = make_mixture(n_samples=900, n_features=3, n_components=3, seed=1)
    return X


@pytest.fixture(scope="module")
def fitted(data3d):
    return {
        ct: GaussianMixture(3, covariance_type=ct, random_state=0, tol=1e-4).fit(data3d)
        for ct in COVARIANCE_TYPES
    }


def _full_covariance(model, k):
    """Component k's full D×D covariance, by the definition of each covariance type."""
    c, d = model.covariances_, model.means_.shape[1]
    return {
        "full": lambda: c[k],
        "tied": lambda: c,
        "diag": lambda: np.diag(c[k]),
        "spherical": lambda: c[k] * np.eye(d),
    }[model.covariance_type]()


def _ellipses(ax):
    return [p for p in ax.patches if isinstance(p, Ellipse)]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dims", [(0, 1), (2, 0)])
def test_ellipse_boundary_is_the_mahalanobis_contour(fitted, covariance_type, dims):
    model = fitted[covariance_type]
    ax = gplot.plot_ellipses(model, dims=dims, n_std=(1.0, 2.0))
    ellipses = _ellipses(ax)
    assert len(ellipses) == 2 * model.n_components
    for i, e in enumerate(ellipses):
        k, n_std = divmod(i, 2)
        n_std = (1.0, 2.0)[n_std]
        cov = _full_covariance(model, k)[np.ix_(dims, dims)]
        mean = model.means_[k, list(dims)]
        # axes: 2·n_std·sqrt(eigenvalues of the marginal covariance)
        lam = np.linalg.eigvalsh(cov)
        np.testing.assert_allclose(sorted([e.width, e.height]), 2 * n_std * np.sqrt(lam), rtol=1e-10)
        np.testing.assert_allclose(e.center, mean, rtol=1e-12)
        # the boundary (the patch's unit circle in data coordinates) lies at Mahalanobis distance n_std
        t = np.linspace(0, 2 * np.pi, 50)
        verts = e.get_patch_transform().transform(np.c_[np.cos(t), np.sin(t)])
        diff = verts - mean
        maha = np.sqrt(np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff))
        np.testing.assert_allclose(maha, n_std, rtol=1e-6)
        assert e.get_label() == f"component {k}"


def test_ellipse_points_are_a_bounded_sample_coloured_by_prediction(fitted, data3d):
    model = fitted["full"]
    X = da.from_array(data3d, chunks=200)
    ax = gplot.plot_ellipses(model, X, max_points=300, random_state=3)
    (scatter,) = ax.collections
    offsets = np.asarray(scatter.get_offsets())
    assert offsets.shape == (300, 2)
    # the drawn points are rows of X, and each has its predicted component's colour
    rows = {tuple(r) for r in np.round(data3d[:, :2], 12)}
    assert all(tuple(r) in rows for r in np.round(offsets, 12))
    full_rows = np.array(
        [data3d[np.flatnonzero(np.all(np.isclose(data3d[:, :2], o), axis=1))[0]] for o in offsets]
    )
    expected = np.asarray(gplot.component_colors(3))[model.predict(full_rows)]
    np.testing.assert_allclose(scatter.get_facecolors()[:, :3], expected[:, :3])


def test_ellipses_need_a_fitted_model_and_valid_dims(fitted):
    with pytest.raises(NotFittedError):
        gplot.plot_ellipses(GaussianMixture(2))
    with pytest.raises(ValueError, match=r"dims must be two different feature indices in \[0, 3\)"):
        gplot.plot_ellipses(fitted["full"], dims=(1, 1))
    with pytest.raises(ValueError, match="X has 2 features but the model was fitted on 3"):
        gplot.plot_ellipses(fitted["full"], np.zeros((10, 2)))


def test_lower_bound_line_is_the_history(fitted):
    model = fitted["diag"]
    ax = gplot.plot_lower_bound(model)
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, model.n_iter_ + 1))
    np.testing.assert_allclose(line.get_ydata(), model.lower_bounds_)
    assert line.get_ydata()[-1] == pytest.approx(model.lower_bound_)
    # EM never decreases the likelihood
    assert np.all(np.diff(line.get_ydata()) > -1e-10)
    # plain sequences work too, and a second line shares the axes
    gplot.plot_lower_bound([-3.0, -2.0, -1.5], ax=ax, label="other")
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [-3.0, -2.0, -1.5])


def test_lower_bound_errors():
    with pytest.raises(ValueError, match=r"not fitted yet\. Call fit\(X\)"):
        gplot.plot_lower_bound(GaussianMixture(2))
    with pytest.raises(ValueError, match="No lower bounds to plot: the history is empty"):
        gplot.plot_lower_bound([])


def test_density_1d_curves_are_the_mixture_density():
    rng = np.random.RandomState(0)
    x = np.concatenate([rng.normal(-4, 0.7, 400), rng.normal(0, 1.0, 800), rng.normal(5, 1.5, 300)])
    model = GaussianMixture(3, random_state=0).fit(x[:, None])
    ax = gplot.plot_density_1d(model, x, bins=30)
    lines = ax.lines
    assert [ln.get_label() for ln in lines] == ["component 0", "component 1", "component 2", "mixture"]
    grid = lines[-1].get_xdata()
    # the dashed curve is exp(score_samples): the model's own log-density, another code path
    np.testing.assert_allclose(lines[-1].get_ydata(), np.exp(model.score_samples(grid[:, None])), rtol=1e-9)
    for k in range(3):
        ref = model.weights_[k] * norm.pdf(grid, model.means_[k, 0], np.sqrt(model.covariances_[k, 0, 0]))
        np.testing.assert_allclose(lines[k].get_ydata(), ref, rtol=1e-9)
    # the histogram is density-normalised: bar areas sum to 1
    bars = [p for p in ax.patches if p.get_width() > 0]
    assert len(bars) == 30
    assert sum(p.get_width() * p.get_height() for p in bars) == pytest.approx(1.0)


def test_criteria_mark_each_minimum():
    ks = [1, 2, 3, 4, 5]
    bic = [10.0, 6.0, 4.0, 5.0, 7.0]
    aic = [9.0, 5.0, 3.0, 2.5, 2.8]
    ax = gplot.plot_criteria(ks, bic=bic, aic=aic)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["BIC (min at K=3)", "AIC (min at K=4)"]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in stars] == [(3, 4.0), (4, 2.5)]


def test_criteria_errors():
    with pytest.raises(ValueError, match="Give bic=..., aic=... or both"):
        gplot.plot_criteria([1, 2])
    with pytest.raises(ValueError, match="BIC has 3 values but n_components has 2"):
        gplot.plot_criteria([1, 2], bic=[1.0, 2.0, 3.0])


@pytest.mark.parametrize("kind", ["numpy", "dask", "xarray"])
def test_label_map_pixels_match_the_legend(kind):
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 4, size=(12, 15))
    labels[:2, :3] = -1
    arr = {
        "numpy": lambda: labels,
        "dask": lambda: da.from_array(labels, chunks=5),
        "xarray": lambda: xr.DataArray(da.from_array(labels, chunks=5), dims=("y", "x")),
    }[kind]()
    ax = gplot.plot_label_map(arr, n_components=5, names=list("abcde"))
    handles = ax.get_legend().legend_handles
    assert [h.get_label() for h in handles] == ["a", "b", "c", "d", "e", "nodata"]
    rgba = ax.images[0].get_array()
    for k in range(5):
        for pix in rgba[labels == k]:
            np.testing.assert_allclose(pix, handles[k].get_facecolor())
    np.testing.assert_allclose(rgba[labels == -1], np.tile(to_rgba((0.9, 0.9, 0.9, 1.0)), (6, 1)))
    # classes get distinct colours
    assert len({tuple(h.get_facecolor()) for h in handles}) == 6


def test_label_map_same_colours_as_ellipses(fitted, data3d):
    model = fitted["full"]
    ax = gplot.plot_label_map(model.predict(data3d[:900]).reshape(30, 30), n_components=3)
    ax2 = gplot.plot_ellipses(model)
    for h, e in zip(ax.get_legend().legend_handles, _ellipses(ax2)):
        np.testing.assert_allclose(h.get_facecolor(), e.get_edgecolor())


def test_label_map_errors():
    with pytest.raises(ValueError, match=r"labels must be a 2-D map \(height, width\); got shape \(10,\)"):
        gplot.plot_label_map(np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="labels go up to 4 but n_components=3"):
        gplot.plot_label_map(np.full((3, 3), 4), n_components=3)
    with pytest.raises(ValueError, match="names has 1 entries for 2 classes"):
        gplot.plot_label_map(np.array([[0, 1]]), names=["a"])
    with pytest.raises(ValueError, match="labels must be integers; got dtype float64"):
        gplot.plot_label_map(np.array([[0.5, 1.0]]))


def test_missing_matplotlib_says_how_to_install(monkeypatch, fitted):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'daskgmm\[plot\]'"):
        gplot.plot_lower_bound(fitted["full"])


def test_importing_daskgmm_plot_does_not_import_matplotlib():
    code = "import sys, daskgmm, daskgmm.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_band_histograms_count_each_class_per_band():
    rng = np.random.RandomState(0)
    image = rng.normal(size=(20, 30, 3)) + np.arange(3)
    labels = rng.randint(-1, 3, size=(20, 30))
    axes = gplot.plot_band_histograms(
        da.from_array(image, chunks=(10, 10, 3)),
        da.from_array(labels, chunks=10),
        bins=15,
        band_names=["r", "g", "b"],
    )
    assert [ax.get_title() for ax in axes] == ["r", "g", "b"]
    colors = gplot.component_colors(3)
    for b, ax in enumerate(axes):
        edges = np.histogram_bin_edges(image[..., b][labels >= 0], bins=15)
        steps = [p for p in ax.patches]
        assert [p.get_label() for p in steps] == ["class 0", "class 1", "class 2"]
        for k, poly in enumerate(steps):
            counts, _ = np.histogram(image[..., b][labels == k], bins=edges)
            # the step outline's tops are the class's counts in the band's shared bins
            tops = poly.get_xy()[1:-1:2, 1][: len(counts)]
            np.testing.assert_array_equal(tops, counts)
            np.testing.assert_allclose(poly.get_edgecolor(), colors[k])
    # nodata (-1) pixels are left out: the classes' counts add up to the valid pixels
    assert (
        sum(np.histogram(image[..., 0][labels == k], bins=15)[0].sum() for k in range(3))
        == (labels >= 0).sum()
    )


def test_band_histograms_errors():
    with pytest.raises(ValueError, match=r"image has spatial shape \(4, 5\) but labels have shape \(5, 4\)"):
        gplot.plot_band_histograms(np.zeros((4, 5, 2)), np.zeros((5, 4), int))
    with pytest.raises(ValueError, match="band_names has 1 entries for 2 bands"):
        gplot.plot_band_histograms(np.zeros((4, 5, 2)), np.zeros((4, 5), int), band_names=["a"])
