"""The one table of parameters: the estimator's signature, scikit-learn's defaults, the command line."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGMM

from daskgmm import GaussianMixture
from daskgmm._params import PARAMS


def test_the_table_is_the_estimators_signature_with_its_defaults():
    signature = inspect.signature(GaussianMixture.__init__).parameters
    names = [n for n in signature if n != "self"]
    assert names == list(PARAMS)
    for name in names:
        assert signature[name].default == PARAMS[name].default, name


def test_shared_parameters_have_scikit_learns_defaults():
    sk = SkGMM().get_params()
    ours = {name: p.default for name, p in PARAMS.items() if name in sk}
    assert set(ours) == set(sk)  # every scikit-learn parameter is in the table
    assert ours == sk


@pytest.mark.parametrize(
    "name, value, match",
    [
        (
            "n_components",
            0,
            r"'n_components' parameter of GaussianMixture must be an int in the range \[1, inf\)",
        ),
        ("tol", -1.0, r"'tol' parameter of GaussianMixture must be a float in the range \[0.0, inf\)"),
        ("covariance_type", "round", r"'covariance_type' parameter of GaussianMixture must be a str among"),
        ("persist", "sometimes", "'persist' parameter of GaussianMixture must be 'auto', True or False"),
        (
            "chunk_size",
            0,
            r"'chunk_size' parameter of GaussianMixture must be an int in the range \[1, inf\) or None",
        ),
        ("verbose", -1, r"'verbose' parameter of GaussianMixture must be an int in the range \[0, inf\)"),
    ],
)
def test_bad_values_get_scikit_learns_wording(name, value, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{name: value}).fit(np.zeros((4, 2)))


def test_verbose_accepts_a_bool_as_scikit_learn_does():
    X = np.random.RandomState(0).normal(size=(50, 2))
    GaussianMixture(2, verbose=False, random_state=0).fit(X)
    SkGMM(2, verbose=False, random_state=0).fit(X)


def test_the_command_takes_choices_and_defaults_from_the_table():
    from daskgmm.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["fit", "data.zarr", "-k", "3"])
    for name in ("covariance_type", "max_iter", "tol", "reg_covar", "n_init", "init_params", "nan_policy"):
        assert getattr(args, name) == PARAMS[name].default, name
    sub = parser._subparsers._group_actions[0].choices["fit"]
    choices = {a.dest: a.choices for a in sub._actions if a.choices}
    assert tuple(choices["covariance_type"]) == PARAMS["covariance_type"].choices
    assert tuple(choices["nan_policy"]) == PARAMS["nan_policy"].choices
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["fit", "data.zarr", "-k", "0"])
    assert e.value.code == 2
