"""float64 checks of gmmjax, run in a subprocess because ``jax_enable_x64`` is global.

Usage (from the repository root, with the repository on ``PYTHONPATH``)::

    python tests/_x64_parity_script.py            # every check
    python tests/_x64_parity_script.py parity_full grad_diag

Prints one line ``X64_RESULTS <json>`` mapping each check to ``"ok"`` or its traceback and
exits non-zero if any check failed. Oracles: scikit-learn, scipy, central finite
differences and the published mclust BIC for iris (see ``_oracles.py``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

import jax

if __name__ == "__main__":
    # Only when run as a script: importing this module (e.g. pytest --doctest-modules
    # collecting tests/) must not switch the importing process to float64.
    jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _oracles as O  # noqa: E402
import gmmjax as gj  # noqa: E402

CHECKS = {}


def check(name):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


def _parity_data():
    X, _, _ = O.make_blobs(n=240, d=3, k=3, seed=1, spread=2.5)
    return X


def _parity(covariance_type):
    for reg_covar in (1e-6, 0.1):  # a large reg_covar makes its handling visible
        _parity_one(covariance_type, reg_covar)


def _parity_one(covariance_type, reg_covar):
    X = _parity_data()
    k = 3
    w0, m0, c0 = O.initial_parameters(X, k, covariance_type, seed=2)
    sk = O.fit_sklearn_from(X, k, covariance_type, w0, m0, c0, max_iter=5, reg_covar=reg_covar)
    res = gj.fit_em(
        jax.random.key(0),
        X,
        k,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=5,
        reg_covar=reg_covar,
        weights_init=w0,
        means_init=m0,
        precisions_init=O.precisions_from_covariances(c0, covariance_type),
    )
    p = res.params
    for leaf in (p.weights, p.means, p.covariances, res.lower_bound):
        assert leaf.dtype == jnp.float64, leaf.dtype
    assert int(res.n_iter) == sk.n_iter_ == 5, (int(res.n_iter), sk.n_iter_)
    assert not bool(res.converged)
    # sanity: the 5 iterations really moved the parameters (else the comparison is vacuous)
    assert np.max(np.abs(sk.means_ - m0)) > 1e-2
    rtol = 1e-6
    O.assert_matches_sklearn_fit(res, sk, rtol)
    hist = np.asarray(res.lower_bound_history[0])
    assert np.all(np.diff(hist) >= -1e-12 * np.abs(hist[1:])), hist
    # precision Cholesky factor of scikit-learn's covariances vs its own precisions_cholesky_
    O.assert_rel_close(
        gj.precision_cholesky(jnp.asarray(sk.covariances_), covariance_type),
        sk.precisions_cholesky_,
        1e-9,
        "precision_cholesky",
    )
    # information criteria of scikit-learn's fitted parameters
    params = gj.GMMParams(
        jnp.asarray(sk.weights_), jnp.asarray(sk.means_), jnp.asarray(sk.covariances_), covariance_type
    )
    O.assert_rel_close(gj.bic(params, X), sk.bic(X), 1e-10, "bic")
    O.assert_rel_close(gj.aic(params, X), sk.aic(X), 1e-10, "aic")


def _log_prob(covariance_type):
    k, d = 3, 4
    w, m, c = O.random_mixture(covariance_type, k, d, seed=3)
    X = np.random.default_rng(4).normal(scale=3.0, size=(50, d))
    params = gj.GMMParams(jnp.asarray(w), jnp.asarray(m), jnp.asarray(c), covariance_type)
    lp = gj.log_prob(params, X)
    assert lp.dtype == jnp.float64
    O.assert_rel_close(lp, O.mixture_log_prob(w, m, c, covariance_type, X), 1e-11, "log_prob")
    O.assert_rel_close(
        gj.responsibilities(params, X),
        O.responsibilities(w, m, c, covariance_type, X),
        1e-9,
        "responsibilities",
        floor=1e-3,
    )


def _grad(covariance_type):
    k, d = 2, 3
    w, m, c = O.random_mixture(covariance_type, k, d, seed=5)
    X = np.random.default_rng(6).normal(scale=2.0, size=(6, d))
    base = gj.GMMParams(jnp.asarray(w), jnp.asarray(m), jnp.asarray(c), covariance_type)

    @jax.jit
    def total(means, covs, data):
        return jnp.sum(gj.log_prob(base.replace(means=means, covariances=covs), data))

    g_m, g_c, g_x = jax.grad(total, argnums=(0, 1, 2))(base.means, base.covariances, jnp.asarray(X))
    h = 1e-5
    fd_m = O.central_difference(lambda v: float(total(jnp.asarray(v), base.covariances, X)), m, h)
    fd_c = O.central_difference(lambda v: float(total(base.means, jnp.asarray(v), X)), c, h)
    fd_x = O.central_difference(lambda v: float(total(base.means, base.covariances, jnp.asarray(v))), X, h)
    O.assert_rel_close(g_m, fd_m, 1e-6, "d/dmeans", floor=1e-2)
    O.assert_rel_close(g_c, fd_c, 1e-6, "d/dcovariances", floor=1e-2)
    O.assert_rel_close(g_x, fd_x, 1e-6, "d/dX", floor=1e-2)
    # closed form for the means: sum_n r_nk Sigma_k^-1 (x_n - mu_k)
    r = O.responsibilities(w, m, c, covariance_type, X)
    covs = O.full_covariances(c, covariance_type, k, d)
    closed = np.stack([np.linalg.solve(covs[j], ((X - m[j]) * r[:, j : j + 1]).sum(0)) for j in range(k)])
    O.assert_rel_close(g_m, closed, 1e-9, "d/dmeans closed form")


for _ct in O.COVARIANCE_TYPES:
    check(f"parity_{_ct}")(lambda ct=_ct: _parity(ct))
    check(f"log_prob_{_ct}")(lambda ct=_ct: _log_prob(ct))
    check(f"grad_{_ct}")(lambda ct=_ct: _grad(ct))


@check("mclust_iris_bic")
def _mclust_iris():
    """mclust (R) on iris, model VVV with G=2: BIC = -574.0178 in mclust's sign (2 logL - p log n)."""
    from sklearn.datasets import load_iris

    X = load_iris().data.astype(np.float64)
    res = gj.fit_em(jax.random.key(0), X, 2, covariance_type="full", n_init=10, tol=1e-10, max_iter=500, reg_covar=0.0)
    p = res.params
    assert p.means.dtype == jnp.float64
    oracle_bic = O.bic(p.weights, p.means, p.covariances, "full", X)
    assert abs(oracle_bic - 574.0178) < 0.01, oracle_bic
    assert abs(float(gj.bic(p, X)) - 574.0178) < 0.01, float(gj.bic(p, X))


