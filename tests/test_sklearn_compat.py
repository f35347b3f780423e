"""GaussianMixtureModel (and BayesianGaussianMixtureModel) as scikit-learn estimators:
scikit-learn's own estimator checks, ``clone``, ``Pipeline``, ``GridSearchCV``,
``check_is_fitted``, ``NotFittedError``, and scikit-learn's ``random_state`` semantics.

The checks run for the constructions users write: ``GaussianMixtureModel()``,
``GaussianMixtureModel(num_components=2)`` (the original example's name),
``GaussianMixtureModel(n_components=2)``, ``BayesianGaussianMixtureModel()``,
``BayesianGaussianMixtureModel(n_components=2)`` and ``BayesianGaussianMixtureModel(num_components=2)``.
scikit-learn's checks fit on about 17 differently shaped datasets; gmmjax compiles its fit for
each new shape (1–2 s), so the complete run (~1–2 min of CPU per construction) is marked
``slow`` and the default suite runs a representative subset that reuses a few shapes (for
GaussianMixtureModel's default construction: every check that fits nothing, and fitting,
pickling, idempotence, feature-count, sample-weight and pipeline checks; for its K=2
constructions: the checks that assign ``n_components`` and the sample-weight equivalence; for
BayesianGaussianMixtureModel(): the checks that fit nothing or fit one shape; for its
num_components=2 construction: those of them that assign ``n_components``).
"""

from __future__ import annotations

import functools
import pickle
import warnings

import numpy as np
import pytest

import gmmjax as gj
from gmmjax import BayesianGaussianMixtureModel, GaussianMixtureModel

pytest.importorskip("sklearn", minversion="1.6")  # estimator_checks_generator, Tags
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError as SklearnNotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import get_tags  # noqa: E402
from sklearn.utils.estimator_checks import estimator_checks_generator  # noqa: E402
from sklearn.utils.validation import check_is_fitted  # noqa: E402

# Checks that GaussianMixtureModel is known to fail, with the reason (scikit-learn's mechanism:
# ``expected_failed_checks``; they are run and marked xfail). None at present: keep it that way
# unless a check asks for something gmmjax cannot reasonably do, and say why here.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

# The checks that assign ``estimator.n_components = 1`` and then fit K=1 on (20, 3): with a
# construction that gave num_components, the alias must give way as scikit-learn's own
# parameter would (they once failed for GaussianMixtureModel(num_components=2)).
ASSIGN_N_COMPONENTS_ONE_SHAPE = frozenset(
    {
        "check_dont_overwrite_parameters",
        "check_fit2d_predict1d",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
    }
)

# The default suite's subset: every check that fits nothing, and those that fit on the shapes
# (20, 3), (30, 3), (21, 2), (15, 4) and (80, 2) -- one compilation each. The first group
# (no fit, or (20, 3)) is also the variational estimator's.
FAST_CHECKS_ONE_SHAPE = ASSIGN_N_COMPONENTS_ONE_SHAPE | frozenset(
    {
        # no fit
        "check_estimator_cloneable",
        "check_estimator_tags_renamed",
        "check_valid_tag_types",
        "check_estimator_repr",
        "check_no_attributes_set_in_init",
        "check_estimators_unfitted",
        "check_do_not_raise_errors_in_init_or_set_params",
        "check_mixin_order",
        "check_all_zero_sample_weights_error",
        "check_complex_data",
        "check_estimators_empty_data_messages",
        "check_estimator_sparse_tag",
        "check_estimator_sparse_array",
        "check_estimator_sparse_matrix",
        "check_parameters_default_constructible",
        "check_get_params_invariance",
        "check_set_params",
        "check_fit1d",
        # (20, 3), besides ASSIGN_N_COMPONENTS_ONE_SHAPE
        "check_f_contiguous_array_estimator",
        "check_dict_unchanged",
    }
)
FAST_CHECKS = FAST_CHECKS_ONE_SHAPE | frozenset(
    {
        # (30, 3)
        "check_fit_score_takes_y",
        "check_pipeline_consistency",
        "check_estimators_pickle",
        # (21, 2)
        "check_estimators_overwrite_params",
        "check_estimators_fit_returns_self",
        "check_readonly_memmap_input",
        # (15, 4)
        "check_n_features_in_after_fitting",
        # (80, 2)
        "check_fit_idempotent",
    }
)


