"""gmmjax._compile: cheaper XLA settings for small fits, only where JAX and XLA allow them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _compile


def test_unknown_options_are_dropped_with_a_warning_and_known_ones_kept():
    options = (("xla_backend_optimization_level", 2), ("xla_no_such_option_in_any_version", True))
    with pytest.warns(RuntimeWarning, match="xla_no_such_option_in_any_version"):
        assert _compile._supported_options(options) == {"xla_backend_optimization_level": 2}


def test_this_xla_accepts_every_small_program_option():
    """Fails loudly when a jaxlib upgrade drops one of the options (gmmjax would then warn
    once and compile small fits more slowly): update SMALL_PROGRAM_OPTIONS then."""
    for name, value in _compile.SMALL_PROGRAM_OPTIONS.items():
        assert _compile.accepts_option(name, value), name


def test_staging_is_detected_without_private_jax():
    assert not _compile.under_caller_jit()
    seen = []
    jax.jit(lambda x: seen.append(_compile.under_caller_jit()) or x)(1.0)
    jax.vmap(lambda x: seen.append(_compile.under_caller_jit()) or x)(jnp.ones(2))
    assert seen == [True, False]


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
    # Under grad JAX stages the nested jit and refuses the options: the default variant runs.
    gradient = jax.grad(lambda x: gj.fit_em(key, x, 3).lower_bound)(X)
    assert gradient.shape == X.shape and bool(jnp.all(jnp.isfinite(gradient)))
    O.assert_trees_close(small.params, default.params, rtol=1e-4, atol=1e-5)
