"""Drawing samples from a mixture with ``jax.random``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._params import GMMParams, check_covariance_type

DEFAULT_KEY_SEED = 0


def sample(key: jax.Array, params: GMMParams, num_samples: int):
    """Draws ``num_samples`` points from the mixture.

    Components are drawn by weight; each point is ``μ_k + L_k z`` with ``z ~ N(0, I)``.
    The per-component transform is applied to all points as one batched product and the
    right one selected by a one-hot mask, so no ``D×D`` matrix is gathered per sample.

    Args:
      key: ``jax.random`` key.
      params: mixture parameters.
      num_samples: ``n`` (static).

    Returns:
      ``(X, labels)``: ``(n, D)`` samples in the parameters' dtype and ``(n,)`` int32
      component labels.
    """
    label_key, noise_key = jax.random.split(key)
    dtype = params.means.dtype
    num_components, num_features = params.means.shape
    labels = jax.random.categorical(label_key, jnp.log(params.weights), shape=(num_samples,))
    noise = jax.random.normal(noise_key, (num_samples, num_features), dtype)
    factor = covariance_kind(params.covariance_type).cholesky_factor(params.covariances)
    onehot = jax.nn.one_hot(labels, num_components, dtype=dtype)  # (n, K)
    offsets = covariance_kind(params.covariance_type).sample_offsets(factor, onehot, noise)
    return onehot @ params.means + offsets, labels.astype(jnp.int32)


def generate_gmm_data(
    num_samples, weights, means, covariances, *, key=None, return_labels=False, covariance_type="full"
):
    """Draws synthetic data from a Gaussian mixture (the original example's generator).

    Args:
      num_samples: number of points ``n``.
      weights: ``(K,)`` non-negative mixing weights summing to one.
      means: ``(K, D)`` component means.
      covariances: covariances in scikit-learn's shape for ``covariance_type``
        (``(K, D, D)`` for the default ``"full"``); symmetric positive definite.
      key: ``jax.random`` key. Without one the fixed default ``jax.random.key(0)`` is used,
        so repeated calls return the same data.
      return_labels: also return the ``(n,)`` component of each point.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.

    Returns:
      ``(n, D)`` samples (float32, or float64 with ``jax_enable_x64`` and float64 input),
      and the labels when ``return_labels`` is true.

    Raises:
      ValueError: naming the argument that is invalid.
    """
    covariance_type = check_covariance_type(covariance_type)
    num_samples = v.check_int("num_samples", num_samples, 1)
    means_arr = np.asarray(means)
    if means_arr.ndim != 2 or 0 in means_arr.shape:
        raise ValueError(f"means must have shape (num_components, num_features), got {means_arr.shape}.")
    num_components, num_features = means_arr.shape
    v.check_weights("weights", weights, num_components)
    v.check_means("means", means, num_components, num_features)
    v.check_covariance_like("covariances", covariances, num_components, num_features, covariance_type)
    dtype = v.working_dtype(np.result_type(np.asarray(weights).dtype, means_arr.dtype, np.asarray(covariances).dtype))
    params = GMMParams(
        jnp.asarray(weights, dtype), jnp.asarray(means, dtype), jnp.asarray(covariances, dtype), covariance_type
    )
    if key is None:
        key = jax.random.key(DEFAULT_KEY_SEED)
    X, labels = _sample_jit(key, params, num_samples)
    return (X, labels) if return_labels else X


_sample_jit = jax.jit(sample, static_argnums=2)
