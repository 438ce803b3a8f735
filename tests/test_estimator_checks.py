"""scikit-learn's own estimator checks pass on daskgmm.GaussianMixture and BayesianGaussianMixture."""

from __future__ import annotations

import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from daskgmm import BayesianGaussianMixture, GaussianMixture
from tests.conftest import make_mixture


@parametrize_with_checks([GaussianMixture(), BayesianGaussianMixture()])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_pipeline_and_grid_search_select_k_like_sklearn():
    from sklearn.mixture import GaussianMixture as SkGMM

    X = make_mixture(n_samples=400, n_features=2, n_components=3, seed=4)[0]
    grid = {"gaussianmixture__n_components": [1, 2, 3, 4]}
    ours = GridSearchCV(make_pipeline(StandardScaler(), GaussianMixture(random_state=0)), grid, cv=3).fit(X)
    ref = GridSearchCV(make_pipeline(StandardScaler(), SkGMM(random_state=0)), grid, cv=3).fit(X)
    assert ours.best_params_ == ref.best_params_
    assert ours.cv_results_["mean_test_score"] == pytest.approx(ref.cv_results_["mean_test_score"], rel=1e-8)
    assert clone(GaussianMixture(3, covariance_type="diag")).get_params()["covariance_type"] == "diag"
