"""Log-densities and responsibilities of a mixture (differentiable in params and data)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gmmjax._covariance import log_gaussian_density, precision_cholesky
from gmmjax._params import GMMParams


def residuals_about(X: jax.Array, centers: jax.Array) -> jax.Array:
    """``x_n - c_k`` for data ``(N, D)`` and centers ``(K, D)``; returns ``(K, N, D)``."""
    return X[None, :, :] - centers[:, None, :]


def weighted_log_density_from_residuals(params: GMMParams, residuals: jax.Array) -> jax.Array:
    """``log w_k + log N(x_n | k)`` as ``(K, N)`` from residuals about ``params.means``."""
    prec_chol = precision_cholesky(params.covariances, params.covariance_type)
    log_gauss = log_gaussian_density(residuals, prec_chol, params.covariance_type)
    return log_gauss + jnp.log(params.weights)[:, None]


def _as_float_data(params: GMMParams, X) -> jax.Array:
    return jnp.asarray(X, dtype=jnp.result_type(params.means.dtype, jnp.float32))


def component_log_prob(params: GMMParams, X: jax.typing.ArrayLike) -> jax.Array:
    """Joint log-densities ``log w_k + log N(x_n | μ_k, Σ_k)``.

    Args:
      params: mixture parameters (unbatched; ``vmap`` for batches).
      X: ``(N, D)`` data.

    Returns:
      ``(N, K)`` array in the parameters' dtype.
    """
    X = _as_float_data(params, X)
    return weighted_log_density_from_residuals(params, residuals_about(X, params.means)).T


def log_prob(params: GMMParams, X: jax.typing.ArrayLike) -> jax.Array:
    """Log-density of each sample under the mixture: ``log Σ_k w_k N(x_n | μ_k, Σ_k)``.

    Differentiable in ``params`` and ``X`` (works under ``jax.grad``, ``jax.hessian``,
    ``jit`` and ``vmap``).

    Args:
      params: mixture parameters.
      X: ``(N, D)`` data.

    Returns:
      ``(N,)`` log-densities.

    Example:
      >>> import jax.numpy as jnp, gmmjax as gj
      >>> p = gj.GMMParams(jnp.array([1.0]), jnp.zeros((1, 1)), jnp.ones((1, 1, 1)))
      >>> float(gj.log_prob(p, jnp.zeros((1, 1)))[0])  # doctest: +ELLIPSIS
      -0.918938...
    """
    return logsumexp(component_log_prob(params, X), axis=-1)


def responsibilities(params: GMMParams, X: jax.typing.ArrayLike) -> jax.Array:
    """Posterior component probabilities ``p(k | x_n)``: ``(N, K)``, rows summing to one."""
    return jax.nn.softmax(component_log_prob(params, X), axis=-1)
