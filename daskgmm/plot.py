"""Pictures of a fitted mixture (matplotlib, an optional extra: ``pip install 'daskgmm[plot]'``).

Every function draws on ``ax`` (a new figure when None) and returns the axes, so
the artists can be restyled or inspected. Data arguments take whatever
:class:`~daskgmm.GaussianMixture` takes (numpy, dask, Zarr, xarray); large inputs
are thinned to a seeded random sample of at most ``max_points`` rows before they
are drawn, so plotting never loads a dataset on the driver.

- :func:`plot_lower_bound` — the EM lower bound per iteration (from ``history_``).
- :func:`plot_ellipses` — components as covariance ellipses over 2-D data.
- :func:`plot_density_1d` — the mixture density and its weighted components over a histogram.
- :func:`plot_criteria` — BIC / AIC against the number of components, minimum marked.
- :func:`plot_label_map` — a 2-D label map with one legend entry per class (nodata apart).
- :func:`plot_band_histograms` — per band, the histogram of each class's pixel values.

Components keep the same colour in every plot (:func:`component_colors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.axes import Axes

    from daskgmm._gaussian_mixture import GaussianMixture

__all__ = [
    "component_colors",
    "covariance_2d",
    "plot_criteria",
    "plot_density_1d",
    "plot_ellipses",
    "plot_band_histograms",
    "plot_label_map",
    "plot_lower_bound",
]

_MISSING = (
    "daskgmm.plot needs matplotlib, which is not installed. "
    "Install the plotting extra with: pip install 'daskgmm[plot]'"
)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return plt


def _axes(ax, figsize=(5.0, 4.0)):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _check_fitted(model) -> None:
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)


def component_colors(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct RGBA colours, the same ones in every daskgmm plot.

    ``tab10`` up to 10 classes, ``tab20`` up to 20, evenly spaced ``hsv`` hues beyond.

    Parameters
    ----------
    n : int

    Returns
    -------
    colors : list of RGBA tuples, length n
    """
    try:
        from matplotlib import colormaps
    except ImportError as e:
        raise ImportError(_MISSING) from e
    if n <= 10:
        cmap = colormaps["tab10"]
        return [tuple(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [tuple(cmap(i)) for i in range(n)]
    cmap = colormaps["hsv"]
    return [tuple(cmap(i / n)) for i in range(n)]


# --------------------------------------------------------------------------
# data: a bounded, seeded sample of rows as numpy
# --------------------------------------------------------------------------
def _sample_rows(X, max_points: int | None, random_state=0) -> np.ndarray:
    """At most ``max_points`` rows of ``X`` (any input daskgmm takes) as a 2-D numpy array."""
    from daskgmm._input import to_dask

    if isinstance(X, np.ndarray) and X.ndim == 1:
        X = X[:, None]
    elif isinstance(X, (list, tuple)) and np.ndim(X) == 1:
        X = np.asarray(X, dtype=float)[:, None]
    inp = to_dask(X, min_samples=1)
    arr = inp.data
    n = inp.n_samples
    if max_points is not None and n > max_points:
        rng = np.random.RandomState(random_state)
        idx = np.sort(rng.choice(n, size=max_points, replace=False))
        arr = arr[idx]
    return np.asarray(arr.compute() if hasattr(arr, "compute") else arr)


# --------------------------------------------------------------------------
# lower bound per iteration
# --------------------------------------------------------------------------
def _lower_bounds(source) -> list[float]:
    history = getattr(source, "history_", None)
    if history is None and hasattr(source, "lower_bounds_"):
        return [float(v) for v in source.lower_bounds_]
    if history is None and hasattr(source, "get_params"):
        raise ValueError(
            "This GaussianMixture has no history of lower bounds: it is not fitted yet. "
            "Call fit(X) before plot_lower_bound(model)."
        )
    if history is None:
        history = source
    values = []
    for rec in history:
        values.append(float(rec["lower_bound"]) if isinstance(rec, dict) else float(rec))
    return values


def plot_lower_bound(source, ax: Axes | None = None, *, label: str | None = None, **line_kw) -> Axes:
    """The EM lower bound (mean log-likelihood) at each iteration.

    Parameters
    ----------
    source : GaussianMixture, list of dict, or sequence of float
        A fitted model (its ``history_``), a history (dicts with ``lower_bound``),
        or the lower bounds themselves.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    label : str, default=None
        Legend label of the line.
    **line_kw
        Passed to ``ax.plot``.

    Returns
    -------
    ax : matplotlib Axes
        The line's x data are the iteration numbers 1..n_iter, y data the lower bounds.
    """
    values = _lower_bounds(source)
    if not values:
        raise ValueError(
            "No lower bounds to plot: the history is empty (was the model fitted with max_iter=0?)."
        )
    ax = _axes(ax)
    line_kw.setdefault("marker", "o")
    line_kw.setdefault("markersize", 3)
    ax.plot(np.arange(1, len(values) + 1), values, label=label, **line_kw)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("lower bound (mean log-likelihood)")
    ax.set_title("Lower bound per iteration")
    if len(values) < 20:
        ax.set_xticks(np.arange(1, len(values) + 1))
    if label is not None:
        ax.legend()
    return ax


# --------------------------------------------------------------------------
# ellipses over 2-D data
# --------------------------------------------------------------------------
def covariance_2d(model: GaussianMixture, k: int, dims: Sequence[int] = (0, 1)) -> np.ndarray:
    """The 2×2 covariance of component ``k`` on features ``dims`` (any covariance type).

    Parameters
    ----------
    model : fitted GaussianMixture
    k : int
        Component index.
    dims : pair of int, default=(0, 1)
        The two features (the marginal covariance on them).

    Returns
    -------
    cov : ndarray of shape (2, 2)
    """
    i, j = dims
    ct = model.covariance_type
    c = np.asarray(model.covariances_)
    if ct == "full":
        full = c[k]
    elif ct == "tied":
        full = c
    elif ct == "diag":
        full = np.diag(c[k])
    elif ct == "spherical":
        full = np.eye(np.shape(model.means_)[1]) * c[k]
    else:
        raise ValueError(f"Unknown covariance_type {ct!r}.")
    return full[np.ix_([i, j], [i, j])]


def _ellipse_geometry(cov2: np.ndarray, n_std: float) -> tuple[float, float, float]:
    """(width, height, angle in degrees) of the ``n_std`` ellipse of a 2×2 covariance."""
    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    major = vecs[:, 1]
    angle = float(np.degrees(np.arctan2(major[1], major[0])))
    return 2 * n_std * float(np.sqrt(vals[1])), 2 * n_std * float(np.sqrt(vals[0])), angle


def plot_ellipses(
    model: GaussianMixture,
    X=None,
    ax: Axes | None = None,
    *,
    dims: Sequence[int] = (0, 1),
    n_std: float | Sequence[float] = 2.0,
    color_points: bool = True,
    max_points: int = 5000,
    random_state=0,
    alpha: float = 0.25,
    point_size: float = 4.0,
) -> Axes:
    """Each component as its covariance ellipse(s), over a scatter of the data.

    The ellipse of ``n_std`` standard deviations has axes ``2·n_std·sqrt(λ)``,
    where λ are the eigenvalues of the component's covariance on ``dims``
    (:func:`covariance_2d`), centred on the component's mean.

    Parameters
    ----------
    model : fitted GaussianMixture
    X : array-like of shape (n_samples, n_features), default=None
        Data to scatter under the ellipses (numpy, dask, Zarr or xarray; at most
        ``max_points`` seeded random rows are drawn). None draws ellipses only.
    ax : matplotlib Axes, default=None
    dims : pair of int, default=(0, 1)
        The two features to show.
    n_std : float or sequence of float, default=2.0
        One ellipse per value for every component (e.g. ``(1, 2)``).
    color_points : bool, default=True
        Colour the points by their predicted component.
    max_points : int, default=5000
    random_state : int, default=0
        Seeds the choice of points.
    alpha : float, default=0.25
        Fill opacity of the ellipses.
    point_size : float, default=4.0

    Returns
    -------
    ax : matplotlib Axes
        The ellipses are ``matplotlib.patches.Ellipse`` patches labelled
        ``"component k"``, in component order (all ``n_std`` of component 0 first).
    """
    from matplotlib.patches import Ellipse

    _check_fitted(model)
    dims = tuple(int(d) for d in dims)
    n_features = np.shape(model.means_)[1]
    if len(dims) != 2 or dims[0] == dims[1] or not all(0 <= d < n_features for d in dims):
        raise ValueError(
            f"dims must be two different feature indices in [0, {n_features}); got {dims}. "
            "Pick the two features to draw, e.g. dims=(0, 1)."
        )
    stds = [float(n_std)] if np.ndim(n_std) == 0 else [float(s) for s in n_std]
    ax = _axes(ax)
    k = len(model.weights_)
    colors = component_colors(k)
    if X is not None:
        pts = _sample_rows(X, max_points, random_state)
        if pts.shape[1] != n_features:
            raise ValueError(f"X has {pts.shape[1]} features but the model was fitted on {n_features}.")
        if color_points:
            labels = np.asarray(model.predict(pts))
            c = np.asarray(colors)[labels]
        else:
            c = "0.4"
        ax.scatter(pts[:, dims[0]], pts[:, dims[1]], s=point_size, c=c, linewidths=0, alpha=0.6)
    means = np.asarray(model.means_)
    for j in range(k):
        cov2 = covariance_2d(model, j, dims)
        for s in stds:
            w, h, angle = _ellipse_geometry(cov2, s)
            e = Ellipse(
                xy=means[j, list(dims)],
                width=w,
                height=h,
                angle=angle,
                facecolor=colors[j][:3] + (alpha,),
                edgecolor=colors[j],
                linewidth=1.5,
                label=f"component {j}",
            )
            ax.add_patch(e)
        ax.plot(*means[j, list(dims)], marker="+", color="k", markersize=8)
    ax.autoscale_view()
    ax.set_xlabel(f"feature {dims[0]}")
    ax.set_ylabel(f"feature {dims[1]}")
    ax.set_title(f"{k} components, covariance_type={model.covariance_type!r}")
    return ax


# --------------------------------------------------------------------------
# 1-D density
# --------------------------------------------------------------------------
def _component_variances_1d(model, feature: int) -> np.ndarray:
    return np.array([covariance_2d(model, j, (feature, feature))[0, 0] for j in range(len(model.weights_))])


def plot_density_1d(
    model: GaussianMixture,
    X=None,
    ax: Axes | None = None,
    *,
    feature: int = 0,
    bins: int = 50,
    n_grid: int = 400,
    max_points: int = 100_000,
    random_state=0,
) -> Axes:
    """Mixture density and its weighted components along one feature, over a histogram.

    Draws ``w_k·N(x; μ_k, σ_k²)`` for each component (the marginal on ``feature``)
    and their sum, the mixture density, over a density-normalised histogram of ``X``.

    Parameters
    ----------
    model : fitted GaussianMixture
    X : array-like of shape (n_samples,) or (n_samples, n_features), default=None
        Data for the histogram (at most ``max_points`` seeded random rows).
    ax : matplotlib Axes, default=None
    feature : int, default=0
    bins : int, default=50
    n_grid : int, default=400
        Points on which the curves are evaluated.
    max_points : int, default=100_000
    random_state : int, default=0

    Returns
    -------
    ax : matplotlib Axes
        Lines in order: component 0..K-1, then the mixture (label ``"mixture"``).
    """
    _check_fitted(model)
    k = len(model.weights_)
    mu = np.asarray(model.means_)[:, feature]
    var = _component_variances_1d(model, feature)
    sd = np.sqrt(var)
    ax = _axes(ax)
    lo, hi = float(np.min(mu - 4 * sd)), float(np.max(mu + 4 * sd))
    if X is not None:
        pts = _sample_rows(X, max_points, random_state)[:, feature]
        ax.hist(pts, bins=bins, density=True, color="0.8", edgecolor="0.6", linewidth=0.5, label="data")
        lo, hi = min(lo, float(pts.min())), max(hi, float(pts.max()))
    x = np.linspace(lo, hi, n_grid)
    w = np.asarray(model.weights_)
    comps = (
        w[:, None]
        * np.exp(-0.5 * (x[None] - mu[:, None]) ** 2 / var[:, None])
        / np.sqrt(2 * np.pi * var[:, None])
    )
    colors = component_colors(k)
    for j in range(k):
        ax.plot(x, comps[j], color=colors[j], linewidth=1.5, label=f"component {j}")
    ax.plot(x, comps.sum(axis=0), color="k", linewidth=2, linestyle="--", label="mixture")
    ax.set_xlabel(f"feature {feature}")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax


# --------------------------------------------------------------------------
# BIC / AIC against K
# --------------------------------------------------------------------------
def plot_criteria(
    n_components: Sequence[int],
    *,
    bic: Sequence[float] | None = None,
    aic: Sequence[float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """BIC and/or AIC against the number of components, each minimum marked.

    Parameters
    ----------
    n_components : sequence of int
        The K of each fit.
    bic, aic : sequence of float, default=None
        Criterion values, one per K (at least one of them).
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes
        One line per criterion, labelled e.g. ``"BIC (min at K=3)"``; a star marks each minimum.
    """
    ks = np.asarray(list(n_components), dtype=int)
    series = {name: v for name, v in (("BIC", bic), ("AIC", aic)) if v is not None}
    if not series:
        raise ValueError("Give bic=..., aic=... or both: one value per entry of n_components.")
    ax = _axes(ax)
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(list(values), dtype=float)
        if values.shape != ks.shape:
            raise ValueError(
                f"{name} has {values.size} values but n_components has {ks.size}: give one value per K."
            )
        best = int(np.argmin(values))
        color = f"C{i}"
        ax.plot(ks, values, marker="o", markersize=4, color=color, label=f"{name} (min at K={ks[best]})")
        ax.plot([ks[best]], [values[best]], marker="*", markersize=14, color=color, linestyle="none")
    ax.set_xlabel("number of components K")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_xticks(ks)
    ax.legend()
    return ax


# --------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------
def plot_label_map(
    labels,
    ax: Axes | None = None,
    *,
    n_components: int | None = None,
    nodata: int | None = -1,
    names: Sequence[str] | None = None,
    nodata_color: Any = (0.9, 0.9, 0.9, 1.0),
    legend: bool = True,
    title: str | None = None,
) -> Axes:
    """A 2-D map of component labels, one colour and legend entry per class.

    Parameters
    ----------
    labels : array-like of shape (height, width)
        Integer labels (numpy, dask, Zarr or xarray; computed here). Pixels equal to
        ``nodata`` (or negative) are drawn in ``nodata_color``.
    ax : matplotlib Axes, default=None
    n_components : int, default=None
        Number of classes (``labels.max() + 1`` when None), so maps from one model
        keep their colours even when a class is absent.
    nodata : int or None, default=-1
        Label of pixels without data.
    names : sequence of str, default=None
        Legend text per class (``"class k"`` when None).
    nodata_color : colour, default=light grey
    legend : bool, default=True
    title : str, default=None

    Returns
    -------
    ax : matplotlib Axes
        The map is ``ax.images[0]`` (RGBA); legend entries are classes 0..K-1, then
        ``"nodata"`` when some pixels have no data.
    """
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    from daskgmm._input import as_array

    arr = np.asarray(as_array(labels))  # computes dask input
    if arr.ndim != 2:
        raise ValueError(
            f"labels must be a 2-D map (height, width); got shape {arr.shape}. "
            "Reshape per-pixel labels to the image's shape first."
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isnan(arr) | (arr == np.round(arr))):
            arr = np.where(np.isnan(arr), -1, arr).astype(np.int64)
        else:
            raise ValueError(f"labels must be integers; got dtype {arr.dtype}.")
    missing = arr < 0
    if nodata is not None:
        missing |= arr == nodata
    valid = arr[~missing]
    k = int(n_components) if n_components is not None else (int(valid.max()) + 1 if valid.size else 0)
    if valid.size and valid.max() >= k:
        raise ValueError(
            f"labels go up to {int(valid.max())} but n_components={k}: pass the model's n_components."
        )
    if names is not None and len(names) != k:
        raise ValueError(f"names has {len(names)} entries for {k} classes: give one name per class.")
    colors = np.asarray(component_colors(k)) if k else np.zeros((0, 4))
    rgba = np.empty(arr.shape + (4,))
    rgba[...] = to_rgba(nodata_color)
    if k:
        rgba[~missing] = colors[arr[~missing]]
    ax = _axes(ax)
    ax.imshow(rgba, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if legend:
        handles = [
            Patch(
                facecolor=colors[j], edgecolor="k", linewidth=0.5, label=names[j] if names else f"class {j}"
            )
            for j in range(k)
        ]
        if missing.any():
            handles.append(
                Patch(facecolor=to_rgba(nodata_color), edgecolor="k", linewidth=0.5, label="nodata")
            )
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False
        )
    return ax


# --------------------------------------------------------------------------
# per-class band histograms
# --------------------------------------------------------------------------
def plot_band_histograms(
    image,
    labels,
    axes: Sequence[Axes] | None = None,
    *,
    n_components: int | None = None,
    band_names: Sequence[str] | None = None,
    bins: int = 40,
    max_points: int = 200_000,
    random_state=0,
) -> list[Axes]:
    """For each band, the histogram of the pixel values of each class (one colour per class).

    Parameters
    ----------
    image : array-like of shape (*spatial, n_bands) or (n_pixels, n_bands)
        Band values, bands last (numpy, dask, Zarr or xarray).
    labels : array-like of shape (*spatial,) or (n_pixels,)
        Class per pixel; negative labels (nodata) are left out.
    axes : sequence of matplotlib Axes, default=None
        One per band; a new row of subplots when None.
    n_components : int, default=None
        Number of classes (``labels.max() + 1`` when None).
    band_names : sequence of str, default=None
    bins : int, default=40
        Bins shared by all classes of a band (between the band's minimum and maximum).
    max_points : int, default=200_000
        At most this many pixels (a seeded random sample) enter the histograms.
    random_state : int, default=0

    Returns
    -------
    axes : list of matplotlib Axes
        ``axes[b]`` holds one step histogram per class present (label ``"class k"``).
    """
    from daskgmm._input import as_array

    img, lab = as_array(image), as_array(labels)
    if tuple(img.shape[:-1]) != tuple(lab.shape):
        raise ValueError(
            f"image has spatial shape {tuple(img.shape[:-1])} but labels have shape {tuple(lab.shape)}: "
            "give the image with its bands on the last axis and the label map of the same pixels."
        )
    n_bands = int(img.shape[-1])
    img, lab = img.reshape(-1, n_bands), lab.reshape(-1)
    n = int(lab.shape[0])
    if n > max_points:
        idx = np.sort(np.random.RandomState(random_state).choice(n, size=max_points, replace=False))
        img, lab = img[idx], lab[idx]
    img = np.asarray(img.compute() if hasattr(img, "compute") else img, dtype=float)
    lab = np.asarray(lab.compute() if hasattr(lab, "compute") else lab)
    valid = lab >= 0
    img, lab = img[valid], lab[valid].astype(np.int64)
    k = int(n_components) if n_components is not None else (int(lab.max()) + 1 if lab.size else 0)
    if band_names is not None and len(band_names) != n_bands:
        raise ValueError(f"band_names has {len(band_names)} entries for {n_bands} bands: give one per band.")
    if axes is None:
        plt = _pyplot()
        _, axes = plt.subplots(1, n_bands, figsize=(2.6 * n_bands, 2.4), squeeze=False)
        axes = list(axes[0])
    axes = list(np.ravel(axes))
    if len(axes) != n_bands:
        raise ValueError(f"got {len(axes)} axes for {n_bands} bands: give one Axes per band.")
    colors = component_colors(k)
    for b, ax in enumerate(axes):
        values = img[:, b]
        edges = np.histogram_bin_edges(values, bins=bins) if values.size else bins
        for j in range(k):
            vj = values[lab == j]
            if vj.size:
                ax.hist(vj, bins=edges, histtype="step", color=colors[j], linewidth=1.3, label=f"class {j}")
        ax.set_title(band_names[b] if band_names else f"band {b}", fontsize="medium")
        ax.set_yticks([])
    axes[0].set_ylabel("pixels")
    return axes
