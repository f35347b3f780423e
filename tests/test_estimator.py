"""GaussianMixtureModel: the original example, the scikit-learn interface, and its numbers
checked against oracles (scikit-learn configured with the same parameters, scipy densities,
the generating parameters, duplicated rows for integer sample weights)."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import gmmjax as gj
from gmmjax import GaussianMixtureModel

COV_TYPES = ("full", "tied", "diag", "spherical")
# float64 input is computed in float32 unless jax_enable_x64 is on (global state).
_DEFAULT_FLOAT = np.float64 if __import__("jax").config.jax_enable_x64 else np.float32

TRUE_WEIGHTS = np.array([0.6, 0.4])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 3.0]])
TRUE_COVS = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]], dtype=float)

ORIGINAL_EXAMPLE = """
import numpy as np
from gmmjax import generate_gmm_data, GaussianMixtureModel
weights = np.array([0.6, 0.4]); means = np.array([[0, 0], [3, 3]])
covariances = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]])
data = generate_gmm_data(num_samples=600, weights=weights, means=means, covariances=covariances)
model = GaussianMixtureModel(num_components=2, num_iters=100); model.fit(data)
print(model.weights, model.means, model.covariances)
"""


# -- oracles ----------------------------------------------------------------------------------
def full_covariances(covariances, covariance_type, k, d):
    """scikit-learn-shaped covariances as (K, D, D) float64."""
    c = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (k, d, d))
    if covariance_type == "diag":
        return np.stack([np.diag(row) for row in c])
    return np.stack([s * np.eye(d) for s in c])


def scipy_log_density(weights, means, covariances, covariance_type, X):
    """log sum_k w_k N(x | mu_k, Sigma_k) with scipy, float64."""
    k, d = np.shape(means)
    covs = full_covariances(covariances, covariance_type, k, d)
    comp = np.stack(
        [
            np.log(weights[j])
            + stats.multivariate_normal(np.asarray(means[j], float), covs[j]).logpdf(np.asarray(X, float))
            for j in range(k)
        ],
        axis=1,
    )
    return logsumexp(comp, axis=1)


def precisions_to_covariances(precisions, covariance_type):
    p = np.asarray(precisions, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(p)
    return 1.0 / p


def sklearn_twin(model, X):
    """scikit-learn GaussianMixture holding exactly ``model``'s parameters (float64)."""
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    ct = model.covariance_type
    gm = GaussianMixture(n_components=model.weights_.shape[0], covariance_type=ct, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(np.asarray(X, np.float64))
    gm.weights_ = np.asarray(model.weights_, np.float64)
    gm.means_ = np.asarray(model.means_, np.float64)
    gm.covariances_ = np.asarray(model.covariances_, np.float64)
    gm.precisions_cholesky_ = _compute_precision_cholesky(gm.covariances_, ct)
    gm.precisions_ = precisions_to_covariances(gm.covariances_, ct)  # inverse of the covariances
    return gm


def match_to_truth(fitted_means, true_means):
    """Permutation p with fitted_means[p] closest to true_means."""
    k = len(true_means)
    return list(
        min(
            itertools.permutations(range(k)),
            key=lambda p: np.sum((np.asarray(fitted_means)[list(p)] - true_means) ** 2),
        )
    )


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    X, labels = gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS, return_labels=True)
    return np.asarray(X), np.asarray(labels)


@pytest.fixture(scope="module")
def X(data):
    return data[0]


@pytest.fixture(scope="module")
def fitted(X):
    models = {}
    for ct in COV_TYPES:
        models[ct] = GaussianMixtureModel(num_components=2, num_iters=100, covariance_type=ct).fit(X)
    return models


