"""EM as a monoid of sufficient statistics: E-step → additive statistics → M-step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gmmjax._covariance import covariances_from_moments, regularize_covariances, scatter
from gmmjax._density import residuals_about, weighted_log_density_from_residuals
from gmmjax._params import GMMParams


@dataclasses.dataclass(frozen=True)
class SufficientStats:
    """Weighted moments of the data about a per-component shift ``c`` (``(K, D)``).

    Statistics of different chunks, devices or hosts computed about the *same* shift are
    combined by addition (``a + b``, ``jax.lax.psum``, ``tree_map(sum)``); the M-step is a
    function of the summed statistics and the shift alone. The E-step uses the current
    means as the shift, so second moments never suffer the cancellation of ``E[xxᵀ] − μμᵀ``.

    Attributes:
      counts: ``(K,)`` ``Σ_n s_n r_nk`` (``s``: sample weights, ``r``: responsibilities).
      first_moments: ``(K, D)`` ``Σ_n s_n r_nk (x_n − c_k)``.
      second_moments: ``Σ_n s_n r_nk (x_n − c_k)(x_n − c_k)ᵀ`` as ``(K, D, D)`` for
        full/tied covariances, its diagonal ``(K, D)`` for diag/spherical.
      covariance_type: static; decides the shape of ``second_moments``.
    """

    counts: jax.Array
    first_moments: jax.Array
    second_moments: jax.Array
    covariance_type: str = "full"

    def __add__(self, other: "SufficientStats") -> "SufficientStats":
        return jax.tree_util.tree_map(jnp.add, self, other)


jax.tree_util.register_dataclass(
    SufficientStats,
    data_fields=["counts", "first_moments", "second_moments"],
    meta_fields=["covariance_type"],
)


def _ones_like_samples(X: jax.Array, sample_weight) -> jax.Array:
    if sample_weight is None:
        return jnp.ones(X.shape[0], dtype=X.dtype)
    return jnp.asarray(sample_weight, dtype=X.dtype)


def _moments(residuals: jax.Array, weighted_resp: jax.Array, covariance_type: str) -> SufficientStats:
    """Statistics from residuals ``(K, N, D)`` and weighted responsibilities ``(K, N)``."""
    return SufficientStats(
        counts=jnp.sum(weighted_resp, axis=1),
        first_moments=jnp.einsum("kn,knd->kd", weighted_resp, residuals),
        second_moments=scatter(residuals, weighted_resp, covariance_type),
        covariance_type=covariance_type,
    )


def e_step(params: GMMParams, X: jax.Array, sample_weight: jax.Array | None = None):
    """E-step: statistics about ``params.means`` and the total log-likelihood.

    Args:
      params: current parameters.
      X: ``(N, D)`` data (a chunk is fine: results add up across chunks).
      sample_weight: optional ``(N,)`` non-negative weights (default: ones).

    Returns:
      ``(stats, log_likelihood)``: :class:`SufficientStats` about ``params.means`` and the
      scalar ``Σ_n s_n log p(x_n)``.
    """
    weight = _ones_like_samples(X, sample_weight)
    residuals = residuals_about(X, params.means)
    log_joint = weighted_log_density_from_residuals(params, residuals)  # (K, N)
    log_norm = logsumexp(log_joint, axis=0)
    resp = jnp.exp(log_joint - log_norm[None, :])
    stats = _moments(residuals, resp * weight[None, :], params.covariance_type)
    return stats, jnp.sum(weight * log_norm)


def stats_from_responsibilities(
    X: jax.Array,
    resp: jax.Array,
    shift: jax.Array,
    covariance_type: str,
    sample_weight: jax.Array | None = None,
) -> SufficientStats:
    """Statistics for given responsibilities ``(N, K)`` about ``shift`` ``(K, D)`` (used at initialisation)."""
    weight = _ones_like_samples(X, sample_weight)
    return _moments(residuals_about(X, shift), (resp * weight[:, None]).T, covariance_type)


def m_step_with_diagnostics(stats: SufficientStats, shift: jax.Array, reg_covar):
    """M-step that also reports components that were empty or needed extra regularisation.

    Returns:
      ``(params, collapsed)`` with ``collapsed`` a ``(K,)`` boolean array.
    """
    dtype = stats.first_moments.dtype
    eps = jnp.finfo(dtype).eps
    total = jnp.sum(stats.counts)
    # scikit-learn's guard: every component keeps a tiny positive count, so an empty
    # component gets a near-zero weight and keeps its mean instead of dividing by zero.
    counts = stats.counts + 10 * eps
    offsets = stats.first_moments / counts[:, None]
    raw_cov = covariances_from_moments(stats.second_moments, counts, offsets, stats.covariance_type)
    means = shift + offsets
    covariances, repaired = regularize_covariances(raw_cov, jnp.asarray(reg_covar, dtype), stats.covariance_type,
                                                   means)
    params = GMMParams(
        weights=counts / jnp.sum(counts),
        means=means,
        covariances=covariances,
        covariance_type=stats.covariance_type,
    )
    empty = stats.counts <= eps * total
    collapsed = empty | jnp.broadcast_to(repaired, empty.shape)
    return params, collapsed


def m_step(stats: SufficientStats, shift: jax.Array, reg_covar=1e-6) -> GMMParams:
    """M-step: maximum-likelihood parameters from summed statistics about ``shift``.

    Args:
      stats: :class:`SufficientStats` (summed over all the data).
      shift: ``(K, D)`` the shift the statistics were accumulated about (for statistics
        from :func:`e_step`, the means of the parameters that produced them).
      reg_covar: non-negative value added to the covariance diagonals.

    Returns:
      New :class:`GMMParams`. Covariances are always positive definite (see
      ``regularize_covariances``); weights are normalised.
    """
    return m_step_with_diagnostics(stats, shift, reg_covar)[0]


def em_step(params: GMMParams, X: jax.Array, sample_weight: jax.Array | None = None, reg_covar=1e-6):
    """One EM iteration.

    Returns:
      ``(new_params, mean_log_likelihood)``, where the log-likelihood (per unit weight) is
      that of the *input* parameters, as scikit-learn's ``lower_bound_``.
    """
    new_params, _, mean_ll = _em_step_with_diagnostics(params, X, sample_weight, reg_covar)
    return new_params, mean_ll


def _em_step_with_diagnostics(params, X, sample_weight, reg_covar):
    weight = _ones_like_samples(X, sample_weight)
    stats, log_likelihood = e_step(params, X, weight)
    new_params, collapsed = m_step_with_diagnostics(stats, params.means, reg_covar)
    return new_params, collapsed, log_likelihood / jnp.sum(weight)
