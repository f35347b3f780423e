"""Interoperability: scikit-learn's GaussianMixture <-> gmmjax, and numpyro / distrax
MixtureSameFamily distributions.

Oracles: scikit-learn's own predictions (float64) on the same parameters, scipy's
log-densities (tests/_oracles.py), and the conversions' inputs (round trips).
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import gmmjax as gj
from _oracles import make_blobs, mixture_log_prob
from gmmjax import GaussianMixtureModel

sklearn_mixture = pytest.importorskip("sklearn.mixture")

COV_TYPES = ("full", "tied", "diag", "spherical")
# The shapes of tests/test_estimator.py's fits (600 x 2, K = 2, 100 iterations), so that in a full
# run gmmjax's compiled fit and predictions are reused rather than compiled again.
N, K, D = 600, 2, 2


@pytest.fixture(scope="module")
def X():
    return make_blobs(n=N, d=D, k=K, seed=3, spread=4.0)[0]


@pytest.fixture(scope="module")
def sklearn_fits(X):
    """scikit-learn's own fits (float64, NumPy: no compilation), one per covariance type."""
    return {ct: sklearn_mixture.GaussianMixture(K, covariance_type=ct, random_state=0).fit(X) for ct in COV_TYPES}


@pytest.fixture(scope="module")
def converted(sklearn_fits):
    return {ct: GaussianMixtureModel.from_sklearn(gm) for ct, gm in sklearn_fits.items()}


def assert_same_predictions(gm, model, X):
    """A scikit-learn GaussianMixture and a gmmjax model predict the same on X (float32 rounding)."""
    np.testing.assert_allclose(model.score_samples(X), gm.score_samples(X), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(model.predict_proba(X), gm.predict_proba(X), atol=1e-4)
    np.testing.assert_array_equal(model.predict(X), gm.predict(X))
    assert model.score(X) == pytest.approx(gm.score(X), rel=1e-5)
    assert model.bic(X) == pytest.approx(gm.bic(X), rel=1e-5)
    assert model.aic(X) == pytest.approx(gm.aic(X), rel=1e-5)


# -- scikit-learn -> gmmjax -----------------------------------------------------------------------
@pytest.mark.parametrize("ct", COV_TYPES)
def test_from_sklearn_predicts_like_sklearn(X, sklearn_fits, converted, ct):
    gm, model = sklearn_fits[ct], converted[ct]
    assert isinstance(model, GaussianMixtureModel) and model.__sklearn_is_fitted__()
    assert model.params.covariance_type == ct and model.n_features_in_ == D
    np.testing.assert_allclose(model.covariances_, gm.covariances_, rtol=1e-6)
    np.testing.assert_allclose(model.precisions_cholesky_, gm.precisions_cholesky_, rtol=1e-4)
    assert_same_predictions(gm, model, X)
    # fit diagnostics and hyperparameters carried over
    assert model.converged_ is True and model.n_iter_ == gm.n_iter_
    assert model.lower_bound_ == pytest.approx(gm.lower_bound_)
    np.testing.assert_allclose(model.lower_bounds_, gm.lower_bounds_)
    assert model.get_params()["n_components"] == K and model.random_state == 0
    assert model.tol == gm.tol and model.reg_covar == gm.reg_covar and model.init_params == gm.init_params
    if ct == "full":  # (one covariance type: sampling compiles per type and size)
        samples, labels = model.sample(50)
        assert samples.shape == (50, D) and labels.shape == (50,)


def test_params_from_sklearn_keeps_the_parameters(sklearn_fits):
    gm = sklearn_fits["diag"]
    params = gj.params_from_sklearn(gm)
    assert isinstance(params, gj.GMMParams) and params.covariance_type == "diag"
    assert params.means.dtype == np.float32  # gmmjax's dtype rule: float64 needs jax_enable_x64
    np.testing.assert_allclose(params.weights, gm.weights_, rtol=1e-6)
    np.testing.assert_allclose(params.means, gm.means_, rtol=1e-6)
    np.testing.assert_allclose(params.covariances, gm.covariances_, rtol=1e-6)


def test_from_sklearn_rejects_unfitted_and_other_models():
    with pytest.raises(ValueError, match=r"not fitted yet: call its fit\(X\) before converting"):
        GaussianMixtureModel.from_sklearn(sklearn_mixture.GaussianMixture(2))
    with pytest.raises(ValueError, match=r"Expected a sklearn.mixture.GaussianMixture, got BayesianGaussianMixture"):
        gj.params_from_sklearn(sklearn_mixture.BayesianGaussianMixture())


# -- gmmjax -> scikit-learn -----------------------------------------------------------------------
@pytest.mark.parametrize("ct", COV_TYPES)
def test_to_sklearn_predicts_like_gmmjax(X, sklearn_fits, converted, ct):
    model = converted[ct]
    gm = model.to_sklearn()
    assert isinstance(gm, sklearn_mixture.GaussianMixture) and gm.covariance_type == ct
    assert gm.means_.dtype == np.float64 and gm.n_features_in_ == D
    assert_same_predictions(gm, model, X)
    # the round trip sklearn -> gmmjax -> sklearn keeps the parameters (to float32) and scikit-learn's
    # own precision factors
    original = sklearn_fits[ct]
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(gm, name), getattr(original, name), rtol=1e-5, atol=1e-6, err_msg=name)
    samples, labels = gm.sample(40)
    assert samples.shape == (40, D) and labels.shape == (40,)