# The constructions users write: the default, the original example's name (num_components)
# and scikit-learn's (n_components), for both estimators. scikit-learn's checks assign
# ``estimator.n_components = 1`` and fit with sample weights, so each alias must behave as
# scikit-learn's own parameter would.
CONSTRUCTIONS = {
    "default": (GaussianMixtureModel, {}),
    "num_components=2": (GaussianMixtureModel, {"num_components": 2}),
    "n_components=2": (GaussianMixtureModel, {"n_components": 2}),
    "bayesian-default": (BayesianGaussianMixtureModel, {}),
    "bayesian-n_components=2": (BayesianGaussianMixtureModel, {"n_components": 2}),
    "bayesian-num_components=2": (BayesianGaussianMixtureModel, {"num_components": 2}),
}

# The fast subset for the two K=2 constructions: the checks that once failed for them (an
# assigned n_components conflicting with num_components; k-means seeding that depended on the
# row order, so integer weights differed from repeated rows). They fit K=1 on shapes the
# default construction compiles anyway, or K=2 on two shapes.
FAST_CHECKS_K2 = ASSIGN_N_COMPONENTS_ONE_SHAPE | frozenset(
    {
        "check_fit2d_1sample",
        "check_fit2d_1feature",
        "check_sample_weight_equivalence_on_dense_data",
    }
)
# The variational estimator compiles programs of its own: by default, every check that fits
# nothing and those that fit on (20, 3) (one compilation); for num_components=2, those of them
# that assign n_components (the alias to get wrong; the same K=1 program); the rest (sample
# weights, one sample, one feature, the n_components=2 construction, which has no alias to get
# wrong) with -m slow.
FAST_CHECKS_BAYESIAN = FAST_CHECKS_ONE_SHAPE
FAST_CHECKS_BAYESIAN_K2: frozenset[str] = frozenset()
FAST_CHECKS_BAYESIAN_NUM_COMPONENTS = ASSIGN_N_COMPONENTS_ONE_SHAPE
FAST_BY_CONSTRUCTION = {
    "default": FAST_CHECKS,
    "num_components=2": FAST_CHECKS_K2,
    "n_components=2": FAST_CHECKS_K2,
    "bayesian-default": FAST_CHECKS_BAYESIAN,
    "bayesian-n_components=2": FAST_CHECKS_BAYESIAN_K2,
    "bayesian-num_components=2": FAST_CHECKS_BAYESIAN_NUM_COMPONENTS,
}


def _check_name(check) -> str:
    while isinstance(check, functools.partial):
        check = check.func
    return check.__name__


def _all_checks(estimator_type, kwargs):
    with warnings.catch_warnings():
        # "does not inherit from sklearn.base.BaseEstimator": by design, so that gmmjax imports
        # without scikit-learn; the estimator implements the protocol instead (these checks pass).
        warnings.filterwarnings(
            "ignore", message=r".*does not inherit from `sklearn.base.BaseEstimator`", category=UserWarning
        )
        return list(
            estimator_checks_generator(
                estimator_type(**kwargs), legacy=True, expected_failed_checks=EXPECTED_FAILED_CHECKS, mark="xfail"
            )
        )


def _name_of(entry) -> str:
    return _check_name(entry.values[1] if hasattr(entry, "values") else entry[1])


def _with_construction(construction, entry):
    """``(construction, estimator, check)`` as a pytest param (keeping an xfail mark)."""
    values, marks = (entry.values, entry.marks) if hasattr(entry, "values") else (tuple(entry), ())
    return pytest.param(construction, *values, marks=marks, id=f"{construction}-{_check_name(values[1])}")


CHECKS_BY_CONSTRUCTION = {name: _all_checks(*construction) for name, construction in CONSTRUCTIONS.items()}
ALL_CHECKS = [_with_construction(name, entry) for name, entries in CHECKS_BY_CONSTRUCTION.items() for entry in entries]
FAST_SUBSET = [
    _with_construction(name, entry)
    for name, entries in CHECKS_BY_CONSTRUCTION.items()
    for entry in entries
    if _name_of(entry) in FAST_BY_CONSTRUCTION[name]
]


def test_the_fast_subset_names_real_checks():
    for construction, entries in CHECKS_BY_CONSTRUCTION.items():
        names = {_name_of(entry) for entry in entries}
        fast = FAST_BY_CONSTRUCTION[construction]
        assert fast <= names, (construction, sorted(fast - names))
        assert set(EXPECTED_FAILED_CHECKS) <= names, sorted(set(EXPECTED_FAILED_CHECKS) - names)


@pytest.mark.parametrize("construction, estimator, check", FAST_SUBSET)
def test_sklearn_estimator_checks_fast_subset(construction, estimator, check):
    check(estimator)


