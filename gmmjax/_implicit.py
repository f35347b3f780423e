"""Gradients of a converged EM fit by implicit differentiation at its fixed point.

A converged fit ``p*`` is a fixed point of one EM step, ``p* = T(p*, θ)`` with
``T(p, θ) = m_step(e_step(p, X, s), p.means, reg_covar)`` and ``θ = (X, s, reg_covar)``
(``s``: sample weights). By the implicit function theorem
``dp*/dθ = (I − ∂T/∂p)⁻¹ ∂T/∂θ``, so a cotangent ``p̄`` of the fitted parameters pulls back as

    λ = p̄ + ∂T/∂pᵀ λ          (the adjoint equation)
    θ̄ = ∂T/∂θᵀ λ

At a stable fixed point the eigenvalues of ``∂T/∂p`` are EM's rates of convergence, in
``[0, 1)``, so the adjoint equation is solved by iterating it (:func:`solve_adjoint`): it
converges at EM's own rate, a few iterations for well-separated components, more when they
overlap. (A Krylov solver such as ``jax.scipy.sparse.linalg.gmres`` needs fewer iterations
for slow EM but traces the chunked pass over the data three times, tripling compilation.)
The iteration sums the Neumann series ``λ = Σ_t (∂T/∂pᵀ)ᵗ p̄``; cut after ``T`` terms it is
exactly the derivative of ``T`` EM steps started at ``p*`` (from a constant start). So where
the fixed point is degenerate (a rate of one: e.g. two components sharing one cluster) and
the implicit derivative does not exist, the capped iteration still returns a finite,
meaningful gradient: that of ``max(max_iter, ADJOINT_MIN_ITER)`` EM steps from ``p*``.

The fit's ``lower_bound`` ``L(p*, θ)`` (mean log-likelihood) is differentiated as
``L(p*(θ), θ)``: its cotangent ``l̄`` adds ``l̄ ∂L/∂pᵀ`` to the adjoint equation and
``l̄ ∂L/∂θᵀ`` to ``θ̄``. With ``reg_covar = 0`` the first term does not change ``θ̄``
(``∂L/∂p`` vanishes along the directions ``p*`` can move in: the envelope theorem); with
``reg_covar > 0`` EM's fixed point is not exactly a stationary point of ``L`` and the term
keeps the gradient exact.

Every product with ``∂T/∂pᵀ`` or ``∂T/∂θᵀ`` is one pass over the data that applies the
E-step's vector-Jacobian product chunk by chunk (the M-step acts on summed statistics
only), so the backward pass needs ``O(chunk_size · K · D)`` memory beyond the data and a
few parameter-sized vectors, however many EM iterations the forward fit ran. The forward
pass is the identity: a fit nobody differentiates pays nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gmmjax._chunks import map_over_chunks, sum_over_chunks
from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._params import GMMParams
from gmmjax._prior import log_prior
from gmmjax._stats import e_step, m_step, sum_stats, total_weight

# The adjoint iteration stops once an iteration changes the adjoint by less than eps^(3/4)
# of its norm (6e-6 in float32, 2e-12 in float64), or after max(max_iter, this many)
# iterations (see attach_fixed_point).
ADJOINT_MIN_ITER = 100


def _tree_sub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def _tree_zeros_like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def e_step_vjp_params(params: GMMParams, X, sample_weight, cotangent, chunk_size: int) -> GMMParams:
    """``∂e_step/∂paramsᵀ · cotangent``, summed over chunks of ``chunk_size`` rows.

    Args:
      params: the parameters the E-step is evaluated at.
      X: ``(N, D)`` data.
      sample_weight: ``(N,)`` or ``None``.
      cotangent: ``(stats_bar, log_likelihood_bar)`` matching :func:`e_step`'s output.
      chunk_size: rows per chunk (each chunk's VJP recomputes its forward pass, so the
        memory is that of one chunk).
    """

    def chunk_vjp(X_chunk, w_chunk, _):
        _, pullback = jax.vjp(lambda p: e_step(p, X_chunk, w_chunk, chunk_size=chunk_size), params)
        return pullback(cotangent)[0]

    return sum_over_chunks(chunk_vjp, X, sample_weight, chunk_size)


def e_step_vjp_data(params: GMMParams, X, sample_weight, cotangent, chunk_size: int):
    """``∂e_step/∂Xᵀ · cotangent`` ``(N, D)`` and ``∂e_step/∂sᵀ · cotangent`` ``(N,)``.

    Row ``n`` of both depends on row ``n`` only (the statistics are sums over rows), so they
    are computed chunk by chunk with each row's own weight.
    """
    weights = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight

    def rows_vjp(rows):
        X_rows, w_rows = rows
        _, pullback = jax.vjp(lambda x, w: e_step(params, x, w, chunk_size=chunk_size), X_rows, w_rows)
        return pullback(cotangent)

    return map_over_chunks(rows_vjp, (X, weights), chunk_size)


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def solve_adjoint(affine_map, zero, max_iter: int):
    """The fixed point ``λ = affine_map(λ)`` by iteration from ``zero``.

    Stops when an iteration changes ``λ`` by less than ``eps^(3/4)`` of its norm, or after
    ``max_iter`` iterations.
    """
    rtol = float(jnp.finfo(jax.tree_util.tree_leaves(zero)[0].dtype).eps) ** 0.75

    def keep_going(state):
        _, moving, count = state
        return moving & (count < max_iter)

    def iterate(state):
        adjoint, _, count = state
        new = affine_map(adjoint)
        return new, _tree_norm(_tree_sub(new, adjoint)) > rtol * _tree_norm(new), count + 1

    return jax.lax.while_loop(keep_going, iterate, (zero, jnp.array(True), jnp.array(0)))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def attach_fixed_point(
    params: GMMParams,
    lower_bound,
    X,
    sample_weight,
    reg_covar,
    chunk_size: int,
    max_iter: int,
    rows: RowAxis = LOCAL,
    prior=None,
):
    """Returns ``(params, lower_bound)`` unchanged; reverse-mode derivatives treat them as
    the EM fixed point ``p*(X, sample_weight, reg_covar)`` and ``L(p*, X, sample_weight)``.

    Args:
      params: converged parameters of one fit (computed from constants: their own
        derivatives are not used).
      lower_bound: ``()`` its mean log-likelihood.
      X: ``(N, D)`` the data the fit ran on.
      sample_weight: ``(N,)`` or ``None``.
      reg_covar: ``()`` array.
      chunk_size: rows per chunk in the backward passes (static).
      max_iter: the fit's iteration limit (static); the adjoint iteration runs at most
        ``max(max_iter, ADJOINT_MIN_ITER)`` times.
      rows: where the rows live (static; inside ``jax.shard_map`` the rows a device holds:
        every sum over rows of the backward passes is then one all-reduce, and each device
        returns the cotangents of its own rows).
      prior: a :class:`~gmmjax.ConjugatePrior` (MAP EM: ``T`` is the MAP step and ``L`` adds
        the log-prior; derivatives also flow to the prior's leaves) or ``None``. One device only.
    """
    return params, lower_bound


def _attach_fwd(params, lower_bound, X, sample_weight, reg_covar, chunk_size, max_iter, rows, prior):
    return (params, lower_bound), (params, X, sample_weight, reg_covar, prior)


def _attach_bwd(chunk_size, max_iter, rows, residuals, cotangents):
    params, X, sample_weight, reg_covar, prior = residuals
    params_bar, bound_bar = cotangents
    dtype = X.dtype
    local_stats, local_log_likelihood = e_step(params, X, sample_weight, chunk_size=chunk_size)
    stats, log_likelihood, total = sum_stats(rows, local_stats, local_log_likelihood, total_weight(X, sample_weight))
    bound_bar_sum = (bound_bar / total).astype(dtype)  # L = Σ s log p / Σ s
    if prior is None:
        _, m_pullback = jax.vjp(m_step, stats, params.means, reg_covar)
    else:  # MAP EM: the MAP step, and L = (Σ s log p + log prior) / Σ s
        map_step = lambda s, m, r, p: m_step(s, m, r, prior=p)  # noqa: E731
        _, m_pullback = jax.vjp(map_step, stats, params.means, reg_covar, prior)
        prior_value, (prior_grad_params, prior_grad_prior) = jax.value_and_grad(log_prior, argnums=(0, 1))(
            params, prior
        )
        log_likelihood = log_likelihood + prior_value
        params_bar = jax.tree_util.tree_map(lambda a, g: a + bound_bar_sum * g, params_bar, prior_grad_params)

    def adjoint_map(adjoint: GMMParams) -> GMMParams:
        """``p̄ + ∂T/∂pᵀ adjoint + l̄ ∂L/∂pᵀ``: the M-step's pullback, then the E-step's
        (both cotangents in one pass over the data, chunk by chunk)."""
        stats_bar, shift_bar, *_ = m_pullback(adjoint)
        through_e_step = rows.sum(e_step_vjp_params(params, X, sample_weight, (stats_bar, bound_bar_sum), chunk_size))
        return jax.tree_util.tree_map(
            jnp.add, params_bar, through_e_step.replace(means=through_e_step.means + shift_bar)
        )

    adjoint = solve_adjoint(adjoint_map, _tree_zeros_like(params), max(max_iter, ADJOINT_MIN_ITER))
    stats_bar, _, reg_covar_bar, *prior_bar = m_pullback(adjoint)
    X_bar, weight_bar = e_step_vjp_data(params, X, sample_weight, (stats_bar, bound_bar_sum), chunk_size)
    if sample_weight is None:
        weight_bar = None
    else:  # the normalisation Σ s of the mean log-likelihood
        weight_bar = weight_bar - bound_bar_sum * (log_likelihood / total)
    if rows.sharded:
        # jax.shard_map (check_vma=False) hands each of the n devices 1/n of the cotangent of
        # a replicated result and sums the devices' cotangents of replicated inputs: the
        # adjoint above is 1/n of the global one on every device, which the sum over devices
        # restores for reg_covar; each device's own rows take all of theirs.
        X_bar, weight_bar = jax.tree_util.tree_map(lambda bar: bar * rows.num_shards(), (X_bar, weight_bar))
    if prior is None:
        return _tree_zeros_like(params), jnp.zeros_like(bound_bar), X_bar, weight_bar, reg_covar_bar, None
    prior_bar = jax.tree_util.tree_map(lambda a, g: a + bound_bar_sum * g, prior_bar[0], prior_grad_prior)
    return _tree_zeros_like(params), jnp.zeros_like(bound_bar), X_bar, weight_bar, reg_covar_bar, prior_bar


attach_fixed_point.defvjp(_attach_fwd, _attach_bwd)
