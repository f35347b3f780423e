"""The parameter pytree of a Gaussian mixture."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gmmjax._covariance import COVARIANCE_KINDS

# The covariance types' names, in the order of gmmjax._covariance.COVARIANCE_KINDS (one
# class per type there): ("full", "tied", "diag", "spherical"). gmmjax._names repeats them
# for the JAX-free command line (tests/test_covariance_kinds.py checks that they agree).
COVARIANCE_TYPES = tuple(COVARIANCE_KINDS)


def check_covariance_type(covariance_type: Any) -> str:
    """Returns ``covariance_type`` if it is one of :data:`COVARIANCE_TYPES`, else raises."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}.")
    return covariance_type


class MixtureParamsBase:
    """What every parameter pytree of a mixture shares (:class:`GMMParams`,
    :class:`~gmmjax.UnconstrainedParams`): a ``means`` leaf of shape ``(..., K, D)`` and a
    static ``covariance_type``."""

    # Declared for the type checker only: each subclass (a dataclass) defines them as fields.
    means: jax.Array
    covariance_type: str

    def __post_init__(self):
        check_covariance_type(self.covariance_type)

    @property
    def num_components(self) -> int:
        return self.means.shape[-2]

    @property
    def num_features(self) -> int:
        return self.means.shape[-1]

    def replace(self, **changes):
        """Returns a copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class GMMParams(MixtureParamsBase):
    """Parameters of a Gaussian mixture with ``K`` components in ``D`` dimensions.

    A pytree: ``weights``, ``means`` and ``covariances`` are leaves, ``covariance_type`` is
    static metadata, so ``jit`` and ``vmap`` treat it as structure. Batched parameters
    (e.g. one set per restart) simply carry extra leading axes on every leaf.

    Attributes:
      weights: ``(K,)`` mixing weights, non-negative, summing to one.
      means: ``(K, D)`` component means.
      covariances: scikit-learn's shapes: ``(K, D, D)`` for ``"full"``, ``(D, D)`` for
        ``"tied"``, ``(K, D)`` for ``"diag"``, ``(K,)`` for ``"spherical"``.
      covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    covariance_type: str = "full"

    @property
    def dtype(self):
        return jnp.result_type(self.means)


jax.tree_util.register_dataclass(
    GMMParams,
    data_fields=["weights", "means", "covariances"],
    meta_fields=["covariance_type"],
)