# -- 1. the original example ------------------------------------------------------------------
def test_original_example_runs_unchanged_and_recovers_parameters(capsys):
    namespace = {}
    exec(compile(ORIGINAL_EXAMPLE, "<original example>", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.strip(), "the example prints the fitted parameters"
    model, data = namespace["model"], namespace["data"]
    assert np.shape(data) == (600, 2)
    assert model.converged_
    order = match_to_truth(model.means, TRUE_MEANS)
    # Tolerances ~4 standard errors for 600 samples (weights ~0.02, means ~0.065, cov entries ~0.09).
    np.testing.assert_allclose(model.weights[order], TRUE_WEIGHTS, atol=0.08)
    np.testing.assert_allclose(model.means[order], TRUE_MEANS, atol=0.25)
    np.testing.assert_allclose(model.covariances[order], TRUE_COVS, atol=0.3)
    np.testing.assert_allclose(model.weights.sum(), 1.0, rtol=1e-6)


def test_original_example_labels_agree_with_generating_labels(data, fitted):
    X, labels = data
    pred = fitted["full"].predict(X)
    order = match_to_truth(fitted["full"].means_, TRUE_MEANS)  # order[true] = fitted index
    mapped = np.argsort(order)[pred]
    assert np.mean(mapped == labels) > 0.9


# -- 2. names ---------------------------------------------------------------------------------
def test_sklearn_names_and_original_names_give_the_same_fit(X, fitted):
    sk = GaussianMixtureModel(n_components=2, max_iter=100, random_state=0).fit(X)
    positional = GaussianMixtureModel(2, 100, seed=0).fit(X)
    for m in (sk, positional):
        np.testing.assert_array_equal(m.weights_, fitted["full"].weights_)
        np.testing.assert_array_equal(m.means_, fitted["full"].means_)
        np.testing.assert_array_equal(m.covariances_, fitted["full"].covariances_)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_components=2, n_components=3), r"num_components=2 and n_components=3 disagree"),
        (dict(num_components=2, num_iters=5, max_iter=3), r"num_iters=5 and max_iter=3 disagree"),
        (dict(num_components=2, seed=1, random_state=2), r"seed=1 and random_state=2 disagree"),
    ],
)
def test_conflicting_aliases_raise(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureModel(**kwargs).fit(X)


def test_agreeing_aliases_are_accepted(X, fitted):
    m = GaussianMixtureModel(num_components=2, n_components=2, num_iters=100, max_iter=100, seed=0, random_state=0).fit(
        X
    )
    np.testing.assert_array_equal(m.means_, fitted["full"].means_)


# -- 2. attributes ----------------------------------------------------------------------------
@pytest.mark.parametrize("ct", COV_TYPES)
def test_fitted_attributes_exist_with_the_right_shapes(fitted, ct):
    m = fitted[ct]
    k, d = 2, 2
    cov_shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]
    assert m.weights_.shape == (k,)
    assert m.means_.shape == (k, d)
    for name in ("covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(m, name).shape == cov_shape, name
    assert isinstance(m.converged_, bool) and m.converged_
    assert isinstance(m.n_iter_, int) and 1 <= m.n_iter_ <= 100
    assert isinstance(m.lower_bound_, float) and np.isfinite(m.lower_bound_)
    assert m.lower_bounds_.shape == (m.n_iter_,)
    assert m.lower_bounds_[-1] == pytest.approx(m.lower_bound_)
    # EM never decreases the likelihood (up to float32 rounding).
    assert np.all(np.diff(m.lower_bounds_) > -1e-4)
    assert m.n_features_in_ == d
    assert isinstance(m.params, gj.GMMParams) and m.params.covariance_type == ct
    np.testing.assert_array_equal(np.asarray(m.params.means), m.means_)
    np.testing.assert_array_equal(m.weights, m.weights_)
    np.testing.assert_array_equal(m.means, m.means_)
    np.testing.assert_array_equal(m.covariances, m.covariances_)
    np.testing.assert_allclose(m.weights_.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_precisions_match_sklearn(fitted, ct):
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    m = fitted[ct]
    expected = _compute_precision_cholesky(m.covariances_.astype(np.float64), ct)
    np.testing.assert_allclose(m.precisions_cholesky_, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m.precisions_, precisions_to_covariances(m.covariances_, ct), rtol=1e-4, atol=1e-6)


# -- 2. inference -----------------------------------------------------------------------------
@pytest.mark.parametrize("ct", COV_TYPES)
def test_score_samples_predict_proba_bic_aic_match_sklearn(X, fitted, ct):
    m = fitted[ct]
    gm = sklearn_twin(m, X)
    np.testing.assert_allclose(m.score_samples(X), gm.score_samples(X), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(m.predict_proba(X), gm.predict_proba(X), atol=1e-4)
    assert m.bic(X) == pytest.approx(gm.bic(X), rel=1e-5)
    assert m.aic(X) == pytest.approx(gm.aic(X), rel=1e-5)
    assert m.score(X) == pytest.approx(gm.score(X), rel=1e-5)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_score_samples_match_scipy(X, fitted, ct):
    m = fitted[ct]
    expected = scipy_log_density(m.weights_, m.means_, m.covariances_, ct, X)
    np.testing.assert_allclose(m.score_samples(X), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_predict_is_argmax_of_predict_proba_and_score_is_mean(X, fitted, ct):
    m = fitted[ct]
    proba = m.predict_proba(X)
    assert proba.shape == (600, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(m.predict(X), np.argmax(proba, axis=1))
    assert m.score(X) == pytest.approx(float(np.mean(m.score_samples(X))), rel=1e-6)


def test_fit_predict_equals_fit_then_predict(X):
    labels = GaussianMixtureModel(2, 100).fit_predict(X)
    np.testing.assert_array_equal(labels, GaussianMixtureModel(2, 100).fit(X).predict(X))


def test_predict_accepts_lists_and_float64(X, fitted):
    m = fitted["full"]
    np.testing.assert_array_equal(m.predict(X[:5].tolist()), m.predict(X[:5]))
    np.testing.assert_allclose(m.score_samples(X[:5].astype(np.float64)), m.score_samples(X[:5]), rtol=1e-6)


# -- 2. sampling ------------------------------------------------------------------------------
@pytest.mark.parametrize("ct", COV_TYPES)
def test_sample_shapes_dtypes_and_moments(fitted, ct):
    m = fitted[ct]
    n = 20000
    Xs, labels = m.sample(n)
    # samples come in the model's dtype (float32 by default; float64 only under jax_enable_x64)
    assert Xs.shape == (n, 2) and Xs.dtype == m.means_.dtype == _DEFAULT_FLOAT
    assert labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1}
    freq = np.bincount(labels, minlength=2) / n
    np.testing.assert_allclose(freq, m.weights_, atol=0.02)
    np.testing.assert_allclose(Xs.mean(axis=0), m.weights_ @ m.means_, atol=0.06)
    covs = full_covariances(m.covariances_, ct, 2, 2)
    for k in range(2):
        Xk = Xs[labels == k]
        np.testing.assert_allclose(Xk.mean(axis=0), m.means_[k], atol=0.06)
        np.testing.assert_allclose(np.cov(Xk.T), covs[k], atol=0.1)


def test_sample_is_reproducible_and_key_dependent(fitted):
    import jax

    m = fitted["full"]
    a, _ = m.sample(50)
    b, _ = m.sample(50)
    np.testing.assert_array_equal(a, b)
    c, _ = m.sample(50, key=jax.random.key(123))
    assert not np.array_equal(a, c)


# -- 2. row buckets: no compilation per row count ------------------------------------------------
class _CompileCounter(logging.Handler):
    """Counts XLA compilations reported by ``jax.log_compiles``."""

    def __init__(self):
        super().__init__()
        self.compiled = []

    def emit(self, record):
        if "Finished XLA compilation" in record.getMessage():
            self.compiled.append(record.getMessage())


def _methods_on(m, X, n):
    return (
        m.predict(X[:n]),
        m.predict_proba(X[:n]),
        m.score_samples(X[:n]),
        m.score(X[:n]),
        m.bic(X[:n]),
        m.aic(X[:n]),
        m.sample(n),
    )


def test_new_row_counts_compile_nothing_and_give_the_unpadded_results(X, fitted):
    """predict/predict_proba/score_samples/score/bic/aic/sample pad rows to a bucket (the next
    power of two, at least 32) and slice: once a bucket is compiled, other row counts in it
    compile nothing, and the results are those of the unpadded computation (scikit-learn's
    on the same parameters; sample: gmmjax.sample's first rows)."""
    import jax

    from gmmjax._estimator import _row_bucket

    assert [_row_bucket(n) for n in (1, 32, 33, 64, 65, 2**16, 2**16 + 1, 5 * 2**14, 5 * 2**14 + 1)] == [
        32,
        32,
        64,
        64,
        128,
        2**16,
        5 * 2**14,
        5 * 2**14,
        6 * 2**14,
    ]
    m = fitted["full"]
    _methods_on(m, X, 5)  # compiles bucket 32 (if no earlier test did)
    counter = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles():
            results = {n: _methods_on(m, X, n) for n in (1, 2, 7, 20, 31, 32)}
    finally:
        logger.removeHandler(counter)
    assert counter.compiled == []
    twin = sklearn_twin(m, X)
    for n, (labels, proba, log_density, score, bic, aic, (Xs, ys)) in results.items():
        assert labels.shape == (n,) and proba.shape == (n, 2) and Xs.shape == (n, 2) and ys.shape == (n,)
        np.testing.assert_allclose(log_density, twin.score_samples(X[:n]), rtol=1e-5)
        np.testing.assert_allclose(proba, twin.predict_proba(X[:n]), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(labels, np.argmax(proba, axis=1))
        assert score == pytest.approx(twin.score(X[:n]), rel=1e-5)
        assert bic == pytest.approx(twin.bic(X[:n]), rel=1e-5)
        assert aic == pytest.approx(twin.aic(X[:n]), rel=1e-5)
        key = jax.random.fold_in(jax.random.key(0), 1)  # sample()'s key for seed None
        expected_X, expected_labels = gj.sample(key, m.params, n)
        np.testing.assert_array_equal(Xs, np.asarray(expected_X))
        np.testing.assert_array_equal(ys, np.asarray(expected_labels))


def test_sample_n_samples_error_has_scikit_learns_phrase(fitted):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"Invalid value for 'n_samples'.*n_samples must be an integer >= 1"):
            fitted["full"].sample(bad)


# -- 2. error messages contain scikit-learn's ---------------------------------------------------
def _bad_starting_parameters():
    full_not_pd = np.stack([np.eye(2), np.ones((2, 2))])
    full_not_pd[0, 0, 0] = -1.0
    yield "full", dict(weights_init=np.full((2, 1), 0.5))
    yield "full", dict(weights_init=np.array([1.2, 1.7]))
    yield "full", dict(weights_init=np.array([1.2, -0.2]))
    yield "full", dict(weights_init=np.array([0.3, 0.4]))
    yield "full", dict(means_init=np.zeros((3, 2)))
    yield "full", dict(precisions_init=np.ones((3, 2, 2)))
    yield "full", dict(precisions_init=full_not_pd)
    yield "tied", dict(precisions_init=np.ones((3, 3)))
    yield "tied", dict(precisions_init=full_not_pd[0])
    yield "diag", dict(precisions_init=np.ones((3, 2)))
    yield "diag", dict(precisions_init=np.full((2, 2), -1.0))
    yield "spherical", dict(precisions_init=np.ones(3))
    yield "spherical", dict(precisions_init=np.full(2, -1.0))


@pytest.mark.parametrize("ct, bad", list(_bad_starting_parameters()))
def test_starting_parameter_errors_contain_scikit_learns_message(X, ct, bad):
    """Code that matches scikit-learn's messages (its _check_weights, _check_means,
    _check_precisions) keeps working: gmmjax's message contains scikit-learn's, then explains."""
    from sklearn.mixture import GaussianMixture

    with pytest.raises(ValueError) as theirs:
        GaussianMixture(n_components=2, covariance_type=ct, **bad).fit(X)
    with pytest.raises(ValueError) as ours:
        GaussianMixtureModel(n_components=2, covariance_type=ct, **bad).fit(X)
    assert str(theirs.value) in str(ours.value)
    assert len(str(ours.value)) > len(str(theirs.value)) + 20  # and gmmjax's explanation follows


def test_too_few_samples_error_contains_scikit_learns_message(X):
    from sklearn.mixture import GaussianMixture

    with pytest.raises(ValueError) as theirs:
        GaussianMixture(n_components=3).fit(X[:2])
    with pytest.raises(ValueError, match="provide more samples or decrease num_components") as ours:
        GaussianMixtureModel(n_components=3).fit(X[:2])
    assert str(theirs.value) in str(ours.value)


# -- 2. convergence ---------------------------------------------------------------------------
def test_convergence_warning_when_iteration_limit_hit(X):
    with pytest.warns(gj.ConvergenceWarning, match=r"did not converge within 1 iterations"):
        m = GaussianMixtureModel(2, 1, tol=0.0).fit(X)
    assert m.converged_ is False
    assert m.n_iter_ == 1
    assert issubclass(gj.ConvergenceWarning, UserWarning)


def test_no_warning_when_converged(X):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = GaussianMixtureModel(2, 100).fit(X)
    assert m.converged_


def test_convergence_warning_is_scikit_learns_once_it_is_imported(X):
    """Filters on scikit-learn's ConvergenceWarning (as scikit-learn users write them, e.g. its
    ignore_warnings) silence gmmjax's too; gmmjax's class still catches it."""
    sklearn_exceptions = pytest.importorskip("sklearn.exceptions")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", sklearn_exceptions.ConvergenceWarning)
        GaussianMixtureModel(2, 1, tol=0.0).fit(X)
    with pytest.warns(sklearn_exceptions.ConvergenceWarning, match="did not converge") as caught:
        GaussianMixtureModel(2, 1, tol=0.0).fit(X)
    assert all(issubclass(w.category, gj.ConvergenceWarning) for w in caught)
    # and its message begins with scikit-learn's own (code matching it keeps working)
    from sklearn.mixture import GaussianMixture

    with pytest.warns(sklearn_exceptions.ConvergenceWarning) as theirs:
        GaussianMixture(2, max_iter=1, tol=0.0).fit(X)
    assert str(caught[0].message).startswith(str(theirs[0].message))


def test_max_iter_zero_returns_the_initialisation_as_scikit_learn_does(X):
    """scikit-learn's max_iter=0: the initial parameters (users read initial means this way),
    n_iter_ 0, not converged, lower_bound_ -inf, an empty history, no ConvergenceWarning."""
    from sklearn.mixture import GaussianMixture

    means_init = np.array([[0.5, -0.5], [2.0, 3.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = GaussianMixtureModel(n_components=2, max_iter=0, means_init=means_init).fit(X)
        theirs = GaussianMixture(n_components=2, max_iter=0, means_init=means_init, random_state=0).fit(X)
    np.testing.assert_allclose(ours.means_, theirs.means_)
    assert (
        (ours.n_iter_, ours.converged_, ours.lower_bound_)
        == (theirs.n_iter_, theirs.converged_, theirs.lower_bound_)
        == (0, False, -np.inf)
    )
    assert len(ours.lower_bounds_) == len(theirs.lower_bounds_) == 0
    # without means_init: k-means' centers, the same as the starting point of a longer fit
    first_step = GaussianMixtureModel(n_components=2, max_iter=1, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gj.ConvergenceWarning)
        first_step.fit(X)
    initial = GaussianMixtureModel(n_components=2, max_iter=0).fit(X)
    assert initial.lower_bound_ == -np.inf
    # one EM step's lower bound is the log-likelihood of its starting (initial) parameters
    assert first_step.lower_bound_ == pytest.approx(initial.score(X), rel=1e-5)
    np.testing.assert_array_equal(GaussianMixtureModel(n_components=2, max_iter=0).fit_predict(X), initial.predict(X))


def test_warm_start_one_iteration_at_a_time_converges_like_scikit_learn(X):
    """With warm_start and max_iter=1 each fit continues the convergence test from the previous
    lower_bound_ (scikit-learn's rule): the same calls converge, with the same lower bounds."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
    from sklearn.mixture import GaussianMixture

    init = dict(
        weights_init=np.array([0.5, 0.5]),
        means_init=np.array([[1.0, 1.0], [2.0, 2.0]]),
        precisions_init=np.stack([np.eye(2)] * 2),
    )
    ours = GaussianMixtureModel(n_components=2, max_iter=1, warm_start=True, tol=1e-3, **init)
    theirs = GaussianMixture(n_components=2, max_iter=1, warm_start=True, tol=1e-3, **init)
    history = {"ours": [], "theirs": []}
    for _ in range(40):
        for name, model in (("ours", ours), ("theirs", theirs)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.fit(X)
            warned = any(issubclass(w.category, SklearnConvergenceWarning) for w in caught)
            history[name].append((model.converged_, warned, model.n_iter_, model.lower_bound_))
        if theirs.converged_:
            break
    assert theirs.converged_ and len(history["theirs"]) > 2  # a test of the warm-started convergence test
    assert [h[:3] for h in history["ours"]] == [h[:3] for h in history["theirs"]]
    np.testing.assert_allclose([h[3] for h in history["ours"]], [h[3] for h in history["theirs"]], rtol=1e-5)


def test_warm_start_continues_from_previous_parameters(X):
    m = GaussianMixtureModel(2, 100).fit(X)
    previous_bound = m.lower_bound_
    score_of_previous_params = m.score(X)
    m.set_params(warm_start=True, num_iters=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gj.ConvergenceWarning)
        m.fit(X)
    assert m.n_iter_ == 1
    # With one iteration the lower bound is the log-likelihood of the starting parameters,
    # which must be the previous fit's final parameters.
    assert m.lower_bound_ == pytest.approx(score_of_previous_params, abs=1e-5)
    assert m.lower_bound_ >= previous_bound - 1e-5


def test_warm_start_rejects_a_changed_configuration(X):
    m = GaussianMixtureModel(2, 100, warm_start=True).fit(X)
    m.set_params(num_components=3)
    with pytest.raises(ValueError, match=r"warm_start needs the same num_components"):
        m.fit(X)


# -- 2. sample weights ------------------------------------------------------------------------
def test_integer_sample_weights_equal_duplicated_rows(X):
    rng = np.random.default_rng(0)
    Xs = X[:60]
    counts = rng.integers(1, 4, size=len(Xs))
    init = dict(
        weights_init=np.array([0.5, 0.5]),
        means_init=np.array([[0.5, 0.5], [2.5, 2.5]]),
        precisions_init=np.stack([np.eye(2), np.eye(2)]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gj.ConvergenceWarning)
        weighted = GaussianMixtureModel(2, 5, tol=0.0, **init).fit(Xs, sample_weight=counts)
        duplicated = GaussianMixtureModel(2, 5, tol=0.0, **init).fit(np.repeat(Xs, counts, axis=0))
    np.testing.assert_allclose(weighted.weights_, duplicated.weights_, rtol=1e-4)
    np.testing.assert_allclose(weighted.means_, duplicated.means_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weighted.covariances_, duplicated.covariances_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weighted.lower_bounds_, duplicated.lower_bounds_, rtol=1e-5)
    # and the weights matter: unweighted differs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gj.ConvergenceWarning)
        unweighted = GaussianMixtureModel(2, 5, tol=0.0, **init).fit(Xs)
    assert not np.allclose(unweighted.means_, weighted.means_, rtol=1e-3)


# -- 2. seeds ---------------------------------------------------------------------------------
def test_same_seed_gives_identical_fit(X):
    a = GaussianMixtureModel(2, 100, seed=5).fit(X)
    b = GaussianMixtureModel(2, 100, random_state=5).fit(X)
    for name in ("weights_", "means_", "covariances_", "lower_bounds_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_different_seeds_can_differ(X):
    kw = dict(n_init=2, init_params="random", tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gj.ConvergenceWarning)
        a = GaussianMixtureModel(2, 3, seed=0, **kw).fit(X)
        a2 = GaussianMixtureModel(2, 3, seed=0, **kw).fit(X)
        b = GaussianMixtureModel(2, 3, seed=1, **kw).fit(X)
    np.testing.assert_array_equal(a.means_, a2.means_)
    assert not np.array_equal(a.fit_result_.restart_lower_bounds, b.fit_result_.restart_lower_bounds)


def test_jax_key_as_seed(X):
    import jax

    a = GaussianMixtureModel(2, 100, seed=jax.random.key(5)).fit(X)
    b = GaussianMixtureModel(2, 100, seed=5).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)


# -- 2. parameter protocol --------------------------------------------------------------------
def test_get_params_set_params_round_trip():
    m = GaussianMixtureModel(3, 50, covariance_type="diag", tol=1e-4, n_init=2, seed=7)
    params = m.get_params()
    assert params["num_components"] == 3 and params["num_iters"] == 50
    assert params["covariance_type"] == "diag" and params["seed"] == 7
    clone = GaussianMixtureModel(**params)
    assert clone.get_params() == params
    assert m.set_params(tol=0.5, covariance_type="tied") is m
    assert m.get_params()["tol"] == 0.5 and m.covariance_type == "tied"
    assert "covariance_type='tied'" in repr(m)
    with pytest.raises(ValueError, match=r"Invalid parameter 'bogus' for GaussianMixtureModel"):
        m.set_params(bogus=1)


def test_sklearn_clone_works():
    from sklearn.base import clone

    m = GaussianMixtureModel(3, 50, covariance_type="spherical", reg_covar=1e-3)
    c = clone(m)
    assert c is not m and c.get_params() == m.get_params()


# -- 2. user-given initial parameters ---------------------------------------------------------
INIT_PRECISIONS = {
    "full": np.linalg.inv(np.array([[[1.5, 0.3], [0.3, 0.8]], [[0.7, -0.2], [-0.2, 1.2]]])),
    "tied": np.linalg.inv(np.array([[1.3, 0.4], [0.4, 0.9]])),
    "diag": np.array([[1.0, 2.0], [0.5, 1.5]]),
    "spherical": np.array([1.2, 0.6]),
}


@pytest.mark.parametrize("ct", COV_TYPES)
def test_user_initial_parameters_are_used(X, ct):
    w0 = np.array([0.3, 0.7])
    mu0 = np.array([[0.5, -0.5], [2.5, 3.5]])
    prec0 = INIT_PRECISIONS[ct]
    with pytest.warns(gj.ConvergenceWarning):
        m = GaussianMixtureModel(
            2, 1, tol=0.0, covariance_type=ct, weights_init=w0, means_init=mu0, precisions_init=prec0
        ).fit(X)
    expected = np.mean(scipy_log_density(w0, mu0, precisions_to_covariances(prec0, ct), ct, X))
    assert m.lower_bounds_.shape == (1,)
    assert m.lower_bounds_[0] == pytest.approx(expected, rel=1e-5)


# -- 2. no scikit-learn at run time -----------------------------------------------------------
def test_estimator_imports_and_fits_without_sklearn():
    code = textwrap.dedent("""
        import importlib.abc, sys

        class BlockSklearn(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "sklearn" or name.startswith("sklearn."):
                    raise ImportError("scikit-learn is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockSklearn())
        try:
            import sklearn  # noqa: F401
        except ImportError:
            pass
        else:
            sys.exit("the blocker did not block sklearn")

        import numpy as np
        import gmmjax
        X = np.random.default_rng(0).normal(size=(40, 2))
        m = gmmjax.GaussianMixtureModel(num_components=1, num_iters=10).fit(X)
        assert np.all(np.isfinite(m.means_)), m.means_
        np.testing.assert_allclose(m.means_[0], X.mean(axis=0), rtol=1e-4, atol=1e-5)
        m.predict(X); m.score_samples(X); m.sample(3)
        # the scikit-learn protocol needs no scikit-learn; converting to it says how to install it
        assert m.__sklearn_is_fitted__() and m.get_params()["num_components"] == 1
        try:
            m.to_sklearn()
        except ImportError as exc:
            assert "pip install 'gmmjax[sklearn]'" in str(exc), exc
        else:
            sys.exit("to_sklearn() worked without scikit-learn")
        try:
            gmmjax.GaussianMixtureModel().predict(X)
        except gmmjax.NotFittedError as exc:
            assert type(exc) is gmmjax.NotFittedError  # not the scikit-learn flavour
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gmmjax.GaussianMixtureModel(num_components=1, num_iters=1, tol=0.0).fit(X)
        assert [w.category for w in caught] == [gmmjax.ConvergenceWarning], caught
        assert not any(name.split(".")[0] == "sklearn" for name in sys.modules)
        print("fitted without sklearn")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fitted without sklearn" in proc.stdout
