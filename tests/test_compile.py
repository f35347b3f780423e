"""gmmjax._compile: cheaper XLA settings for small fits, only where JAX and XLA allow them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gmmjax as gj
from gmmjax import _compile


def test_unknown_options_are_dropped_and_known_ones_kept():
    options = (("xla_backend_optimization_level", 2), ("xla_no_such_option_in_any_version", True))
    assert _compile._supported_options(options) == {"xla_backend_optimization_level": 2}


def test_small_and_large_problems():
    assert _compile.is_small_program(600, 2, 2)  # the original example
    assert not _compile.is_small_program(1_000_000, 32, 32)
    assert not _compile.is_small_program(50_000, 8, 8, fits=16)  # restarts count


def test_small_fit_uses_the_options_and_agrees_with_the_default_settings(small_data):
    """A direct call, a vmapped call and a call inside the caller's jit (where JAX refuses
    options on a nested jit) all run; the two settings give the same fit up to rounding."""
    X = jnp.asarray(small_data)
    calls = []
    call = _compile.jit_for_size(lambda x: calls.append(1) or jnp.sum(x * x))
    assert _compile.small_program_options()  # this CPU and this XLA know the settings
    np.testing.assert_allclose(float(call(True, X)), float(np.sum(small_data.astype(np.float64) ** 2)), rtol=1e-5)
    assert call.variant(True)._cache_size() == 1 and call.variant(False)._cache_size() == 0
    assert float(jax.jit(lambda x: call(True, x))(X)) == float(call(False, X))  # nested: default variant

    key = jax.random.key(0)
    small = gj.fit_em(key, X, 3)
    default = jax.jit(lambda k, x: gj.fit_em(k, x, 3))(key, X)
    assert int(small.n_iter) == int(default.n_iter)
    for a, b in zip(jax.tree_util.tree_leaves(small.params), jax.tree_util.tree_leaves(default.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
