"""An unconstrained parametrisation of a mixture, shared by everything gradient-based.

A mixture is described by three unconstrained arrays: weight logits, means, and the
precision Cholesky factor ``P`` (scikit-learn's ``precisions_cholesky_``: upper triangular,
``precision = P Pᵀ``; ``1/σ`` for diag/spherical) with its diagonal stored as a logarithm.
Any real values give a valid mixture, so optimizers can take plain gradient steps.

Why the *precision* factor with a *log* diagonal:

- the density needs only ``P``: whitened residuals ``(x − μ_k) P_k`` and
  ``log det P_k = Σ_d log P_kdd``, which is the sum of the stored log-diagonal itself. So a
  log-likelihood evaluation from these parameters does no Cholesky factorisation, no
  triangular solve and no logarithm of a small number: it is polynomial in the stored
  numbers plus one ``exp`` per diagonal entry, and its gradients are finite wherever it is;
- a step on the log-diagonal is a *relative* change of a scale, the same for a feature
  measured in millimetres as in kilometres, which suits Adam-like optimizers.

Stored diagonal entries are clipped to ``±B`` with ``B = −log(tiny)/4`` of the dtype (21.8
in float32, 177 in float64): ``P``'s diagonal stays within ``[tiny^¼, tiny^-¼]``, so
conditional variances stay within ``[√tiny, 1/√tiny]`` (``√tiny`` is also the floor
``regularize_covariances`` keeps EM's variances above). So every unconstrained point is a
valid mixture: diag and spherical variances are finite and positive; full and tied
covariances are ``P⁻ᵀ P⁻¹``, positive definite by construction (``P⁻ᵀ`` is their Cholesky
factor, with a positive diagonal), in floating point as long as their condition number is
representable in the dtype. The density never forms them: it uses ``P``.
:func:`to_unconstrained` and :func:`from_unconstrained` are inverse to rounding error for
every mixture whose conditional variances lie within those bounds.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gmmjax._chunks import map_over_chunks, resolve_chunk_size
from gmmjax._covariance import covariance_kind
from gmmjax._density import ComponentTerms, log_joint_from_residuals, residuals_about
from gmmjax._params import GMMParams, MixtureParamsBase


@dataclasses.dataclass(frozen=True)
class UnconstrainedParams(MixtureParamsBase):
    """A mixture as unconstrained arrays (any finite values are a valid mixture).

    A pytree like :class:`GMMParams`: the arrays are leaves, ``covariance_type`` is static.

    Attributes:
      logits: ``(K,)`` weight logits; weights are ``softmax(logits)``.
      means: ``(K, D)`` component means.
      raw_precision_cholesky: the precision Cholesky factor ``P`` in scikit-learn's
        ``precisions_cholesky_`` shape (``(K, D, D)`` full, ``(D, D)`` tied, ``(K, D)``
        diag, ``(K,)`` spherical) with every *diagonal* entry replaced by its logarithm
        (all entries for diag and spherical). For full and tied, the strictly upper
        triangle holds ``P``'s own entries and the strictly lower triangle is ignored
        (zero from :func:`to_unconstrained`; its gradients are zero).
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
    """

    logits: jax.Array
    means: jax.Array
    raw_precision_cholesky: jax.Array
    covariance_type: str = "full"


jax.tree_util.register_dataclass(
    UnconstrainedParams,
    data_fields=["logits", "means", "raw_precision_cholesky"],
    meta_fields=["covariance_type"],
)


def log_diagonal_bound(dtype) -> float:
    """``B = −log(tiny)/4``: stored log-diagonal entries are clipped to ``[−B, B]``."""
    return -math.log(float(jnp.finfo(dtype).tiny)) / 4.0


def raw_log_diagonal(u: UnconstrainedParams) -> jax.Array:
    """The stored log-diagonal of ``P`` (unclipped): ``(K, D)`` full/diag, ``(D,)`` tied, ``(K,)`` spherical."""
    return covariance_kind(u.covariance_type).raw_log_diagonal(u.raw_precision_cholesky)


def with_raw_log_diagonal(u: UnconstrainedParams, log_diagonal: jax.Array) -> UnconstrainedParams:
    """``u`` with the stored log-diagonal of ``P`` replaced (shape as :func:`raw_log_diagonal`)."""
    kind = covariance_kind(u.covariance_type)
    return u.replace(raw_precision_cholesky=kind.with_raw_log_diagonal(u.raw_precision_cholesky, log_diagonal))


def _clipped_log_diagonal(u: UnconstrainedParams) -> jax.Array:
    bound = log_diagonal_bound(u.raw_precision_cholesky.dtype)
    return jnp.clip(raw_log_diagonal(u), -bound, bound)


def precision_cholesky_from_unconstrained(u: UnconstrainedParams) -> jax.Array:
    """The precision Cholesky factor ``P`` (scikit-learn's ``precisions_cholesky_``) of ``u``."""
    kind = covariance_kind(u.covariance_type)
    return kind.assemble_precision_cholesky(u.raw_precision_cholesky, jnp.exp(_clipped_log_diagonal(u)))


def to_unconstrained(params: GMMParams) -> UnconstrainedParams:
    """Unconstrained form of a mixture (the inverse of :func:`from_unconstrained`).

    Factorises each covariance once (one Cholesky and one triangular solve per matrix).
    A zero weight becomes the finite logit ``finfo.min / 8``: ``softmax`` turns it back into
    exactly 0, so :func:`unconstrained_log_prob` equals :func:`gmmjax.log_prob` also far
    from the other components (``log(tiny)``, −87 in float32, would let the "empty"
    component dominate 13σ away from the rest). Works under ``jit``, ``vmap`` and ``grad``.

    Args:
      params: :class:`GMMParams` (unbatched; ``vmap`` for batches).

    Returns:
      :class:`UnconstrainedParams` in the parameters' dtype.

    Example:
      >>> import jax.numpy as jnp, gmmjax as gj
      >>> p = gj.GMMParams(jnp.array([0.25, 0.75]), jnp.zeros((2, 1)), jnp.array([[4.0], [1.0]]), "diag")
      >>> u = gj.to_unconstrained(p)
      >>> [round(float(x), 4) for x in u.raw_precision_cholesky[:, 0]]   # log(1/σ)
      [-0.6931, 0.0]
      >>> [round(float(w), 4) for w in gj.from_unconstrained(u).weights]
      [0.25, 0.75]
    """
    weights = params.weights
    finfo = jnp.finfo(weights.dtype)
    logits = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, finfo.tiny)), finfo.min / 8)
    kind = covariance_kind(params.covariance_type)
    raw = kind.raw_from_precision_cholesky(kind.precision_cholesky(params.covariances))
    return UnconstrainedParams(logits, params.means, raw, params.covariance_type)


