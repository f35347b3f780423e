"""float64 checks of the unconstrained parametrisation and the gradient fit, asserted by
``tests/test_unconstrained.py`` and ``tests/test_gradient.py``.

``CHECKS`` are registered into ``_x64_parity_script.py`` (the float64 subprocess of every
test run, started in the background by ``conftest.py``); ``jax_enable_x64`` is global state,
so they never run in the test process. Oracles: central finite differences and scipy
(``_oracles.py``). Importing this module has no side effects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import _oracles as O
import gmmjax as gj

CHECKS = {}


def params_of(covariance_type, k=3, d=4, seed=0):
    w, m, c = O.random_mixture(covariance_type, k, d, seed)
    return gj.GMMParams(jnp.asarray(w), jnp.asarray(m), jnp.asarray(c), covariance_type)


@jax.jit
def round_trips(p):
    u = gj.to_unconstrained(p)
    q = gj.from_unconstrained(u)
    return u, q, gj.to_unconstrained(q)


def round_trip(covariance_type):
    p = params_of(covariance_type)
    u, q, v = round_trips(p)
    assert u.means.dtype == jnp.float64 and u.raw_precision_cholesky.dtype == jnp.float64
    for name in ("weights", "means", "covariances"):
        O.assert_rel_close(getattr(q, name), getattr(p, name), 1e-13, name, floor=1e-3)
    # and back: the unconstrained numbers themselves round-trip
    for name in ("logits", "means", "raw_precision_cholesky"):
        O.assert_rel_close(getattr(v, name), getattr(u, name), 1e-12, name, floor=1e-3)
    # the stored factor is scikit-learn's precisions_cholesky_ (log on the diagonal)
    prec_chol = O.precision_cholesky(p.covariances, covariance_type)
    raw = np.asarray(u.raw_precision_cholesky)
    if covariance_type in ("full", "tied"):
        diagonal = np.diagonal(raw, axis1=-2, axis2=-1)
        np.testing.assert_allclose(np.exp(diagonal), np.diagonal(prec_chol, axis1=-2, axis2=-1), rtol=1e-13)
        np.testing.assert_allclose(np.triu(raw, 1), np.triu(prec_chol, 1), rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(np.tril(raw, -1), 0.0)
    else:
        np.testing.assert_allclose(np.exp(raw), prec_chol, rtol=1e-13)


def random_unconstrained(covariance_type, k, d, rng, spread=1.0):
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
    return gj.UnconstrainedParams(
        jnp.asarray(rng.normal(size=k)),
        jnp.asarray(rng.normal(size=(k, d))),
        jnp.asarray(spread * rng.normal(size=shape)),
        covariance_type,
    )


def fd_log_prob(covariance_type):
    """jax.grad of Σ log p vs central differences, in every unconstrained number and in X."""
    rng = np.random.default_rng(1)
    k, d = 2, 3
    u = random_unconstrained(covariance_type, k, d, rng, spread=0.5)
    X = rng.normal(scale=2.0, size=(8, d))

    total = jax.jit(lambda u, X: jnp.sum(gj.unconstrained_log_prob(u, X)))
    grad_u, grad_x = jax.grad(total, argnums=(0, 1))(u, jnp.asarray(X))
    h = 1e-6
    for name in ("logits", "means", "raw_precision_cholesky"):
        value = np.asarray(getattr(u, name))
        fd = O.central_difference(lambda a: float(total(u.replace(**{name: jnp.asarray(a)}), X)), value, h)  # noqa: B023  called at once
        O.assert_rel_close(getattr(grad_u, name), fd, 1e-6, f"d/d{name}", floor=1e-2)
    if covariance_type in ("full", "tied"):  # the ignored lower triangle has zero gradient
        np.testing.assert_array_equal(np.tril(np.asarray(grad_u.raw_precision_cholesky), -1), 0.0)
    fd_x = O.central_difference(lambda a: float(total(u, jnp.asarray(a))), X, h)
    O.assert_rel_close(grad_x, fd_x, 1e-6, "d/dX", floor=1e-2)
    # and the value is scipy's density of from_unconstrained(u)
    density, p = jax.jit(lambda u, X: (gj.unconstrained_log_prob(u, X), gj.from_unconstrained(u)))(u, X)
    O.assert_rel_close(
        density, O.mixture_log_prob(p.weights, p.means, p.covariances, covariance_type, X), 1e-12, "log_prob vs scipy"
    )


for covariance_type in O.COVARIANCE_TYPES:
    CHECKS[f"round_trip_{covariance_type}"] = lambda ct=covariance_type: round_trip(ct)
    CHECKS[f"fd_log_prob_{covariance_type}"] = lambda ct=covariance_type: fd_log_prob(ct)


def fd_fit_gradient():
    """d(fitted lower bound)/dX through five Adam steps vs a central difference along a direction."""
    X, _, _ = O.make_blobs(n=40, d=2, k=2, seed=4, spread=3.0)
    w0, m0, c0 = O.initial_parameters(X, 2, "full", seed=5)
    p0 = O.precisions_from_covariances(c0, "full")
    direction = np.random.default_rng(6).normal(size=X.shape)

    def lower_bound(X):
        return gj.fit_gradient(
            jax.random.key(0), X, 2, num_steps=5, weights_init=w0, means_init=m0, precisions_init=p0
        ).lower_bound

    value_and_grad = jax.jit(jax.value_and_grad(lower_bound))
    value, grad = value_and_grad(jnp.asarray(X))
    assert value.dtype == jnp.float64 and np.all(np.isfinite(np.asarray(grad)))
    h = 1e-5  # the values come from the same compiled function (one compilation)
    fd = (float(value_and_grad(X + h * direction)[0]) - float(value_and_grad(X - h * direction)[0])) / (2 * h)
    analytic = float(jnp.sum(grad * direction))
    assert abs(analytic - fd) <= 1e-6 * abs(fd), (analytic, fd)


CHECKS["fd_fit_gradient"] = fd_fit_gradient


def fd_fit_gradient_sample_weight(covariance_type):
    """d(fitted means)/d(sample_weight) through ten Adam steps vs a central difference: the
    full and tied factors' unused lower triangle must not reach the optimizer (Adam's √ν at
    ν = 0 made this gradient NaN)."""
    X, _, _ = O.make_blobs(n=60, d=2, k=2, seed=4, spread=3.0)
    w0, m0, c0 = O.initial_parameters(X, 2, covariance_type, seed=5)
    p0 = O.precisions_from_covariances(c0, covariance_type)
    direction = np.random.default_rng(7).normal(size=X.shape[0])

    def first_mean(sample_weight):
        return gj.fit_gradient(
            jax.random.key(0),
            X,
            2,
            num_steps=10,
            sample_weight=sample_weight,
            covariance_type=covariance_type,
            weights_init=w0,
            means_init=m0,
            precisions_init=p0,
        ).params.means[0, 0]

    value_and_grad = jax.jit(jax.value_and_grad(first_mean))
    ones = jnp.ones(X.shape[0])
    _, grad = value_and_grad(ones)
    assert np.all(np.isfinite(np.asarray(grad))), grad
    h = 1e-5
    fd = (float(value_and_grad(ones + h * direction)[0]) - float(value_and_grad(ones - h * direction)[0])) / (2 * h)
    analytic = float(jnp.sum(grad * direction))
    assert abs(analytic - fd) <= 1e-6 * abs(fd), (analytic, fd)


for _covariance_type in ("full", "tied"):
    CHECKS[f"fd_fit_gradient_sample_weight_{_covariance_type}"] = lambda ct=_covariance_type: (
        fd_fit_gradient_sample_weight(ct)
    )