@pytest.mark.slow
@pytest.mark.parametrize("construction, estimator, check", ALL_CHECKS)
def test_sklearn_estimator_checks_complete(construction, estimator, check):
    check(estimator)


def test_assigning_one_alias_replaces_the_other():
    """scikit-learn's checks (and users) assign ``model.n_components = 1`` directly; like
    set_params, that replaces a num_components given at construction, while a conflicting
    construction still raises at fit."""
    model = GaussianMixtureModel(num_components=2, num_iters=50, seed=1)
    model.n_components, model.max_iter, model.random_state = 1, 20, 4
    assert (model.num_components, model.num_iters, model.seed) == (None, None, None)
    assert model._resolved_num_components() == 1 and model._resolved_max_iter() == 20
    model.num_components = 3  # and back
    assert (model.num_components, model.n_components) == (3, None)
    conflicting = GaussianMixtureModel(num_components=2, n_components=3)
    assert (conflicting.num_components, conflicting.n_components) == (2, 3)  # kept as given (clone needs it)
    with pytest.raises(ValueError, match="num_components=2 and n_components=3 disagree"):
        conflicting._resolved_num_components()
    both = GaussianMixtureModel(2).set_params(num_components=1, n_components=4)  # both given: as given
    assert (both.num_components, both.n_components) == (1, 4)


@pytest.mark.filterwarnings("ignore::gmmjax.ConvergenceWarning")  # 10 distinct points in 30-D
def test_integer_sample_weights_equal_repeated_shuffled_rows():
    """scikit-learn's sample-weight equivalence, where the weighted rows are also shuffled: the
    k-means++ seeding draws rows in an order that depends on their values, not positions."""
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    sw = rng.randint(0, 5, size=15)
    order = rng.permutation(15)
    repeated = GaussianMixtureModel(n_components=2).fit(X.repeat(sw, axis=0))
    weighted = GaussianMixtureModel(n_components=2).fit(X[order], sample_weight=sw[order])
    np.testing.assert_array_equal(weighted.predict(X), repeated.predict(X))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-5, atol=1e-6)
    assert len(set(repeated.predict(X[sw > 0]))) == 2  # both components used: the seeding mattered


# -- tags, fitted state, errors ------------------------------------------------------------------
@pytest.fixture(scope="module")
def X():
    # (30, 3): a shape the fast checks fit on anyway (no extra compilation)
    return np.random.default_rng(0).normal(size=(30, 3)) + np.repeat([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]], 15, axis=0)


def test_tags_describe_an_unsupervised_dense_density_estimator():
    tags = get_tags(GaussianMixtureModel())
    assert tags.estimator_type == "density_estimator"
    assert not tags.target_tags.required
    assert tags.input_tags.two_d_array and not tags.input_tags.sparse and not tags.input_tags.allow_nan
    assert tags.requires_fit


def test_check_is_fitted_and_not_fitted_error_are_scikit_learns(X):
    model = GaussianMixtureModel()
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(model)
    with pytest.raises(SklearnNotFittedError, match=r"call fit\(X\) before predict\(\)") as info:
        model.predict(X)
    error = info.value
    assert isinstance(error, gj.NotFittedError) and isinstance(error, ValueError)
    assert str(error).startswith(
        "This GaussianMixture instance is not fitted yet. Call 'fit' with appropriate "
        "arguments before using this estimator."
    )  # scikit-learn's sentence
    assert isinstance(error, AttributeError)
    copy = pickle.loads(pickle.dumps(error))  # e.g. sent back by a joblib worker
    assert type(copy) is type(error) and copy.args == error.args
    model.fit(X)
    check_is_fitted(model)
    assert "params_" in vars(model) and "params" not in vars(model)  # fit adds only names ending in "_"
    assert model.params is model.params_


def test_input_handling_follows_scikit_learn(X):
    """Numbers stored as objects are numbers; a non-number is a TypeError; sparse input is refused
    with a message that says so (scikit-learn's check_dtype_object / sparse checks, in brief)."""
    from scipy import sparse

    model = GaussianMixtureModel().fit(X)
    np.testing.assert_array_equal(GaussianMixtureModel().fit(X.astype(object)).means_, model.means_)
    bad = X.astype(object)
    bad[0, 0] = {"a": 1}
    with pytest.raises(TypeError, match=r"X must be a 2-D array of numbers: .*argument must be"):
        model.predict(bad)
    with pytest.raises(ValueError, match=r"X is a sparse matrix, but gmmjax needs dense data: pass X.toarray\(\)"):
        model.fit(sparse.csr_matrix(X))


