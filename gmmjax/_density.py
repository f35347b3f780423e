"""Log-densities and responsibilities of a mixture (differentiable in params and data)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gmmjax._chunks import map_over_chunks, resolve_chunk_size
from gmmjax._covariance import covariance_kind, precision_cholesky
from gmmjax._params import GMMParams


@dataclasses.dataclass(frozen=True)
class ComponentTerms:
    """What a pass over the data needs from the parameters, computed once per pass.

    A pytree like :class:`GMMParams`: the arrays are leaves, ``covariance_type`` is static
    metadata, so the terms pass through ``jit``, ``vmap`` and ``lax`` loops as they are.

    Attributes:
      means: ``(K, D)``.
      prec_chol: precision Cholesky factors (see :func:`precision_cholesky`).
      log_scale: ``(K,)`` ``log w_k + log det P_k − D/2 · log 2π``.
      covariance_type: the covariance type.
    """

    means: jax.Array
    prec_chol: jax.Array
    log_scale: jax.Array
    covariance_type: str


jax.tree_util.register_dataclass(
    ComponentTerms,
    data_fields=["means", "prec_chol", "log_scale"],
    meta_fields=["covariance_type"],
)


def component_terms(params: GMMParams) -> ComponentTerms:
    """Factorises the covariances once, so that chunks of data only do matrix products."""
    num_features = params.num_features
    prec_chol = precision_cholesky(params.covariances, params.covariance_type)
    log_det = covariance_kind(params.covariance_type).log_det_precision_cholesky(prec_chol, num_features)
    log_scale = jnp.log(params.weights) + log_det - 0.5 * num_features * math.log(2.0 * math.pi)
    return ComponentTerms(params.means, prec_chol, log_scale, params.covariance_type)


def residuals_about(X: jax.Array, centers: jax.Array) -> jax.Array:
    """``x_n - c_k`` for data ``(N, D)`` and centers ``(K, D)``; returns ``(K, N, D)``."""
    return X[None, :, :] - centers[:, None, :]


def log_joint_from_residuals(terms: ComponentTerms, residuals: jax.Array) -> jax.Array:
    """``log w_k + log N(x_n | k)`` as ``(K, N)`` from residuals ``(K, N, D)`` about ``terms.means``."""
    squared_norms = covariance_kind(terms.covariance_type).whitened_squared_norms(residuals, terms.prec_chol)
    # Beyond the dtype's range (|x - μ| ≳ 1e19 σ in float32) a squared distance is inf, and
    # posteriors become inf - inf = NaN; capped, such a point is merely extremely unlikely
    # under every component, with finite log-densities, posteriors and gradients.
    squared_norms = jnp.minimum(squared_norms, jnp.finfo(squared_norms.dtype).max / 4)
    return terms.log_scale[:, None] - 0.5 * squared_norms


def _as_float_data(params: GMMParams, X) -> jax.Array:
    return jnp.asarray(X, dtype=jnp.result_type(params.means.dtype, jnp.float32))


def _map_rows(params: GMMParams, X, chunk_size, row_fn):
    """``row_fn(log_joint (c, K))`` over ``X`` in chunks; the covariances are factorised once."""
    X = _as_float_data(params, X)
    terms = component_terms(params)
    chunk = resolve_chunk_size(chunk_size, X.shape[0], params.num_components, params.num_features, X.dtype)
    return map_over_chunks(
        lambda X_chunk: row_fn(log_joint_from_residuals(terms, residuals_about(X_chunk, terms.means)).T), X, chunk
    )


def component_log_prob(params: GMMParams, X: jax.typing.ArrayLike, *, chunk_size: int | None = None) -> jax.Array:
    """Joint log-densities ``log w_k + log N(x_n | μ_k, Σ_k)``.

    Args:
      params: mixture parameters (unbatched; ``vmap`` for batches).
      X: ``(N, D)`` data.
      chunk_size: rows evaluated at a time (bounds the memory to ``O(chunk · K · D)``);
        ``None`` picks one from :data:`gmmjax._chunks.CHUNK_TARGET_BYTES`.

    Returns:
      ``(N, K)`` array in the parameters' dtype.
    """
    return _map_rows(params, X, chunk_size, lambda log_joint: log_joint)


def log_prob(params: GMMParams, X: jax.typing.ArrayLike, *, chunk_size: int | None = None) -> jax.Array:
    """Log-density of each sample under the mixture: ``log Σ_k w_k N(x_n | μ_k, Σ_k)``.

    Differentiable in ``params`` and ``X`` (works under ``jax.grad``, ``jax.hessian``,
    ``jit`` and ``vmap``).

    Args:
      params: mixture parameters.
      X: ``(N, D)`` data.
      chunk_size: as in :func:`component_log_prob`.

    Returns:
      ``(N,)`` log-densities.

    Example:
      >>> import jax.numpy as jnp, gmmjax as gj
      >>> p = gj.GMMParams(jnp.array([1.0]), jnp.zeros((1, 1)), jnp.ones((1, 1, 1)))
      >>> float(gj.log_prob(p, jnp.zeros((1, 1)))[0])  # doctest: +ELLIPSIS
      -0.918938...
    """
    return _map_rows(params, X, chunk_size, lambda log_joint: logsumexp(log_joint, axis=-1))


def responsibilities(params: GMMParams, X: jax.typing.ArrayLike, *, chunk_size: int | None = None) -> jax.Array:
    """Posterior component probabilities ``p(k | x_n)``: ``(N, K)``, rows summing to one."""
    return _map_rows(params, X, chunk_size, lambda log_joint: jax.nn.softmax(log_joint, axis=-1))