@check("dtype_float64")
def _dtype_float64():
    """float64 in -> float64 out (fit_em's dtype is checked in the parity checks)."""
    X = jnp.asarray(_parity_data()[:60])
    w, m, c = O.random_mixture("diag", 2, 3, seed=7)
    p = gj.GMMParams(jnp.asarray(w), jnp.asarray(m), jnp.asarray(c), "diag")
    assert jax.jit(gj.log_prob)(p, X).dtype == jnp.float64
    Y, labels = jax.jit(gj.sample, static_argnums=2)(jax.random.key(2), p, 10)
    assert Y.dtype == jnp.float64
    stats, ll = jax.jit(gj.e_step)(p, X)
    assert stats.second_moments.dtype == jnp.float64 and ll.dtype == jnp.float64
    assert jax.jit(gj.m_step)(stats, p.means).covariances.dtype == jnp.float64
    # float32 input stays float32 even with x64 on
    res32 = gj.fit_em(jax.random.key(1), np.asarray(X, np.float32), 2, covariance_type="diag", max_iter=2)
    assert res32.params.means.dtype == jnp.float32, res32.params.means.dtype
    assert res32.lower_bound.dtype == jnp.float32, res32.lower_bound.dtype


import _x64_grad_checks  # noqa: E402  (gradients through fit_em: tests/test_grad_through_fit.py)

CHECKS.update(_x64_grad_checks.CHECKS)

import _x64_gradient_checks  # noqa: E402  (parametrisation and gradient fit: test_unconstrained/test_gradient)

CHECKS.update(_x64_gradient_checks.CHECKS)


def main(argv):
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"unknown checks: {unknown}; known: {sorted(CHECKS)}", file=sys.stderr)
        return 2
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                CHECKS[name]()
                results[name] = "ok"
            except Exception:  # report every failure, not just the first
                results[name] = traceback.format_exc()
    print("X64_RESULTS " + json.dumps(results))
    failed = [n for n, r in results.items() if r != "ok"]
    for name in failed:
        print(f"--- {name} FAILED\n{results[name]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
