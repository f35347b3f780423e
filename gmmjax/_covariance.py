"""Covariance maths, one small set of functions per covariance type.

Shapes follow scikit-learn: ``full`` ``(K, D, D)``, ``tied`` ``(D, D)``, ``diag`` ``(K, D)``,
``spherical`` ``(K,)``. A *precision Cholesky* factor ``P`` satisfies ``precision = P Pᵀ``
(upper triangular for the matrix types, ``1/sqrt(variance)`` for the others), so the
whitened residual of ``x`` under component ``k`` is ``(x - μ_k) P_k``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

# A covariance that still cannot be factorised after ``reg_covar`` is added gets this many
# machine epsilons of each feature's variance added to its diagonal (see regularize_covariances).
_JITTER_EPS = 1e3

# Up to this many features, whitening and the scatter are written feature by feature as
# fused elementwise products and reductions over the samples: XLA runs batched products of
# such tiny matrices as loops of tiny GEMMs, 1.5–3× slower (benchmarks/NOTES.md).
SMALL_FEATURES = 4


def _feature_columns(residuals: jax.Array) -> list:
    return [residuals[..., d] for d in range(residuals.shape[-1])]


def _eye_like(matrices: jax.Array) -> jax.Array:
    """Identity matrices of the same shape (and batch shape) as ``matrices``."""
    return jnp.broadcast_to(jnp.eye(matrices.shape[-1], dtype=matrices.dtype), matrices.shape)


def cholesky_factor(covariances: jax.Array, covariance_type: str) -> jax.Array:
    """Lower Cholesky factor ``L`` of each covariance (``cov = L Lᵀ``); square root for diag types."""
    if covariance_type in ("full", "tied"):
        return jnp.linalg.cholesky(covariances)
    return jnp.sqrt(covariances)


def precision_cholesky(covariances: jax.Array, covariance_type: str) -> jax.Array:
    """Precision Cholesky factor of ``covariances``, same shape (scikit-learn's ``precisions_cholesky_``)."""
    if covariance_type in ("full", "tied"):
        lower = jnp.linalg.cholesky(covariances)
        return jnp.swapaxes(solve_triangular(lower, _eye_like(covariances), lower=True), -1, -2)
    return jax.lax.rsqrt(covariances)


def covariances_from_precisions(precisions: jax.Array, covariance_type: str) -> jax.Array:
    """Inverts precision matrices (or precisions) given in scikit-learn's ``precisions_init`` shapes."""
    if covariance_type in ("full", "tied"):
        lower = jnp.linalg.cholesky(precisions)
        inv_lower = solve_triangular(lower, _eye_like(precisions), lower=True)
        cov = jnp.swapaxes(inv_lower, -1, -2) @ inv_lower
        return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    return 1.0 / precisions


def precisions_from_precision_cholesky(prec_chol: jax.Array, covariance_type: str) -> jax.Array:
    """``P Pᵀ`` (or ``P²``): scikit-learn's ``precisions_`` from ``precisions_cholesky_``."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ jnp.swapaxes(prec_chol, -1, -2)
    return prec_chol**2


def log_det_precision_cholesky(prec_chol: jax.Array, covariance_type: str, num_features: int) -> jax.Array:
    """``log det P`` per component: ``(K,)``, or ``()`` for tied."""
    if covariance_type in ("full", "tied"):
        return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    if covariance_type == "diag":
        return jnp.sum(jnp.log(prec_chol), axis=-1)
    return num_features * jnp.log(prec_chol)


def whitened_squared_norms(residuals: jax.Array, prec_chol: jax.Array, covariance_type: str) -> jax.Array:
    """``‖(x_n - μ_k) P_k‖²`` for residuals ``(K, N, D)``; returns ``(K, N)``.

    The residual is formed before whitening (rather than ``x P - μ P``) so that data far
    from the origin, or components far apart, lose no digits in float32.
    """
    num_features = residuals.shape[-1]
    if covariance_type in ("full", "tied") and num_features <= SMALL_FEATURES:
        columns = _feature_columns(residuals)  # D × (K, N)
        factor = prec_chol if covariance_type == "full" else jnp.broadcast_to(prec_chol, (1,) + prec_chol.shape)
        total = 0.0
        for e in range(num_features):  # P is upper triangular: column e mixes features d <= e
            whitened_e = sum(columns[d] * factor[:, d, e][:, None] for d in range(e + 1))
            total = total + whitened_e * whitened_e
        return total
    if covariance_type == "full":
        whitened = jnp.matmul(residuals, prec_chol)  # (K,N,D) @ (K,D,D): one batched GEMM
    elif covariance_type == "tied":
        whitened = jnp.matmul(residuals, prec_chol)
    elif covariance_type == "diag":
        whitened = residuals * prec_chol[:, None, :]
    else:
        return jnp.sum(residuals * residuals, axis=-1) * (prec_chol**2)[:, None]
    return jnp.sum(whitened * whitened, axis=-1)


def scatter(residuals: jax.Array, weighted_resp: jax.Array, covariance_type: str) -> jax.Array:
    """Weighted second moments of residuals ``(K, N, D)`` with weights ``(K, N)``.

    Returns ``(K, D, D)`` for full/tied (one batched GEMM) and ``(K, D)`` for diag/spherical.
    """
    num_features = residuals.shape[-1]
    if covariance_type in ("full", "tied") and num_features <= SMALL_FEATURES:
        columns = _feature_columns(residuals)
        weighted = [column * weighted_resp for column in columns]
        entries = {(d, e): jnp.sum(weighted[d] * columns[e], axis=-1)
                   for d in range(num_features) for e in range(d, num_features)}
        return jnp.stack([jnp.stack([entries[min(d, e), max(d, e)] for e in range(num_features)], axis=-1)
                          for d in range(num_features)], axis=-2)
    if covariance_type in ("full", "tied"):
        return jnp.matmul(jnp.swapaxes(residuals * weighted_resp[..., None], -1, -2), residuals)
    return jnp.einsum("kn,knd->kd", weighted_resp, residuals * residuals)


def weighted_sums(residuals: jax.Array, weighted_resp: jax.Array) -> jax.Array:
    """``Σ_n r_kn (x_n − c_k)`` for residuals ``(K, N, D)`` and weights ``(K, N)``: ``(K, D)``."""
    if residuals.shape[-1] <= SMALL_FEATURES:
        return jnp.stack([jnp.sum(column * weighted_resp, axis=-1) for column in _feature_columns(residuals)], axis=-1)
    return jnp.einsum("kn,knd->kd", weighted_resp, residuals)


def covariances_from_moments(
    second_moments: jax.Array, counts: jax.Array, mean_offsets: jax.Array, covariance_type: str
) -> jax.Array:
    """Unregularised covariances from moments about a per-component shift.

    Args:
      second_moments: ``Σ_n r_nk (x_n - c_k)(x_n - c_k)ᵀ``: ``(K, D, D)`` (full/tied) or its
        diagonal ``(K, D)`` (diag/spherical).
      counts: ``(K,)`` effective counts ``N_k`` (already bounded away from zero).
      mean_offsets: ``(K, D)`` ``μ_k - c_k``, small because the shift is the previous mean.
      covariance_type: the covariance type.
    """
    if covariance_type == "full":
        cov = second_moments / counts[:, None, None] - mean_offsets[:, :, None] * mean_offsets[:, None, :]
        return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    if covariance_type == "tied":
        within = second_moments - counts[:, None, None] * mean_offsets[:, :, None] * mean_offsets[:, None, :]
        cov = jnp.sum(within, axis=0) / jnp.sum(counts)
        return 0.5 * (cov + cov.T)
    variances = second_moments / counts[:, None] - mean_offsets**2
    if covariance_type == "diag":
        return variances
    return jnp.mean(variances, axis=-1)


def _variances(covariances: jax.Array, covariance_type: str) -> jax.Array:
    """Per-feature variances: ``(K, D)`` (full, diag), ``(D,)`` (tied), ``(K,)`` (spherical)."""
    if covariance_type in ("full", "tied"):
        return jnp.diagonal(covariances, axis1=-2, axis2=-1)
    return covariances


def regularize_covariances(covariances: jax.Array, reg_covar: jax.Array, covariance_type: str,
                           means: jax.Array):
    """Adds ``reg_covar`` to the diagonal and guarantees a factorisable covariance.

    Two things can still break the Cholesky factor in the working precision: a feature
    that is a linear combination of the others within round-off (collinear data, a
    component collapsed onto a point or a line with ``reg_covar=0``), and a variance so
    small that its precision overflows. Such a covariance gets ``1e3·eps`` of each feature's
    own variance added to its diagonal (scale-invariant), and no variance may fall below
    ``10·eps²`` times the spread of the fit in that feature (the largest variance plus the
    squared range of the means) nor below ``sqrt(tiny)``, which keeps every whitened
    residual finite. This runs
    inside the jitted loop; healthy covariances are returned unchanged.

    Args:
      covariances: unregularised covariances in scikit-learn's shape for the type.
      reg_covar: scalar added to the diagonal.
      covariance_type: the covariance type.
      means: ``(K, D)`` the component means (they set the spread of the fit).

    Returns:
      ``(covariances, repaired)``: the regularised covariances and a boolean per covariance
      (``(K,)``, or ``()`` for tied) that is true where the repair was needed.
    """
    eps = jnp.finfo(covariances.dtype).eps
    cov = covariances + reg_covar * _eye_like(covariances) if covariance_type in ("full", "tied") \
        else covariances + reg_covar

    variances = _variances(cov, covariance_type)
    finite_variances = jnp.where(jnp.isfinite(variances), variances, 0.0)
    mean_range = jnp.ptp(means, axis=0, keepdims=True)  # (1, D)
    if covariance_type == "spherical":  # one variance per component: one spread for all features
        largest, mean_range = jnp.max(finite_variances), jnp.max(mean_range)
    elif covariance_type == "tied":  # (D,) variances shared by all components
        largest, mean_range = finite_variances, mean_range[0]
    else:  # (K, D): per feature, across components
        largest = jnp.max(finite_variances, axis=0, keepdims=True)
    spread = largest + jnp.where(jnp.isfinite(mean_range), mean_range, 0.0) ** 2
    # sqrt(tiny) keeps the floor a normal number (XLA flushes subnormals to zero) whose
    # reciprocal cannot overflow, for data whose spread is zero or itself tiny.
    floor = jnp.maximum(10 * eps**2 * spread, jnp.sqrt(jnp.finfo(cov.dtype).tiny))

    if covariance_type in ("full", "tied"):
        reference = jnp.maximum(finite_variances, floor)
        lower = jnp.linalg.cholesky(cov)
        pivots = jnp.diagonal(lower, axis1=-2, axis2=-1) ** 2  # variance not explained by earlier features
        ok = jnp.all(jnp.isfinite(lower), axis=(-2, -1)) & jnp.all(pivots > 10 * eps * reference, axis=-1)
        eye = _eye_like(cov)
        repaired = cov + (_JITTER_EPS * eps * reference)[..., None, :] * eye
        # Last resort (non-finite moments): independent features at the reference variances.
        fallback = reference[..., None, :] * eye
        repaired_ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(repaired)), axis=(-2, -1))
        repaired = jnp.where(repaired_ok[..., None, None], repaired, fallback)
        return jnp.where(ok[..., None, None], cov, repaired), ~ok
    ok = jnp.isfinite(cov) & (cov > floor)
    repaired = jnp.where(ok, cov, floor)
    ok_per_component = ok if covariance_type == "spherical" else jnp.all(ok, axis=-1)
    return repaired, ~ok_per_component


def num_covariance_parameters(num_components: int, num_features: int, covariance_type: str) -> int:
    """Free parameters in the covariances, as scikit-learn counts them."""
    k, d = num_components, num_features
    return {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]


def covariance_shape(num_components: int, num_features: int, covariance_type: str) -> tuple:
    """scikit-learn's covariance shape for the type."""
    k, d = num_components, num_features
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
