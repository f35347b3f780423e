"""float64 checks of gradients through ``fit_em`` (both ``differentiation`` modes) against
central finite differences of the fit itself, asserted by ``tests/test_grad_through_fit.py``.

``CHECKS`` are registered into ``_x64_parity_script.py`` (the float64 subprocess of every
test run); ``SLOW_CHECKS`` (more covariance types, 5 s of compilation each) run only with
``pytest -m slow``, as ``python tests/_x64_grad_checks.py``. Importing this module has no
side effects.

The fits use well-separated but not disjoint clusters: EM's rate is about 0.2, so the
fixed point is reached to rounding after the iterations given, and the coupling through the
responsibilities that implicit differentiation must capture is far above the tolerance
(without the adjoint solve the first check is off by ~30%).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import _oracles as O
import gmmjax as gj

MODES = ("implicit", "unrolled")
RTOL = 1e-5  # the target
STEP = 1e-5  # central differences: truncation ~STEP², rounding ~eps/STEP, both far below RTOL
K = 2
# tol=0 runs every iteration: the number of iterations (a discrete part of the fit) cannot
# change under the finite-difference perturbation, and 150 iterations reach the fixed point.
CONVERGED = dict(tol=0.0, max_iter=150)

CHECKS = {}
SLOW_CHECKS = {}


def check(name, registry=CHECKS):
    def register(fn):
        registry[name] = fn
        return fn

    return register


def _data(n=40, seed=1):
    X, _, _ = O.make_blobs(n=n, d=2, k=K, seed=seed, spread=2.0)
    return X


def _fit(X, mode, **kwargs):
    return gj.fit_em(jax.random.key(0), X, K, differentiation=mode, **{**CONVERGED, **kwargs})


def _assert_gradient(grad_fn, value_fn, x, name, modes=MODES):
    """``grad_fn(x, mode)`` against central differences of ``value_fn`` (a plain fit)."""
    x = np.asarray(x, np.float64)
    fd = O.central_difference(lambda v: float(value_fn(jnp.asarray(v))), x, STEP)
    assert np.max(np.abs(fd)) > 1e-3, (name, "the derivative is too small to test anything")
    for mode in modes:
        O.assert_rel_close(grad_fn(jnp.asarray(x), mode), fd, RTOL, f"{name} ({mode})")


def _fitted_quantities(covariance_type, modes):
    """d(Σ c ⊙ means + Σ c' ⊙ covariances + lower_bound)/d(X, sample_weight, reg_covar) from a
    k-means initialisation."""
    X = _data()
    n = X.shape[0]
    rng = np.random.default_rng(3)
    c_means = jnp.asarray(rng.normal(size=(K, 2)))
    c_cov = jnp.asarray(rng.normal(size=np.shape(O.random_mixture(covariance_type, K, 2, seed=0)[2])))
    # unequal weights; a reg_covar large enough to matter
    theta0 = np.concatenate([X.ravel(), rng.uniform(0.5, 1.5, size=n), [0.05]])

    def objective(theta, mode):
        data, weights, reg_covar = theta[: 2 * n].reshape(n, 2), theta[2 * n : -1], theta[-1]
        result = _fit(data, mode, covariance_type=covariance_type, sample_weight=weights, reg_covar=reg_covar)
        p = result.params
        assert p.means.dtype == jnp.float64
        return jnp.sum(c_means * p.means) + jnp.sum(c_cov * p.covariances) + result.lower_bound

    grad = jax.jit(jax.grad(objective), static_argnums=1)
    _assert_gradient(
        grad, lambda t: objective(t, "implicit"), theta0, f"d/d(X, sample_weight, reg_covar) {covariance_type}", modes
    )


# Both modes on full covariances; the other types in the default (implicit) mode, whose
# backward pass is code of this package (unrolled mode is JAX's own autodiff of the same EM
# step): diag (the E-step with the most forms) always, tied and spherical with -m slow.
check("grad_fit_full")(lambda: _fitted_quantities("full", MODES))
check("grad_fit_diag")(lambda: _fitted_quantities("diag", ("implicit",)))
for _ct in ("tied", "spherical"):
    check(f"grad_fit_{_ct}", SLOW_CHECKS)(lambda ct=_ct: _fitted_quantities(ct, ("implicit",)))


@check("grad_fit_heldout_wrt_transform_full")
def _heldout_wrt_transform():
    """d(held-out mean log-likelihood)/d(A, b) of an affine feature map x ↦ A x + b applied to
    training and held-out data."""
    X_train, X_test = _data(40, seed=1), _data(30, seed=5)
    theta0 = np.concatenate([np.array([[1.1, 0.3], [-0.2, 0.9]]).ravel(), [0.5, -1.0]])

    def objective(theta, mode):
        A, b = theta[:4].reshape(2, 2), theta[4:]
        transform = lambda X: jnp.asarray(X) @ A.T + b[None, :]
        params = _fit(transform(X_train), mode).params
        return jnp.mean(gj.log_prob(params, transform(X_test)))

    grad = jax.jit(jax.grad(objective), static_argnums=1)
    # the default mode (unrolled mode's derivative of the data is checked in grad_fit_full)
    _assert_gradient(grad, lambda t: objective(t, "implicit"), theta0, "d/d(A, b)", ("implicit",))


@check("grad_fit_unrolled_stops_like_the_while_loop")
def _unrolled_early_stop():
    """Unrolled mode with a loose tol stops after a few iterations, as the while loop does, and
    its gradient is that of exactly those iterations (a fixed start: the initialisation is a
    constant for both). Implicit mode differentiates the fixed point instead: it must differ."""
    X = _data()
    w0, m0, c0 = O.initial_parameters(X, K, "full", seed=4)
    start = dict(
        weights_init=w0, means_init=m0, precisions_init=O.precisions_from_covariances(c0, "full"), tol=3e-2, max_iter=50
    )
    c = jnp.asarray(np.random.default_rng(6).normal(size=(K, 2)))

    def objective(X, mode):
        return jnp.sum(c * _fit(X, mode, **start).params.means)

    n_iter = int(_fit(X, "implicit", **start).n_iter)
    assert 2 <= n_iter < 10, n_iter  # 3: far from the fixed point
    fd = O.central_difference(lambda v: float(objective(jnp.asarray(v), "implicit")), X, STEP)
    grad = jax.jit(jax.grad(objective), static_argnums=1)
    O.assert_rel_close(grad(jnp.asarray(X), "unrolled"), fd, RTOL, "unrolled, stopped early")
    implicit = np.asarray(grad(jnp.asarray(X), "implicit"))
    assert np.max(np.abs(implicit - fd)) > 100 * RTOL * np.max(np.abs(fd))


if __name__ == "__main__":  # the slow checks, in float64, reported as _x64_parity_script reports
    import sys

    jax.config.update("jax_enable_x64", True)
    import _x64_parity_script

    _x64_parity_script.CHECKS.clear()
    _x64_parity_script.CHECKS.update(SLOW_CHECKS)
    sys.exit(_x64_parity_script.main(sys.argv[1:]))