# -- clone, Pipeline, GridSearchCV ----------------------------------------------------------------
def test_clone_keeps_constructor_arguments_and_drops_the_fit(X):
    import jax

    key = jax.random.key(3)
    model = GaussianMixtureModel(reg_covar=1e-4, random_state=key).fit(X)
    copy = clone(model)
    assert copy.reg_covar == 1e-4 and copy.get_params().keys() == model.get_params().keys()
    assert jax.random.key_data(copy.random_state).tolist() == jax.random.key_data(key).tolist()
    assert not copy.__sklearn_is_fitted__() and model.__sklearn_is_fitted__()
    with_arrays = GaussianMixtureModel(n_components=2, covariance_type="diag", means_init=np.zeros((2, 3)))
    copy = clone(with_arrays)
    assert copy.means_init is not with_arrays.means_init  # deep-copied, as scikit-learn does
    np.testing.assert_array_equal(copy.means_init, with_arrays.means_init)
    assert copy.covariance_type == "diag" and copy.n_components == 2


def test_pipeline_scales_then_fits(X):
    pipe = Pipeline([("scale", StandardScaler()), ("gmm", GaussianMixtureModel())]).fit(X)
    Z = StandardScaler().fit_transform(X)
    direct = GaussianMixtureModel().fit(Z)
    np.testing.assert_allclose(pipe.score_samples(X), direct.score_samples(Z), rtol=1e-5)
    assert pipe.score(X) == pytest.approx(direct.score(Z), rel=1e-5)
    np.testing.assert_array_equal(pipe.predict(X), direct.predict(Z))


def test_grid_search_chooses_by_held_out_log_likelihood():
    """GridSearchCV's scores and choice equal the mean held-out log-likelihoods computed by hand."""
    X = np.random.default_rng(1).standard_t(3, size=(40, 3))  # heavy tails: a larger reg_covar can win
    # reg_covar is not a compile-time constant, and 20-row folds are a shape the fast checks use,
    # so this search compiles nothing new.
    grid = {"reg_covar": [1e-6, 0.3, 3.0]}
    cv = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(GaussianMixtureModel(), grid, cv=cv, refit=False).fit(X)
    by_hand = [
        np.mean([GaussianMixtureModel(reg_covar=r).fit(X[train]).score(X[test]) for train, test in cv.split(X)])
        for r in grid["reg_covar"]
    ]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand, rtol=1e-6)
    assert search.best_params_["reg_covar"] == grid["reg_covar"][int(np.argmax(by_hand))]
    assert len(set(np.round(by_hand, 6))) == 3  # the grid points differ, so the choice means something


def test_setting_one_name_of_an_alias_pair_replaces_the_other(X):
    """GridSearchCV sets n_components (scikit-learn's name) on a model built with a positional
    num_components; the new value must win rather than conflict."""
    model = GaussianMixtureModel(2, 50, seed=1).set_params(n_components=3, max_iter=20, random_state=4)
    params = model.get_params()
    assert (params["num_components"], params["num_iters"], params["seed"]) == (None, None, None)
    assert (params["n_components"], params["max_iter"], params["random_state"]) == (3, 20, 4)
    assert model.fit(X).means_.shape == (3, 3)
    both = GaussianMixtureModel(2).set_params(num_components=1, n_components=1)  # both given: as given
    assert both.get_params()["num_components"] == both.get_params()["n_components"] == 1
    search = GridSearchCV(
        GaussianMixtureModel(2),
        {"n_components": [1, 2]},
        cv=KFold(2, shuffle=True, random_state=0),
        error_score="raise",
    ).fit(X)
    assert search.best_params_ == {"n_components": 2}  # two well-separated clusters


# -- random_state semantics -----------------------------------------------------------------------
def test_numpy_random_state_is_drawn_from_at_each_fit():
    import jax

    from gmmjax._estimator import _key_from_seed

    def key_data(seed):
        return jax.random.key_data(_key_from_seed(seed)).tolist()

    for make in (np.random.RandomState, np.random.default_rng):
        rng = make(0)
        first, second = key_data(rng), key_data(rng)
        assert first != second  # the generator advances: successive fits differ, as in scikit-learn
        assert key_data(make(0)) == first  # and a fresh generator with the same seed repeats them
    assert key_data(None) == key_data(0)  # None stays "seed 0": gmmjax fits are reproducible by default
