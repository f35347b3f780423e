"""Derivatives of the mixture log-density beyond the gradients of ``test_transformations.py``
(which checks ``grad`` of ``sum(log_prob)`` in means, covariances and X against finite
differences and the closed-form score, and the Hessian of one full Gaussian): the
per-sample score and Hessian in ``x`` under ``vmap`` (over samples and over batches of
parameters) and ``jit``, and the Hessian in the means, for every covariance type.

Oracles: closed forms in float64 NumPy. With responsibilities ``r_k(x)``, precisions ``P_k``
and ``g_k = P_k (x − μ_k)``:

* score ``∇ₓ log p = −Σ_k r_k g_k``;
* Hessian in ``x``: ``Σ_k r_k (g_k g_kᵀ − P_k) − s sᵀ`` with ``s = Σ_k r_k g_k``;
* Hessian of ``Σ_n log p(x_n)`` in the means:
  ``∂²/∂μ_k∂μ_j = Σ_n r_k (δ_kj − r_j) g_k g_jᵀ − δ_kj r_k P_k``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj

K, D = 3, 2


def _oracle_terms(weights, means, covariances, covariance_type, X):
    """Responsibilities ``(N, K)``, precisions ``(K, D, D)`` and ``g`` ``(N, K, D)`` in float64."""
    r = O.responsibilities(weights, means, covariances, covariance_type, X)
    precisions = np.linalg.inv(O.full_covariances(covariances, covariance_type, K, D))
    g = np.einsum("kde,nke->nkd", precisions, X[:, None, :] - np.asarray(means)[None])
    return r, precisions, g


def oracle_score_and_hessian(weights, means, covariances, covariance_type, X):
    r, precisions, g = _oracle_terms(weights, means, covariances, covariance_type, X)
    s = np.einsum("nk,nkd->nd", r, g)
    hessian = (
        np.einsum("nk,nkd,nke->nde", r, g, g) - np.einsum("nk,kde->nde", r, precisions) - s[:, :, None] * s[:, None, :]
    )
    return -s, hessian


def oracle_means_hessian(weights, means, covariances, covariance_type, X):
    r, precisions, g = _oracle_terms(weights, means, covariances, covariance_type, X)
    outer = np.einsum("nk,nj,nkd,nje->kdje", r, r, g, g)
    diagonal = np.einsum("nk,nkd,nke->kde", r, g, g) - np.einsum("nk,kde->kde", r, precisions)
    hessian = -outer
    for k in range(K):
        hessian[k, :, k, :] += diagonal[k]
    return hessian


@jax.jit
def _derivatives(params, X):
    """Per-sample scores ``(B, N, D)`` and Hessians in x ``(B, N, D, D)`` for a batch of ``B``
    parameter sets (vmap over parameters and over samples), and the Hessians of
    ``Σ_n log p(x_n)`` in the means ``(B, K, D, K, D)``."""

    def log_density(p, x):
        return gj.log_prob(p, x[None, :])[0]

    per_sample = jax.vmap(jax.vmap(jax.grad(log_density, argnums=1), in_axes=(None, 0)), in_axes=(0, None))
    per_sample_hessian = jax.vmap(jax.vmap(jax.hessian(log_density, argnums=1), in_axes=(None, 0)), in_axes=(0, None))
    means_hessian = jax.vmap(lambda p: jax.hessian(lambda m: jnp.sum(gj.log_prob(p.replace(means=m), X)))(p.means))
    return per_sample(params, X), per_sample_hessian(params, X), means_hessian(params)


@pytest.mark.parametrize("covariance_type", O.COVARIANCE_TYPES)
def test_score_and_hessians_match_closed_forms_under_jit_and_vmap(covariance_type):
    sets = [O.random_mixture(covariance_type, K, D, seed) for seed in (11, 12)]
    params = gj.GMMParams(
        *(jnp.asarray(np.stack(leaves), jnp.float32) for leaves in zip(*sets)), covariance_type=covariance_type
    )
    # points near the components and between them (responsibilities far from 0 and 1)
    X = np.random.default_rng(13).normal(scale=2.0, size=(6, D))
    scores, hessians, means_hessians = _derivatives(params, jnp.asarray(X, jnp.float32))
    assert scores.shape == (2, 6, D) and hessians.shape == (2, 6, D, D) and means_hessians.shape == (2, K, D, K, D)
    for b, (w, m, c) in enumerate(sets):
        score, hessian = oracle_score_and_hessian(w, m, c, covariance_type, X)
        O.assert_rel_close(scores[b], score, 1e-4, f"score, set {b}")
        O.assert_rel_close(hessians[b], hessian, 1e-3, f"Hessian in x, set {b}")
        np.testing.assert_allclose(np.asarray(hessians[b]), np.swapaxes(np.asarray(hessians[b]), -1, -2), atol=1e-5)
        O.assert_rel_close(
            means_hessians[b], oracle_means_hessian(w, m, c, covariance_type, X), 1e-3, f"Hessian in the means, set {b}"
        )
