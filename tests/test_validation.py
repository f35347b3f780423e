"""Input validation at the public boundary: every bad input gives a ValueError whose message
names the problem (never a NaN or a traceback from inside JAX)."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import gmmjax as gj
from gmmjax import GaussianMixtureModel
from gmmjax._estimator import NotFittedError

TRUE_WEIGHTS = np.array([0.6, 0.4])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 3.0]])
TRUE_COVS = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]], dtype=float)


@pytest.fixture(scope="module")
def X():
    return np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS))


@pytest.fixture(scope="module")
def model(X):
    return GaussianMixtureModel(num_components=2, num_iters=100).fit(X)


def _with(X, i, j, value):
    Y = np.array(X, dtype=np.float64, copy=True)
    Y[i, j] = value
    return Y


# -- bad inputs to fit, shared by the estimator and the functional fit_em ---------------------
# (constructor / fit_em keyword arguments, data transform, expected message)
BAD_FIT_INPUTS = {
    "nan": ({}, lambda X: _with(X, 3, 1, np.nan), r"X contains NaN or infinity"),
    "inf": ({}, lambda X: _with(X, 0, 0, np.inf), r"X contains NaN or infinity"),
    "-inf": ({}, lambda X: _with(X, 5, 0, -np.inf), r"X contains NaN or infinity"),
    "beyond squares' range": (
        {},
        lambda X: _with(X, 4, 1, -1e20),
        r"X has values up to 1e\+20 in magnitude: squared distances between such points "
        r"overflow float32 \(safe up to 6.52e\+18 with 2 features\)\. Rescale",
    ),
    "1-D": ({}, lambda X: X[:, 0], r"X must be 2-D \(n_samples, n_features\), got shape \(600,\)\. Reshape"),
    "3-D": ({}, lambda X: X.reshape(300, 2, 2), r"X must be 2-D .* got shape \(300, 2, 2\)"),
    "no samples": ({}, lambda X: X[:0], r"X has 0 sample\(s\) \(shape=\(0, 2\)\) while a minimum of 1 is required"),
    "no features": (
        {},
        lambda X: X[:, :0],
        r"X has 0 feature\(s\) \(shape=\(600, 0\)\) while a minimum of 1 is required",
    ),
    "strings": ({}, lambda X: np.array([["a", "b"], ["c", "d"]]), r"X must be a 2-D array of numbers, got dtype"),
    "ragged": ({}, lambda X: [[1.0, 2.0], [3.0]], r"X must be a 2-D array of numbers"),
    "complex": ({}, lambda X: X + 1j, r"X must be real-valued"),
    "too few samples": ({"num_components": 5}, lambda X: X[:4], r"X has 4 samples, fewer than num_components=5"),
    "zero components": ({"num_components": 0}, None, r"num_components.* must be an integer >= 1, got 0"),
    "non-integer components": ({"num_components": 2.5}, None, r"num_components.* must be an integer >= 1, got 2\.5"),
    "bool components": ({"num_components": True}, None, r"num_components.* must be an integer >= 1, got True"),
    "covariance_type": (
        {"covariance_type": "banana"},
        None,
        r"covariance_type must be one of \('full', 'tied', 'diag', 'spherical'\), got 'banana'",
    ),
    "init_params": ({"init_params": "kmedoids"}, None, r"init_params must be one of .*got 'kmedoids'"),
    "n_init 0": ({"n_init": 0}, None, r"n_init must be an integer >= 1, got 0"),
    "n_init float": ({"n_init": 1.5}, None, r"n_init must be an integer >= 1, got 1\.5"),
    "max_iter -1": ({"max_iter": -1}, None, r"max_iter.* must be an integer >= 0, got -1"),  # 0: the initialisation
    "negative tol": ({"tol": -1e-3}, None, r"tol must be a non-negative finite number, got -0\.001"),
    "nan tol": ({"tol": float("nan")}, None, r"tol must be a non-negative finite number, got nan"),
    "string tol": ({"tol": "small"}, None, r"tol must be a non-negative number, got 'small'"),
    "negative reg_covar": ({"reg_covar": -1e-6}, None, r"reg_covar must be a non-negative finite number"),
    "inf reg_covar": ({"reg_covar": float("inf")}, None, r"reg_covar must be a non-negative finite number"),
    "weights_init shape": ({"weights_init": [0.2, 0.3, 0.5]}, None, r"weights_init must have shape \(2,\), got \(3,\)"),
    "weights_init negative": ({"weights_init": [1.5, -0.5]}, None, r"weights_init must be non-negative"),
    "weights_init sum": ({"weights_init": [0.5, 0.6]}, None, r"weights_init must sum to 1, got sum 1\.1"),
    "weights_init nan": ({"weights_init": [np.nan, 0.5]}, None, r"weights_init contains NaN or infinity"),
    "means_init shape": ({"means_init": np.zeros((3, 2))}, None, r"means_init must have shape \(2, 2\), got \(3, 2\)"),
    "means_init features": (
        {"means_init": np.zeros((2, 3))},
        None,
        r"means_init must have shape \(2, 2\), got \(2, 3\)",
    ),
    "means_init inf": ({"means_init": [[0.0, np.inf], [1.0, 1.0]]}, None, r"means_init contains NaN or infinity"),
    "precisions_init shape": (
        {"precisions_init": np.stack([np.eye(3)] * 2)},
        None,
        r"precisions_init must have shape \(2, 2, 2\), got \(2, 3, 3\)",
    ),
    "precisions_init not symmetric": (
        {"precisions_init": np.array([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])},
        None,
        r"precisions_init \(component 1\) must be a symmetric matrix",
    ),
    "precisions_init not PD": (
        {"precisions_init": np.array([[[1.0, 2.0], [2.0, 1.0]], np.eye(2)])},
        None,
        r"precisions_init \(component 0\) must be positive definite",
    ),
    "tied precisions_init shape": (
        {"covariance_type": "tied", "precisions_init": np.stack([np.eye(2)] * 2)},
        None,
        r"precisions_init must have shape \(2, 2\), got \(2, 2, 2\)",
    ),
    "tied precisions_init not symmetric": (
        {"covariance_type": "tied", "precisions_init": np.array([[1.0, 0.5], [0.0, 1.0]])},
        None,
        r"precisions_init must be a symmetric matrix",
    ),
    "tied precisions_init not PD": (
        {"covariance_type": "tied", "precisions_init": -np.eye(2)},
        None,
        r"precisions_init must be positive definite",
    ),
    "diag precisions_init zero": (
        {"covariance_type": "diag", "precisions_init": [[1.0, 0.0], [1.0, 1.0]]},
        None,
        r"precisions_init must be positive \(precisions of 'diag' components\)",
    ),
    "diag precisions_init shape": (
        {"covariance_type": "diag", "precisions_init": [1.0, 1.0]},
        None,
        r"precisions_init must have shape \(2, 2\), got \(2,\)",
    ),
    "spherical precisions_init negative": (
        {"covariance_type": "spherical", "precisions_init": [1.0, -1.0]},
        None,
        r"precisions_init must be positive \(precisions of 'spherical'",
    ),
    "spherical precisions_init shape": (
        {"covariance_type": "spherical", "precisions_init": [1.0, 1.0, 1.0]},
        None,
        r"precisions_init must have shape \(2,\), got \(3,\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FIT_INPUTS))
def test_estimator_fit_rejects(X, case):
    kwargs, transform, match = BAD_FIT_INPUTS[case]
    kwargs = {"num_components": 2, **kwargs}
    data = X if transform is None else transform(X)
    with pytest.raises(ValueError, match=match):
        GaussianMixtureModel(**kwargs).fit(data)


@pytest.mark.parametrize("case", list(BAD_FIT_INPUTS))
def test_fit_em_rejects(X, case):
    kwargs, transform, match = BAD_FIT_INPUTS[case]
    kwargs = {"num_components": 2, **kwargs}
    num_components = kwargs.pop("num_components")
    data = X if transform is None else transform(X)
    with pytest.raises(ValueError, match=match):
        gj.fit_em(jax.random.key(0), data, num_components, **kwargs)


def test_fit_em_checks_concrete_data_closed_over_by_a_jitted_function(X):
    """Data that is concrete inside the caller's jit (closed over) is still checked for NaN,
    and clean data fits (the check must not try to read a staged value)."""
    clean = jax.numpy.asarray(X[:60], jax.numpy.float32)
    means = jax.jit(lambda key: gj.fit_em(key, clean, 2).params.means)(jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(means)))
    dirty = clean.at[3, 1].set(np.nan)
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        jax.jit(lambda key: gj.fit_em(key, dirty, 2).params.means)(jax.random.key(0))


@pytest.mark.parametrize(
    "sample_weight, match",
    [
        (-np.ones(600), r"sample_weight must be finite and non-negative"),
        (np.full(600, np.nan), r"sample_weight must be finite and non-negative"),
        (np.ones(599), r"sample_weight must have shape \(600,\), got \(599,\)"),
        (np.zeros(600), r"sample_weight must have a positive sum"),
    ],
)
@pytest.mark.parametrize("api", ["estimator", "fit_em"])
def test_bad_sample_weight(X, sample_weight, match, api):
    with pytest.raises(ValueError, match=match):
        if api == "estimator":
            GaussianMixtureModel(2).fit(X, sample_weight=sample_weight)
        else:
            gj.fit_em(jax.random.key(0), X, 2, sample_weight=sample_weight)


def test_fit_em_conflicting_iteration_aliases(X):
    with pytest.raises(ValueError, match=r"num_iters=4 and max_iter=3 disagree"):
        gj.fit_em(jax.random.key(0), X, 2, max_iter=3, num_iters=4)


@pytest.mark.parametrize("seed", ["zero", 1.5, True])
def test_bad_seed(X, seed):
    with pytest.raises(ValueError, match=r"seed \(random_state\) must be an int, None or a jax.random.key"):
        GaussianMixtureModel(2, seed=seed).fit(X)


@pytest.mark.parametrize("seed", [-1, 2**63, np.uint64(2**63)])
def test_seed_outside_jax_range(X, seed):
    with pytest.raises(ValueError, match=r"seed \(random_state\) must be an integer from 0 to 2\*\*63 - 1"):
        GaussianMixtureModel(2, seed=seed).fit(X)


# -- inference on bad input -------------------------------------------------------------------
METHODS = ["predict", "predict_proba", "score_samples", "score", "bic", "aic"]


@pytest.mark.parametrize("method", METHODS)
def test_wrong_number_of_features(model, X, method):
    with pytest.raises(
        ValueError, match=r"X has 3 features, but GaussianMixtureModel is expecting 2 features as input"
    ):
        getattr(model, method)(np.c_[X[:10], X[:10, :1]])
    with pytest.raises(
        ValueError, match=r"X has 1 features, but GaussianMixtureModel is expecting 2 features as input"
    ):
        getattr(model, method)(X[:10, :1])


@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_at_inference(model, X, method):
    with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
        getattr(model, method)(_with(X[:10], 2, 0, np.nan))
    with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
        getattr(model, method)(_with(X[:10], 2, 1, -np.inf))
    with pytest.raises(ValueError, match=r"X has values up to 1e\+20 in magnitude"):
        getattr(model, method)(_with(X[:10], 2, 1, 1e20))  # finite, but its squares are not in float32


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples"])
def test_one_dimensional_input_at_inference(model, X, method):
    with pytest.raises(ValueError, match=r"X must be 2-D .*got shape \(2,\)\. .*X\.reshape\(1, -1\)"):
        getattr(model, method)(X[0])


def test_bad_number_of_samples_to_draw(model):
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 1, got 0"):
        model.sample(0)
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 1, got 2\.5"):
        model.sample(2.5)


# -- not fitted -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, X: m.predict(X), "predict"),
        (lambda m, X: m.predict_proba(X), "predict_proba"),
        (lambda m, X: m.score_samples(X), "score_samples"),
        (lambda m, X: m.score(X), "score"),
        (lambda m, X: m.bic(X), "bic"),
        (lambda m, X: m.aic(X), "aic"),
        (lambda m, X: m.sample(5), "sample"),
        (lambda m, X: m.save("never-written.npz"), "save"),
    ],
)
def test_methods_before_fit_raise_not_fitted(X, call, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = GaussianMixtureModel(2)
    with pytest.raises(NotFittedError, match=rf"not fitted yet: call fit\(X\) before {name}\(\)"):
        call(m, X)
    assert not (tmp_path / "never-written.npz").exists()


@pytest.mark.parametrize("attribute", ["weights", "means", "covariances"])
def test_attributes_before_fit_raise_not_fitted(attribute):
    m = GaussianMixtureModel(2)
    with pytest.raises(NotFittedError, match=rf"not fitted yet: call fit\(X\) before using {attribute}"):
        getattr(m, attribute)
    assert not hasattr(m, attribute)  # NotFittedError is also an AttributeError


def test_not_fitted_error_is_a_value_error():
    assert issubclass(NotFittedError, ValueError)
    with pytest.raises(ValueError):
        GaussianMixtureModel(2).predict(np.zeros((3, 2)))


def test_failed_fit_leaves_model_unfitted(X):
    m = GaussianMixtureModel(2)
    with pytest.raises(ValueError):
        m.fit(_with(X, 0, 0, np.nan))
    with pytest.raises(NotFittedError):
        m.predict(X)


# -- generate_gmm_data ------------------------------------------------------------------------
GEN_BAD = {
    "negative weight": (dict(weights=[1.2, -0.2]), r"weights must be non-negative"),
    "unnormalised": (dict(weights=[0.6, 0.6]), r"weights must sum to 1, got sum 1\.2"),
    "weights vs means": (dict(weights=[0.2, 0.3, 0.5]), r"weights must have shape \(2,\), got \(3,\)"),
    "weights 2-D": (dict(weights=[[0.6, 0.4]]), r"weights must have shape \(2,\), got \(1, 2\)"),
    "weights nan": (dict(weights=[np.nan, 0.4]), r"weights contains NaN or infinity"),
    "means 1-D": (dict(means=[0.0, 3.0]), r"means must have shape \(num_components, num_features\), got \(2,\)"),
    "means empty": (dict(means=np.zeros((2, 0))), r"means must have shape \(num_components, num_features\)"),
    "means nan": (dict(means=[[0.0, np.nan], [3.0, 3.0]]), r"means contains NaN or infinity"),
    "covariances vs K": (dict(covariances=TRUE_COVS[:1]), r"covariances must have shape \(2, 2, 2\), got \(1, 2, 2\)"),
    "covariances vs D": (
        dict(covariances=np.stack([np.eye(3)] * 2)),
        r"covariances must have shape \(2, 2, 2\), got \(2, 3, 3\)",
    ),
    "means vs covariances D": (
        dict(means=np.zeros((2, 3))),
        r"covariances must have shape \(2, 3, 3\), got \(2, 2, 2\)",
    ),
    "not symmetric": (
        dict(covariances=np.array([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])),
        r"covariances \(component 1\) must be a symmetric matrix",
    ),
    "not PD": (
        dict(covariances=np.array([[[1.0, 2.0], [2.0, 1.0]], np.eye(2)])),
        r"covariances \(component 0\) must be positive definite",
    ),
    "singular": (
        dict(covariances=np.array([np.eye(2), np.ones((2, 2))])),
        r"covariances \(component 1\) must be positive definite",
    ),
    "num_samples 0": (dict(num_samples=0), r"num_samples must be an integer >= 1, got 0"),
    "num_samples float": (dict(num_samples=10.5), r"num_samples must be an integer >= 1, got 10\.5"),
    "covariance_type": (dict(covariance_type="round"), r"covariance_type must be one of"),
    "diag negative": (
        dict(covariance_type="diag", covariances=[[1.0, -1.0], [1.0, 1.0]]),
        r"covariances must be positive \(covariances of 'diag' components\)",
    ),
    "diag shape": (
        dict(covariance_type="diag", covariances=TRUE_COVS),
        r"covariances must have shape \(2, 2\), got \(2, 2, 2\)",
    ),
    "spherical zero": (
        dict(covariance_type="spherical", covariances=[1.0, 0.0]),
        r"covariances must be positive \(covariances of 'spherical' components\)",
    ),
    "tied not PD": (dict(covariance_type="tied", covariances=-np.eye(2)), r"covariances must be positive definite"),
}


@pytest.mark.parametrize("case", list(GEN_BAD))
def test_generate_gmm_data_rejects(case):
    changes, match = GEN_BAD[case]
    kwargs = {**dict(num_samples=10, weights=TRUE_WEIGHTS, means=TRUE_MEANS, covariances=TRUE_COVS), **changes}
    with pytest.raises(ValueError, match=match):
        gj.generate_gmm_data(**kwargs)


def test_generate_gmm_data_is_deterministic_without_key_and_key_dependent():
    a = np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS))
    b = np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS))
    c = np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS, key=jax.random.key(1)))
    d = np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS, key=jax.random.key(0)))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)  # the documented default key is jax.random.key(0)
    assert a.shape == c.shape == (600, 2)
    assert not np.allclose(a, c)


def test_generate_gmm_data_labels_follow_the_generating_distribution():
    n = 4000
    X, labels = gj.generate_gmm_data(n, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS, key=jax.random.key(7), return_labels=True)
    X, labels = np.asarray(X), np.asarray(labels)
    # float64 parameters give float32 data unless jax_enable_x64 is on
    assert X.shape == (n, 2) and X.dtype == (np.float64 if jax.config.jax_enable_x64 else np.float32)
    assert labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
    freq = np.bincount(labels, minlength=2) / n
    np.testing.assert_allclose(freq, TRUE_WEIGHTS, atol=0.035)  # ~4.5 standard errors
    for k in range(2):
        Xk = X[labels == k]
        np.testing.assert_allclose(Xk.mean(axis=0), TRUE_MEANS[k], atol=0.1)
        np.testing.assert_allclose(np.cov(Xk.T), TRUE_COVS[k], atol=0.15)


def test_generate_gmm_data_diagonal_covariances():
    variances = np.array([[0.25, 4.0], [1.0, 0.04]])
    X, labels = gj.generate_gmm_data(
        4000, TRUE_WEIGHTS, TRUE_MEANS, variances, key=jax.random.key(2), return_labels=True, covariance_type="diag"
    )
    X, labels = np.asarray(X), np.asarray(labels)
    for k in range(2):
        np.testing.assert_allclose(X[labels == k].var(axis=0), variances[k], rtol=0.15)


def test_generate_gmm_data_accepts_integer_means_and_lists():
    X = gj.generate_gmm_data(10, [0.6, 0.4], [[0, 0], [3, 3]], TRUE_COVS.tolist())
    assert np.asarray(X).shape == (10, 2)
    assert np.all(np.isfinite(np.asarray(X)))


def test_no_warnings_from_valid_inputs(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(X)
        model.score(X)


@pytest.mark.parametrize("bad_key", [0, None, "seed", np.zeros(3, np.uint32)])
def test_fit_em_rejects_a_bad_key(bad_key):
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="key must be a single jax.random key"):
        gj.fit_em(bad_key, X, 2)
