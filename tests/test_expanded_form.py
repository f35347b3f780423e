"""The expanded E-step of full and tied covariances (second-order features about one shift).

Its three forms (expanded for every component; expanded with the worst components computed
exactly from residuals; exact residuals for all) against float64 NumPy statistics
(``_oracles``): which form runs for which parameters, the statistics of each, under ``vmap``
(one form for the whole batch) and under ``grad`` (finite differences of the oracle).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax._density import component_terms
from gmmjax._stats import _e_step_form

K, D, N = 6, 6, 120


def _lane(covariance_type, far_components, correlated, seed):
    """Data and parameters: ``far_components`` tight components 100 units from the others,
    and (``correlated``) component ``K − 1`` with two features correlated at 1 − 1e-5."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(K, D))
    sigma = np.ones(K)
    centers[:far_components] += 1e2 * rng.choice([-1.0, 1.0], size=(far_components, D))
    sigma[:far_components] = 1e-2
    rotations = np.linalg.qr(rng.normal(size=(K, D, D)))[0]
    eigenvalues = sigma[:, None] ** 2 * rng.uniform(0.5, 2.0, size=(K, D))
    if correlated:
        rotations[-1] = np.eye(D)
        rotations[-1, :2, :2] = np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)
        eigenvalues[-1, :2] = [2.0, 2e-5]
    cov = np.einsum("kde,ke,kfe->kdf", rotations, eigenvalues, rotations)
    labels = np.arange(N) % K
    noise = np.einsum("nde,ne->nd", np.linalg.cholesky(cov)[labels], rng.normal(size=(N, D)))
    X = (centers[labels] + noise).astype(np.float32)
    if covariance_type == "tied":
        cov = cov[-1] if correlated else np.mean(cov, axis=0)
    params = gj.GMMParams(
        jnp.full(K, 1.0 / K, jnp.float32),
        jnp.asarray(centers + 0.1 * sigma[:, None], jnp.float32),
        jnp.asarray(cov, jnp.float32),
        covariance_type,
    )
    return X, params


# (far components, correlated) -> the form the E-step must choose, per covariance type.
LANES = {
    "full": [((0, False), 0), ((2, False), 1), ((0, True), 1), ((6, False), 2)],
    "tied": [((0, False), 0), ((2, False), 1), ((0, True), 2), ((6, False), 2)],
}


def _form(params, dtype=jnp.float32) -> int:
    return int(_e_step_form(params, component_terms(params), dtype)[0])


def _check_against_oracle(stats, ll, params, covariance_type, X):
    counts, first, second, ll_o = O.e_step_statistics(params, covariance_type, X, np.ones(N))
    O.assert_rel_close(stats.counts, counts, 1e-4, "counts", floor=1e-3)
    O.assert_rel_close(stats.first_moments, first, 1e-3, "first", floor=1e-2)
    O.assert_rel_close(stats.second_moments, second, 2e-3, "second", floor=1e-2)
    np.testing.assert_allclose(float(ll), ll_o, rtol=1e-5)


@pytest.fixture(scope="module")
def e_step_32():
    return jax.jit(lambda p, x: gj.e_step(p, x, chunk_size=40))


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_each_form_is_chosen_where_it_is_needed_and_matches_the_oracle(covariance_type, e_step_32):
    for i, ((far, correlated), form) in enumerate(LANES[covariance_type]):
        X, params = _lane(covariance_type, far, correlated, seed=i)
        assert _form(params) == form, (far, correlated)
        assert _form(params, jnp.float64) == 0  # float64 has the digits to spare
        stats, ll = e_step_32(params, jnp.asarray(X))
        _check_against_oracle(stats, ll, params, covariance_type, X)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_vmapped_lanes_share_the_most_exact_form(covariance_type, e_step_32):
    lanes = [
        _lane(covariance_type, far, correlated, seed=i)
        for i, ((far, correlated), _) in enumerate(LANES[covariance_type])
    ]
    X = jnp.stack([jnp.asarray(x) for x, _ in lanes])
    params = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[p for _, p in lanes])
    forms = jax.vmap(lambda p: _e_step_form(p, component_terms(p), jnp.float32)[0])(params)
    np.testing.assert_array_equal(forms, max(form for _, form in LANES[covariance_type]))
    stats, ll = jax.jit(jax.vmap(lambda p, x: gj.e_step(p, x, chunk_size=40)))(params, X)
    for i, (x, p) in enumerate(lanes):
        lane = jax.tree_util.tree_map(lambda a: a[i], stats)  # noqa: B023  used at once
        _check_against_oracle(lane, ll[i], p, covariance_type, x)


@pytest.mark.parametrize("far, form", [(0, 0), (2, 1)])
def test_log_likelihood_gradient_of_the_expanded_form(far, form):
    """d(Σ log p)/dμ through the expanded form (form 0; form 1: two of its four exact slots
    needed, the others skipped by a cond) against central differences of the float64 oracle."""
    X, params = _lane("full", far, False, seed=7)
    assert _form(params) == form

    def total(means):
        return gj.e_step(gj.GMMParams(params.weights, means, params.covariances, "full"), jnp.asarray(X))[1]

    grad = np.asarray(jax.jit(jax.grad(total))(params.means), np.float64)
    w, m, c = (np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances))
    step = 1e-5
    numeric = np.zeros_like(m)
    for k in range(K):
        for d in range(D):
            shifted = [m.copy(), m.copy()]
            shifted[0][k, d] += step
            shifted[1][k, d] -= step
            up, down = (O.mixture_log_prob(w, s, c, "full", X.astype(np.float64)).sum() for s in shifted)
            numeric[k, d] = (up - down) / (2 * step)
    O.assert_rel_close(grad, numeric, 1e-3, "gradient", floor=1e-2)