def test_to_sklearn_of_a_gmmjax_fit_carries_hyperparameters_and_diagnostics(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gj.ConvergenceWarning)
        model = GaussianMixtureModel(
            num_components=K, num_iters=100, covariance_type="full", tol=1e-4, reg_covar=1e-5, seed=4
        ).fit(X)
    gm = model.to_sklearn()
    assert gm.get_params()["max_iter"] == 100 and gm.tol == 1e-4 and gm.reg_covar == 1e-5
    assert gm.random_state == 4 and gm.n_components == K
    assert gm.converged_ == model.converged_ and gm.n_iter_ == model.n_iter_
    assert gm.lower_bound_ == pytest.approx(model.lower_bound_)
    assert_same_predictions(gm, model, X)
    # scikit-learn can continue from it: a warm-started EM starts from gmmjax's parameters (with one
    # iteration, scikit-learn's lower bound is the mean log-likelihood of its starting parameters)
    gm.set_params(warm_start=True, max_iter=1, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning
        gm.fit(X)
    assert gm.lower_bound_ == pytest.approx(model.score(X), rel=1e-6)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_params_to_sklearn_matches_scipy(X, ct):
    rng = np.random.default_rng(1)
    weights = np.array([0.3, 0.7])
    means = rng.normal(size=(K, D)) * 3
    covariances = {
        "full": np.stack([a @ a.T + np.eye(D) for a in rng.normal(size=(K, D, D))]),
        "tied": np.array([[1.5, 0.4], [0.4, 0.7]]),
        "diag": rng.uniform(0.5, 2.0, size=(K, D)),
        "spherical": rng.uniform(0.5, 2.0, size=K),
    }[ct]
    params = gj.GMMParams(jax.numpy.asarray(weights), jax.numpy.asarray(means), jax.numpy.asarray(covariances), ct)
    gm = gj.params_to_sklearn(params, random_state=0)
    expected = mixture_log_prob(
        np.asarray(params.weights), np.asarray(params.means), np.asarray(params.covariances), ct, X
    )
    np.testing.assert_allclose(gm.score_samples(X), expected, rtol=1e-10)


def test_to_sklearn_needs_a_fitted_model_and_one_mixture():
    with pytest.raises(ValueError, match=r"not fitted yet: call fit\(X\) before to_sklearn\(\)"):
        GaussianMixtureModel(2).to_sklearn()
    batched = gj.GMMParams(np.ones((2, 1)), np.zeros((2, 1, 1)), np.ones((2, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"params must hold one mixture"):
        gj.params_to_sklearn(batched)
    with pytest.raises(ValueError, match=r"params must be a gmmjax.GMMParams"):
        gj.params_to_sklearn({"weights": 1})


# -- numpyro and distrax ---------------------------------------------------------------------------
def third_party(fn):
    """``fn`` run with implicit rank promotion allowed: numpyro's MixtureSameFamily broadcasts
    implicitly inside log_prob, which tests/conftest.py makes an error for gmmjax's own code
    (only the third-party call is wrapped, so gmmjax's code stays checked and its compiled
    functions stay shared with the other tests)."""

    def wrapped(*args):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args)

    return wrapped


@pytest.fixture(scope="module", params=["numpyro", "distrax"])
def to_distribution(request):
    pytest.importorskip(request.param)
    return {"numpyro": gj.to_numpyro, "distrax": gj.to_distrax}[request.param]


# jitted: one compilation per configuration instead of one per eager operation
_gmmjax_log_prob = jax.jit(gj.log_prob)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_mixture_same_family_log_prob_equals_gmmjax(X, converted, to_distribution, ct):
    params = converted[ct].params
    dist = to_distribution(params)
    assert dist.event_shape == (D,) and dist.batch_shape == ()
    x = X.astype(np.float32)
    log_prob = third_party(jax.jit(lambda p, x: to_distribution(p).log_prob(x)))(params, x)
    np.testing.assert_allclose(log_prob, _gmmjax_log_prob(params, x), rtol=1e-5, atol=1e-5)
    expected = mixture_log_prob(
        np.asarray(params.weights), np.asarray(params.means), np.asarray(params.covariances), ct, X
    )
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-4)


def test_mixture_same_family_gradients_and_batches(X, converted, to_distribution):
    params = converted["tied"].params
    x = X[:16].astype(np.float32)
    value, grads = third_party(jax.jit(jax.value_and_grad(lambda p: to_distribution(p).log_prob(x).sum())))(params)
    expected_value, expected_grads = jax.jit(jax.value_and_grad(lambda p: gj.log_prob(p, x).sum()))(params)
    assert value == pytest.approx(float(expected_value), rel=1e-5)
    for name in ("means", "covariances"):
        np.testing.assert_allclose(getattr(grads, name), getattr(expected_grads, name), rtol=1e-4, atol=1e-4)
    # The distributions normalise the weights (log-softmax) and gj.log_prob takes them as given, so
    # the weight gradients differ by a constant: they agree on the simplex (after removing the mean).
    centered = [g.weights - g.weights.mean() for g in (grads, expected_grads)]
    np.testing.assert_allclose(*centered, rtol=1e-4, atol=1e-4)
    # leading batch axes of the parameters become batch dimensions of the distribution
    shifted = params.replace(means=params.means + 1.0)
    batched = jax.tree_util.tree_map(lambda a, b: jax.numpy.stack([a, b]), params, shifted)
    dist = to_distribution(batched)
    assert dist.batch_shape == (2,) and dist.event_shape == (D,)
    log_probs = third_party(jax.jit(lambda p, x: to_distribution(p).log_prob(x[:, None, :])))(batched, x)  # (16, 2)
    np.testing.assert_allclose(log_probs[:, 0], _gmmjax_log_prob(params, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_probs[:, 1], _gmmjax_log_prob(params, x - 1.0), rtol=1e-5, atol=1e-5)


def test_model_to_numpyro_samples_and_scores(converted):
    pytest.importorskip("numpyro")
    model = converted["full"]
    dist = model.to_numpyro()
    draws = third_party(jax.jit(lambda key: dist.sample(key, (7,))))(jax.random.key(0))
    assert draws.shape == (7, D)
    with pytest.raises(ValueError, match=r"not fitted yet: call fit\(X\) before to_numpyro\(\)"):
        GaussianMixtureModel().to_numpyro()
