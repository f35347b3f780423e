"""Information criteria, counting parameters as scikit-learn does."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gmmjax._chunks import resolve_chunk_size, sum_over_chunks
from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._covariance import covariance_kind
from gmmjax._density import _as_float_data, component_terms, log_joint_from_residuals, residuals_about
from gmmjax._params import GMMParams


def num_parameters(num_components: int, num_features: int, covariance_type: str) -> int:
    """Free parameters of a mixture: covariances + means + ``K − 1`` weights.

    ``num_components`` may also be an integer array (e.g. traced): the count is then an array.
    """
    return (
        covariance_kind(covariance_type).num_parameters(num_components, num_features)
        + num_components * num_features
        + num_components
        - 1
    )


class InformationCriteria(NamedTuple):
    """Criteria of one fitted mixture on data (lower is better for all three).

    Attributes:
      bic: ``()`` ``−2 log L + p log n``.
      aic: ``()`` ``−2 log L + 2p``.
      icl: ``()`` ``BIC − 2 Σ_n s_n log τ_{n, MAP(n)}`` (mclust's integrated completed
        likelihood, in the lower-is-better convention).
      log_likelihood: ``()`` ``log L = Σ_n s_n log p(x_n)``.
      num_samples: ``()`` ``n = Σ_n s_n`` (``N`` without sample weights).
    """

    bic: jax.Array
    aic: jax.Array
    icl: jax.Array
    log_likelihood: jax.Array
    num_samples: jax.Array


def information_criteria(
    params: GMMParams,
    X: jax.typing.ArrayLike,
    sample_weight=None,
    *,
    num_active=None,
    chunk_size: int | None = None,
    rows: RowAxis = LOCAL,
) -> InformationCriteria:
    """BIC, AIC and ICL of ``params`` on ``X`` in one chunked pass over the data.

    Args:
      params: mixture parameters (unbatched; ``vmap`` for batches).
      X: ``(N, D)`` data.
      sample_weight: optional ``(N,)`` weights, counted as repetitions: ``log L`` is the
        weighted sum and ``n = Σ_n s_n``.
      num_active: optional int (may be traced): the parameters count ``num_active``
        components (the others have weight 0, see :func:`gmmjax.m_step`).
      chunk_size: rows per chunk (``None``: automatic).
      rows: where the rows live (sharded: the sums are one all-reduce, see :mod:`gmmjax._collectives`).
    """
    X = _as_float_data(params, X)
    if sample_weight is not None:
        sample_weight = jnp.asarray(sample_weight, X.dtype)
    terms = component_terms(params)
    chunk = resolve_chunk_size(chunk_size, X.shape[0], params.num_components, params.num_features, X.dtype)

    def chunk_sums(X_chunk, w_chunk, _):
        log_joint = log_joint_from_residuals(terms, residuals_about(X_chunk, terms.means))  # (K, c)
        log_norm = logsumexp(log_joint, axis=0)
        log_map = jnp.max(log_joint, axis=0) - log_norm  # log of the largest responsibility
        # Rows of weight zero (re-read rows of the last chunk) contribute nothing, not NaN.
        weighted = lambda values: jnp.sum(jnp.where(w_chunk > 0, w_chunk * values, 0.0))
        return weighted(log_norm), weighted(log_map)

    log_likelihood, log_map = sum_over_chunks(chunk_sums, X, sample_weight, chunk)
    num_samples = jnp.asarray(X.shape[0], X.dtype) if sample_weight is None else jnp.sum(sample_weight)
    log_likelihood, log_map, num_samples = rows.sum((log_likelihood, log_map, num_samples))
    num_components = params.num_components if num_active is None else num_active
    p = jnp.asarray(num_parameters(num_components, params.num_features, params.covariance_type), X.dtype)
    bic = -2.0 * log_likelihood + p * jnp.log(num_samples)
    return InformationCriteria(
        bic=bic,
        aic=-2.0 * log_likelihood + 2.0 * p,
        icl=bic - 2.0 * log_map,
        log_likelihood=log_likelihood,
        num_samples=num_samples,
    )


def bic(params: GMMParams, X: jax.typing.ArrayLike, sample_weight=None) -> jax.Array:
    """Bayesian information criterion ``−2 log L + p log n`` (lower is better).

    ``sample_weight`` (optional ``(N,)``) counts as repetitions: ``n = Σ_n s_n``.
    """
    return information_criteria(params, X, sample_weight).bic


def aic(params: GMMParams, X: jax.typing.ArrayLike, sample_weight=None) -> jax.Array:
    """Akaike information criterion ``−2 log L + 2p`` (lower is better)."""
    return information_criteria(params, X, sample_weight).aic


def icl(params: GMMParams, X: jax.typing.ArrayLike, sample_weight=None) -> jax.Array:
    """Integrated completed likelihood (mclust's ICL) in the lower-is-better convention.

    ``ICL = BIC − 2 Σ_n log τ_{n, MAP(n)}``, with ``τ_{nk}`` the responsibilities and
    ``MAP(n)`` the most probable component of ``x_n``: BIC plus a penalty for overlapping
    components (the entropy of the hard classification), so ``ICL ≥ BIC``.

    Example:
      >>> import jax, jax.numpy as jnp, gmmjax as gj
      >>> p = gj.GMMParams(jnp.array([0.5, 0.5]), jnp.array([[0.0], [1.0]]), jnp.ones((2, 1, 1)))
      >>> bic_and_icl = jax.jit(lambda p, X: (gj.bic(p, X), gj.icl(p, X)))
      >>> bic, icl = bic_and_icl(p, jnp.array([[-20.0], [20.0]]))  # each point surely in one component
      >>> bool(jnp.isclose(icl, bic))
      True
      >>> bic, icl = bic_and_icl(p, jnp.array([[0.5], [0.5]]))     # halfway: a coin toss each
      >>> round(float(icl - bic), 4), round(4 * float(jnp.log(2.0)), 4)
      (2.7726, 2.7726)
    """
    return information_criteria(params, X, sample_weight).icl
