"""Under ``vmap``, the diag/spherical E-step runs one of its three forms for the whole batch.

A ``lax.switch`` on a batched index is lowered to *all* branches plus a select; the E-step
makes its index uniform over the batch (the most exact form any lane needs), so the
batched program keeps a real three-way ``cond``. Oracles: the jaxpr's structure, the same
E-steps run one lane at a time, and float64 NumPy statistics (``_oracles``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax._stats import uniform_branch

K, D, N = 6, 3, 96


def _cond_branch_counts(jaxpr) -> list:
    """Number of branches of every ``cond`` in a (closed) jaxpr, sub-jaxprs included."""
    counts = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "cond":
                counts.append(len(eqn.params["branches"]))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):  # a Jaxpr
                        visit(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):  # a ClosedJaxpr
                        visit(sub.jaxpr)

    visit(jaxpr.jaxpr)
    return counts


def _lane(covariance_type, far_components, seed):
    """Data and parameters whose E-step needs form 0 (no far component), 1 (up to four far,
    tight components) or 2 (more than four)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(K, D))
    sigma = np.ones(K)
    centers[:far_components] += 1e2 * rng.choice([-1.0, 1.0], size=(far_components, D))
    sigma[:far_components] = 1e-2
    labels = np.arange(N) % K
    X = (centers[labels] + sigma[labels, None] * rng.normal(size=(N, D))).astype(np.float32)
    variances = (sigma[:, None] ** 2) * rng.uniform(0.5, 2.0, size=(K, D))
    cov = variances if covariance_type == "diag" else variances.mean(1)
    params = gj.GMMParams(
        jnp.full(K, 1.0 / K, jnp.float32),
        jnp.asarray(centers + 0.1 * sigma[:, None], jnp.float32),
        jnp.asarray(cov, jnp.float32),
        covariance_type,
    )
    return X, params


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def test_uniform_branch_takes_the_batch_maximum_over_nested_vmaps():
    assert int(uniform_branch(jnp.int32(1))) == 1
    np.testing.assert_array_equal(jax.vmap(uniform_branch)(jnp.array([0, 2, 1])), [2, 2, 2])
    nested = jax.vmap(jax.vmap(uniform_branch))(jnp.array([[0, 1, 0], [0, 0, 0]]))
    np.testing.assert_array_equal(nested, np.ones((2, 3)))


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_vmapped_e_step_runs_one_form_and_equals_each_lane(covariance_type):
    lanes = [_lane(covariance_type, far, seed) for far, seed in ((0, 1), (2, 2), (6, 3))]
    X = jnp.stack([jnp.asarray(x) for x, _ in lanes])
    params = _stack([p for _, p in lanes])
    batched_e_step = jax.vmap(lambda p, x: gj.e_step(p, x, chunk_size=32))
    # One three-way cond survives batching (a batched index would become a select of all forms).
    assert 3 in _cond_branch_counts(jax.make_jaxpr(batched_e_step)(params, X))
    stats, ll = jax.jit(batched_e_step)(params, X)
    single = jax.jit(lambda p, x: gj.e_step(p, x, chunk_size=32))
    for i, (x, p) in enumerate(lanes):
        lane_stats, lane_ll = single(p, jnp.asarray(x))  # each lane with its own form
        counts, first, second, ll_o = O.e_step_statistics(p, covariance_type, x, np.ones(N))
        for got, want, oracle, tol, floor in (
            (stats.counts[i], lane_stats.counts, counts, 1e-4, 0.0),
            (stats.first_moments[i], lane_stats.first_moments, first, 1e-3, 1e-4),
            (stats.second_moments[i], lane_stats.second_moments, second, 2e-3, 1e-6),
        ):
            O.assert_rel_close(got, oracle, tol, "batched", floor=floor)
            O.assert_rel_close(got, np.asarray(want, np.float64), tol, "batched vs lane", floor=floor)
        np.testing.assert_allclose(float(ll[i]), ll_o, rtol=1e-5)
        np.testing.assert_allclose(float(ll[i]), float(lane_ll), rtol=3e-5)  # lane: its own form


def _primitives_outside_conds(jaxpr) -> dict:
    """How often each primitive occurs in a (closed) jaxpr outside every ``cond`` branch."""
    counts: dict = {}

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "cond":
                continue
            counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):
                        visit(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        visit(sub.jaxpr)

    visit(jaxpr.jaxpr)
    return counts


def _assert_one_form_per_body(jaxpr, bodies: int):
    """Each compiled loop body holds one three-way cond of the E-step's forms, and no form runs
    outside it (a batched index would inline every form, exponentials included, as a select)."""
    # The three-way switch, and inside its first slot tier the per-slot two-way conds (squared
    # norms, then moments) that skip unneeded slots: their count is unbatched, so they stay conds.
    assert _cond_branch_counts(jaxpr) == [3, 2, 2] * bodies
    assert _primitives_outside_conds(jaxpr).get("exp", 0) == 0


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("lanes", [4, 8])
def test_batched_fits_keep_one_form_in_the_compacting_loop(covariance_type, lanes):
    """``n_init=8`` runs the fit loop's compacting rule (a vmapped body over a group of
    lanes), ``n_init=4`` the small-batch rule (a plain vmapped loop; k-means' Lloyd loop,
    which has no E-step, may add a one-at-a-time tail); ``vmap`` over datasets too: the EM
    body keeps the three-way cond."""
    X, *_ = O.make_blobs(n=64, d=2, k=3, seed=4)
    X = jnp.asarray(X, jnp.float32)
    bodies = 1  # the EM loop's body (k-means' Lloyd body has no E-step cond)
    restarts = jax.make_jaxpr(
        lambda X: gj.fit_em(jax.random.key(0), X, 3, covariance_type=covariance_type, n_init=lanes, max_iter=3).params
    )(X)
    _assert_one_form_per_body(restarts, bodies)
    datasets = jax.make_jaxpr(
        jax.vmap(lambda X: gj.fit_em(jax.random.key(0), X, 3, covariance_type=covariance_type, max_iter=3).params)
    )(jnp.stack([X] * lanes))
    _assert_one_form_per_body(datasets, bodies)