def from_unconstrained(u: UnconstrainedParams) -> GMMParams:
    """The mixture described by unconstrained parameters (the inverse of :func:`to_unconstrained`).

    Weights are ``softmax(logits)``; covariances are ``Σ = P⁻ᵀ P⁻¹`` (one triangular solve
    per matrix; ``exp(−2·log P)`` for diag/spherical). ``P⁻ᵀ`` is then a Cholesky factor of
    ``Σ`` with a positive diagonal, so ``Σ`` is positive definite by construction. Works
    under ``jit``, ``vmap`` and ``grad``.

    Args:
      u: :class:`UnconstrainedParams` (unbatched; ``vmap`` for batches).

    Returns:
      :class:`GMMParams` in ``u``'s dtype.
    """
    weights = jax.nn.softmax(u.logits, axis=-1)
    covariances = covariance_kind(u.covariance_type).covariances_from_raw(
        u.raw_precision_cholesky, _clipped_log_diagonal(u)
    )
    return GMMParams(weights, u.means, covariances, u.covariance_type)


def component_terms_from_unconstrained(u: UnconstrainedParams) -> ComponentTerms:
    """The density's :class:`~gmmjax._density.ComponentTerms` straight from ``u``.

    No factorisation and no solve: ``P`` is assembled from the stored numbers and
    ``log det P`` is the sum of the (clipped) stored log-diagonal. Equal to
    ``component_terms(from_unconstrained(u))`` up to rounding.
    """
    num_features = u.num_features
    log_det = covariance_kind(u.covariance_type).log_det_from_log_diagonal(_clipped_log_diagonal(u), num_features)
    log_scale = jax.nn.log_softmax(u.logits, axis=-1) + log_det - 0.5 * num_features * math.log(2.0 * math.pi)
    return ComponentTerms(u.means, precision_cholesky_from_unconstrained(u), log_scale, u.covariance_type)


def unconstrained_log_prob(
    u: UnconstrainedParams, X: jax.typing.ArrayLike, *, chunk_size: int | None = None
) -> jax.Array:
    """Log-density of each sample, ``log Σ_k w_k N(x_n | μ_k, Σ_k)``, from unconstrained parameters.

    Equal to ``log_prob(from_unconstrained(u), X)`` up to rounding, but without a
    Cholesky factorisation or a triangular solve, so it is the cheap and stable choice
    inside a gradient loop. Differentiable in ``u`` and ``X``; works under ``jit`` and ``vmap``.

    Args:
      u: :class:`UnconstrainedParams`.
      X: ``(N, D)`` data.
      chunk_size: rows evaluated at a time (as in :func:`gmmjax.log_prob`).

    Returns:
      ``(N,)`` log-densities in ``u``'s dtype.
    """
    X = jnp.asarray(X, dtype=jnp.result_type(u.means.dtype, jnp.float32))
    terms = component_terms_from_unconstrained(u)
    chunk = resolve_chunk_size(chunk_size, X.shape[0], u.num_components, u.num_features, X.dtype)
    return map_over_chunks(
        lambda X_chunk: logsumexp(log_joint_from_residuals(terms, residuals_about(X_chunk, terms.means)), axis=0),
        X,
        chunk,
    )
