"""Information criteria, counting parameters as scikit-learn does."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gmmjax._covariance import num_covariance_parameters
from gmmjax._density import log_prob
from gmmjax._params import GMMParams


def num_parameters(num_components: int, num_features: int, covariance_type: str) -> int:
    """Free parameters of a mixture: covariances + means + ``K − 1`` weights."""
    return (
        num_covariance_parameters(num_components, num_features, covariance_type)
        + num_components * num_features
        + num_components
        - 1
    )


def _total_log_likelihood(params: GMMParams, X) -> jax.Array:
    return jnp.sum(log_prob(params, X))


def bic(params: GMMParams, X: jax.typing.ArrayLike) -> jax.Array:
    """Bayesian information criterion ``−2 log L + p log N`` (lower is better)."""
    n = jnp.shape(X)[0]
    p = num_parameters(params.num_components, params.num_features, params.covariance_type)
    return -2.0 * _total_log_likelihood(params, X) + p * jnp.log(n)


def aic(params: GMMParams, X: jax.typing.ArrayLike) -> jax.Array:
    """Akaike information criterion ``−2 log L + 2p`` (lower is better)."""
    p = num_parameters(params.num_components, params.num_features, params.covariance_type)
    return -2.0 * _total_log_likelihood(params, X) + 2.0 * p
