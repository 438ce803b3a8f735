"""Rich display of :class:`~daskgmm.GaussianMixture` in Jupyter.

The HTML repr is scikit-learn's parameter view (the estimator diagram, from the
public :func:`sklearn.utils.estimator_html_repr`) with a small table of the fit
beside it: number of components, covariance type, features, converged, EM
iterations, final lower bound, time spent in EM and the component weights.
Unfitted models show scikit-learn's view and a "not fitted" line. The table is
plain HTML without scripts, so it also reads on a repository page.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

#: at most this many component weights are listed in the summary
MAX_WEIGHTS_SHOWN = 12


def _is_fitted(model) -> bool:
    return hasattr(model, "converged_") and hasattr(model, "weights_")


def fitted_summary(model) -> dict[str, Any] | None:
    """The numbers the HTML repr shows, or None for an unfitted model.

    Parameters
    ----------
    model : GaussianMixture

    Returns
    -------
    summary : dict or None
        Keys ``n_components``, ``covariance_type``, ``n_features``, ``converged``,
        ``n_iter``, ``lower_bound``, ``seconds`` (time in EM iterations, None when
        the history has no timings) and ``weights`` (ndarray of shape (n_components,)).
    """
    if not _is_fitted(model):
        return None
    history = getattr(model, "history_", None) or []
    seconds = [rec.get("seconds") for rec in history if isinstance(rec, dict)]
    seconds = [s for s in seconds if isinstance(s, (int, float)) and math.isfinite(s)]
    return {
        "n_components": int(len(model.weights_)),
        "covariance_type": str(model.covariance_type),
        "n_features": int(getattr(model, "n_features_in_", np.shape(model.means_)[1])),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "seconds": float(sum(seconds)) if seconds else None,
        "weights": np.asarray(model.weights_, dtype=float),
    }


def _format_weights(weights: np.ndarray) -> str:
    shown = ", ".join(f"{w:.3g}" for w in weights[:MAX_WEIGHTS_SHOWN])
    if len(weights) > MAX_WEIGHTS_SHOWN:
        shown += f", … ({len(weights) - MAX_WEIGHTS_SHOWN} more)"
    return shown


def summary_html(model) -> str:
    """The fit summary as a small HTML table (a "not fitted" line when unfitted).

    Parameters
    ----------
    model : GaussianMixture

    Returns
    -------
    html : str
    """
    s = fitted_summary(model)
    if s is None:
        return (
            '<div class="daskgmm-summary"><b>daskgmm</b>: not fitted yet — call '
            "<code>fit(X)</code> to estimate the mixture.</div>"
        )
    converged = "yes" if s["converged"] else "<b>no</b> (raise max_iter or tol)"
    rows = [
        ("components (K)", str(s["n_components"])),
        ("covariance type", html.escape(s["covariance_type"])),
        ("features", str(s["n_features"])),
        ("converged", converged),
        ("EM iterations", str(s["n_iter"])),
        ("lower bound", f"{s['lower_bound']:.6g}"),
    ]
    if s["seconds"] is not None:
        rows.append(("time in EM", f"{s['seconds']:.3g} s"))
    rows.append(("weights", html.escape(_format_weights(s["weights"]))))
    cells = "".join(
        f'<tr><th style="text-align:left;padding:1px 8px 1px 0">{k}</th>'
        f'<td style="text-align:left;padding:1px 0">{v}</td></tr>'
        for k, v in rows
    )
    return (
        '<div class="daskgmm-summary"><b>daskgmm fit</b>'
        f'<table style="border-collapse:collapse;font-size:90%">{cells}</table></div>'
    )


def html_repr(model) -> str:
    """scikit-learn's HTML parameter view with the fit summary beside it.

    Parameters
    ----------
    model : GaussianMixture

    Returns
    -------
    html : str
    """
    from sklearn.utils import estimator_html_repr

    return (
        '<div class="daskgmm-repr" style="display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start">'
        f"<div>{estimator_html_repr(model)}</div>{summary_html(model)}</div>"
    )
