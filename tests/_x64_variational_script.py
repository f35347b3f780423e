"""float64 parity of :func:`gmmjax.fit_variational` with scikit-learn's ``BayesianGaussianMixture``,
run in a subprocess (``jax_enable_x64`` is global) by ``tests/test_variational.py``.

Both start from the same initial responsibilities: scikit-learn's ``_initialize`` is given
them (monkeypatched on the instance), gmmjax gets them through the private ``_resp_init``.
Prints one line ``X64_VARIATIONAL <json>`` mapping each check to ``"ok"`` or its traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings

import jax

if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

RTOL = 1e-6
TYPES = ("full", "tied", "diag", "spherical")
PRIORS = ("dirichlet_process", "dirichlet_distribution")


def _data(num_features=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(3, num_features))
    return np.concatenate([rng.normal(size=(100, num_features)) + c for c in centers])


def _resp(num_samples, num_components, seed=1):
    resp = np.random.default_rng(seed).uniform(size=(num_samples, num_components))
    return resp / resp.sum(axis=1, keepdims=True)


def _sklearn(X, resp, **kwargs):
    from sklearn.mixture import BayesianGaussianMixture

    model = BayesianGaussianMixture(n_components=resp.shape[1], init_params="random", random_state=0, **kwargs)
    initialize = model._initialize
    model._initialize = lambda X_, _: initialize(X_, resp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X)


def _close(name, actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if expected.shape == (1,) and actual.shape == ():  # scikit-learn's tied lower bound is a (1,) array
        expected = expected[0]
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * np.max(np.abs(expected)), err_msg=name)


def _compare(result, model):
    import gmmjax as gj

    posterior = result.params
    assert int(result.n_iter) == model.n_iter_, (int(result.n_iter), model.n_iter_)
    assert bool(result.converged) == model.converged_
    _close("lower_bound", result.lower_bound, model.lower_bound_)
    history = np.asarray(result.lower_bound_history[int(result.best_restart)])[: model.n_iter_]
    _close("lower_bounds", history, np.ravel(model.lower_bounds_))
    if model.weight_concentration_prior_type == "dirichlet_process":
        for i in range(2):
            _close(f"weight_concentration[{i}]", posterior.weight_concentration[i], model.weight_concentration_[i])
    else:
        _close("weight_concentration", posterior.weight_concentration, model.weight_concentration_)
    for name in ("mean_precision", "means", "degrees_of_freedom", "covariances", "precisions_cholesky", "weights"):
        _close(name, getattr(posterior, name), getattr(model, name + "_"))
    _close("mean_prior", posterior.prior.mean, model.mean_prior_)
    _close("covariance_prior", posterior.prior.covariance, model.covariance_prior_)
    # the estimator's attributes (scikit-learn's names) and predictions (the variational
    # log-joint, as scikit-learn's) from the same result
    X = model._parity_X
    estimator = gj.BayesianGaussianMixtureModel(n_components=model.n_components)
    estimator._store(result)
    for name in (
        "mean_precision_", "means_", "degrees_of_freedom_", "covariances_", "precisions_", "precisions_cholesky_",
        "weights_", "mean_prior_", "covariance_prior_", "weight_concentration_prior_", "mean_precision_prior_",
        "degrees_of_freedom_prior_", "lower_bound_", "n_iter_", "converged_",
    ):  # fmt: skip
        _close("estimator." + name, getattr(estimator, name), getattr(model, name))
    concentration = model.weight_concentration_
    for i, part in enumerate(concentration if isinstance(concentration, tuple) else (concentration,)):
        mine = estimator.weight_concentration_
        _close(f"estimator.weight_concentration_[{i}]", mine[i] if isinstance(mine, tuple) else mine, part)
    _close("score_samples", estimator.score_samples(X), model.score_samples(X))
    _close("predict_proba", estimator.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(estimator.predict(X), model.predict(X))
    _close("score", estimator.score(X), model.score(X))


def parity(covariance_type, prior_type, num_features=3, chunk_size=None, **priors):
    import gmmjax as gj

    X = _data(num_features)
    resp = _resp(X.shape[0], 4)
    kwargs = dict(covariance_type=covariance_type, weight_concentration_prior_type=prior_type, max_iter=40, tol=1e-6)
    model = _sklearn(X, resp, **kwargs, **priors)
    model._parity_X = X
    result = gj.fit_variational(jax.random.key(0), X, 4, _resp_init=resp, chunk_size=chunk_size, **kwargs, **priors)
    assert result.params.means.dtype == np.float64
    _compare(result, model)


def weights_as_repeats():
    """Integer sample weights equal repeated rows (scikit-learn on the repeated data)."""
    import gmmjax as gj

    X = _data()
    counts = np.random.default_rng(3).integers(1, 4, X.shape[0])
    repeated = np.repeat(X, counts, axis=0)
    resp = _resp(X.shape[0], 4)
    kwargs = dict(covariance_type="full", max_iter=40, tol=1e-6)
    model = _sklearn(repeated, np.repeat(resp, counts, axis=0), **kwargs)
    model._parity_X = X
    result = gj.fit_variational(jax.random.key(0), X, 4, sample_weight=counts.astype(float), _resp_init=resp, **kwargs)
    _compare(result, model)


def warm_start(covariance_type="full", prior_type="dirichlet_process"):
    """scikit-learn's warm start one iteration at a time (``warm_start=True, max_iter=1``, fitted
    until it converges) against fit_variational continued by ``posterior_init`` and
    ``lower_bound_init``: the bound and convergence flag of every call, then the posterior."""
    import gmmjax as gj

    X = _data()
    resp = _resp(X.shape[0], 4)
    kwargs = dict(covariance_type=covariance_type, weight_concentration_prior_type=prior_type, max_iter=1, tol=1e-4)
    model = _sklearn(X, resp, warm_start=True, **kwargs)
    result = gj.fit_variational(jax.random.key(0), X, 4, _resp_init=resp, **kwargs)
    calls = 1
    while True:
        _close(f"lower_bound (call {calls})", result.lower_bound, model.lower_bound_)
        assert bool(result.converged) == model.converged_, (calls, bool(result.converged), model.converged_)
        assert int(result.n_iter) == model.n_iter_ == 1
        if model.converged_:
            break
        assert calls < 200, "scikit-learn's warm start did not converge"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X)
        result = gj.fit_variational(
            jax.random.key(0), X, 4, posterior_init=result.params, lower_bound_init=result.lower_bound, **kwargs
        )
        calls += 1
    assert calls > 5, calls  # the loop above compared a real sequence
    model._parity_X = X
    _compare(result, model)


def checks():
    found = {}
    for covariance_type in TYPES:
        for prior_type in PRIORS:
            found[f"parity_{covariance_type}_{prior_type}"] = lambda c=covariance_type, p=prior_type: parity(c, p)
    # D = 8 > SMALL_FEATURES: the expanded (matrix-product) E-step for full/tied too; chunked passes
    found["parity_full_d8_chunked"] = lambda: parity("full", "dirichlet_process", num_features=8, chunk_size=64)
    found["parity_tied_d8"] = lambda: parity("tied", "dirichlet_distribution", num_features=8)
    found["parity_given_priors"] = lambda: parity(
        "diag",
        "dirichlet_process",
        weight_concentration_prior=0.5,
        mean_precision_prior=0.1,
        mean_prior=np.ones(3),
        degrees_of_freedom_prior=5.0,
        covariance_prior=np.full(3, 2.0),
    )
    found["parity_given_priors_full"] = lambda: parity(
        "full", "dirichlet_distribution", degrees_of_freedom_prior=2.5, covariance_prior=np.eye(3) * 3.0
    )
    found["weights_as_repeats"] = weights_as_repeats
    found["warm_start_full"] = warm_start
    found["warm_start_diag_dirichlet_distribution"] = lambda: warm_start("diag", "dirichlet_distribution")
    return found


if __name__ == "__main__":
    available = checks()
    names = sys.argv[1:] or list(available)
    results = {}
    for name in names:
        try:
            available[name]()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 — reported to the parent test
            results[name] = traceback.format_exc()
    print("X64_VARIATIONAL " + json.dumps(results))
    sys.exit(0 if all(value == "ok" for value in results.values()) else 1)
