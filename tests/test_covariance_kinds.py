"""One class per covariance type (:mod:`gmmjax._covariance`): each kind's pieces against
independent oracles (float64 NumPy in ``_oracles``, scikit-learn's parameter count), and a
new type made of one subclass works through the library without touching another module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _covariance as C
from gmmjax import _params

K, D = 3, 4


def _mixture(covariance_type, seed=0, d=D):
    w, m, c = O.random_mixture(covariance_type, K, d, seed)
    return (
        w,
        m,
        c,
        gj.GMMParams(
            jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), covariance_type
        ),
    )


def test_registry_names_every_type_once():
    assert tuple(C.COVARIANCE_KINDS) == O.COVARIANCE_TYPES == _params.COVARIANCE_TYPES
    for name, kind in C.COVARIANCE_KINDS.items():
        assert C.covariance_kind(name) is kind and kind.name == name
    with pytest.raises(ValueError, match="covariance_type"):
        C.covariance_kind("banded")


@pytest.mark.parametrize("covariance_type", O.COVARIANCE_TYPES)
def test_kind_shapes_counts_and_views_match_oracles(covariance_type):
    from sklearn.mixture import GaussianMixture

    kind = C.covariance_kind(covariance_type)
    w, m, c, params = _mixture(covariance_type)
    assert kind.shape(K, D) == np.shape(c)
    gm = GaussianMixture(K, covariance_type=covariance_type)
    gm.means_ = m
    assert kind.num_parameters(K, D) + K * D + K - 1 == gm._n_parameters()
    dense = kind.dense(np.asarray(c), K, D, xp=np)
    np.testing.assert_array_equal(dense, O.full_covariances(c, covariance_type, K, D))
    np.testing.assert_allclose(
        np.asarray(kind.dense(params.covariances, K, D)), O.full_covariances(c, covariance_type, K, D), rtol=1e-6
    )
    # the first two components: the dense view of the slice is the slice of the dense view
    first = kind.first_components(np.asarray(c), 2)
    np.testing.assert_array_equal(kind.dense(first, 2, D, xp=np), dense[:2])
    batched = np.stack([c, 2 * c])  # leading batch axes are kept
    np.testing.assert_array_equal(kind.first_components(batched, 2)[1], 2 * first)
    np.testing.assert_allclose(
        np.asarray(kind.precision_cholesky(params.covariances)),
        O.precision_cholesky(c, covariance_type),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        kind.sklearn_precision_cholesky(np.asarray(c)), O.precision_cholesky(c, covariance_type), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("covariance_type", O.COVARIANCE_TYPES)
def test_unconstrained_pieces_round_trip(covariance_type):
    kind = C.covariance_kind(covariance_type)
    _, _, c, params = _mixture(covariance_type, seed=1)
    prec_chol = kind.precision_cholesky(params.covariances)
    raw = kind.raw_from_precision_cholesky(prec_chol)
    log_diagonal = kind.raw_log_diagonal(raw)
    np.testing.assert_allclose(
        np.asarray(kind.assemble_precision_cholesky(raw, jnp.exp(log_diagonal))), np.asarray(prec_chol), rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(kind.covariances_from_raw(raw, log_diagonal)), c, rtol=1e-4, atol=1e-5)
    packed = kind.pack_raw(raw)
    np.testing.assert_array_equal(np.asarray(kind.unpack_raw(packed, D)), np.asarray(raw))
    expected = {"full": (K, D * (D + 1) // 2), "tied": (D * (D + 1) // 2,), "diag": (K, D), "spherical": (K,)}
    assert packed.shape == expected[covariance_type]
    # per-covariance flags: one per component, or one for the shared covariance
    flags = jnp.zeros(log_diagonal.shape, bool).at[(0,) * log_diagonal.ndim].set(True)
    reduced = np.asarray(kind.per_covariance(flags))
    assert reduced.shape == (() if kind.shared else (K,)) and reduced.ravel()[0] and reduced.sum() == 1
    # log det P from the log-diagonal equals log det of the precision
    log_det = np.asarray(kind.log_det_from_log_diagonal(log_diagonal, D))
    dense = O.full_covariances(c, covariance_type, K, D)
    want = -0.5 * np.linalg.slogdet(dense)[1]
    np.testing.assert_allclose(log_det, want[0] if kind.shared else want, rtol=1e-5, atol=1e-5)


def test_a_new_type_is_one_subclass(monkeypatch):
    """A type added as one class (here a renamed copy of diag) runs through densities, EM,
    sampling, the unconstrained form and the sklearn conversion as diag does."""

    class DiagCopy(C.Diag):
        name = "diag_copy"

    monkeypatch.setitem(C.COVARIANCE_KINDS, "diag_copy", DiagCopy())
    monkeypatch.setattr(_params, "COVARIANCE_TYPES", tuple(C.COVARIANCE_KINDS))
    X = jnp.asarray(O.make_blobs(n=60, d=2, k=3, seed=3)[0], jnp.float32)
    w, m, c = O.initial_parameters(np.asarray(X, np.float64), 3, "diag", seed=1)
    diag = gj.GMMParams(jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), "diag")
    copy = diag.replace(covariance_type="diag_copy")
    np.testing.assert_array_equal(np.asarray(gj.log_prob(copy, X)), np.asarray(gj.log_prob(diag, X)))
    step_copy, step_diag = gj.em_step(copy, X), gj.em_step(diag, X)
    # (the types' names differ: the leaves are compared)
    O.assert_trees_close(jax.tree_util.tree_leaves(step_copy), jax.tree_util.tree_leaves(step_diag))
    np.testing.assert_array_equal(
        np.asarray(gj.sample(jax.random.key(0), copy, 5)[0]), np.asarray(gj.sample(jax.random.key(0), diag, 5)[0])
    )
    u = gj.to_unconstrained(copy)
    np.testing.assert_array_equal(
        np.asarray(gj.unconstrained_log_prob(u, X)), np.asarray(gj.unconstrained_log_prob(gj.to_unconstrained(diag), X))
    )
    np.testing.assert_array_equal(
        np.asarray(gj.from_unconstrained(u).covariances),
        np.asarray(gj.from_unconstrained(gj.to_unconstrained(diag)).covariances),
    )
    fit_copy = gj.fit_em(jax.random.key(1), X, 3, covariance_type="diag_copy", max_iter=5)
    fit_diag = gj.fit_em(jax.random.key(1), X, 3, covariance_type="diag", max_iter=5)
    np.testing.assert_allclose(
        np.asarray(fit_copy.params.covariances), np.asarray(fit_diag.params.covariances), rtol=1e-6
    )


def test_the_command_lines_names_agree_with_the_registry():
    from gmmjax import _names

    assert _names.COVARIANCE_TYPES == gj.COVARIANCE_TYPES == tuple(C.COVARIANCE_KINDS)
    assert _names.INIT_METHODS == gj.INIT_METHODS
