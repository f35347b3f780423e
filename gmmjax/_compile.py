"""How gmmjax's own fit programs are compiled: cheaper XLA settings for small problems.

On the CPU, compiling a fit takes longer than running it whenever the data is small (the
original example, a vmapped batch of many small datasets, model selection on a small
table): most of XLA's compile time goes to LLVM code generation for the elementwise
kernels. For such programs gmmjax asks XLA for a cheaper pipeline — LLVM at ``-O2`` and
XLA's classic elementwise emitter — which compiles ≈35% faster at the same speed on small
data (``benchmarks/NOTES.md``). Larger problems keep XLA's defaults: there the classic
emitter was up to 15% slower per iteration, which the run time no longer hides.

These settings only apply to gmmjax's own ``jit`` (a call of :func:`gmmjax.fit_em`, also
under ``jax.vmap``); inside the caller's ``jax.jit`` the caller's settings rule. Settings
that the installed XLA does not know are dropped (checked once per process, on first use).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# XLA debug options for programs whose data is small (see the module docstring).
SMALL_PROGRAM_OPTIONS = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": False}

# "Small": at most this many entries in the (restarts, K, N, D) work of one pass over the data.
SMALL_PROGRAM_WORK = 2**23


def is_small_program(num_samples: int, num_features: int, num_components: int, fits: int = 1) -> bool:
    """Whether a fit of this size is compile-bound on the CPU (see :data:`SMALL_PROGRAM_WORK`)."""
    return fits * num_components * num_samples * num_features <= SMALL_PROGRAM_WORK


@functools.cache
def _supported_options(options: tuple) -> dict:
    """The subset of ``options`` (``(name, value)`` pairs) that this XLA accepts."""
    accepted = {}
    for name, value in options:
        probe = jax.jit(lambda x: x + 1, compiler_options={name: value})
        try:
            probe.lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
        except Exception:  # noqa: BLE001 - an unknown option is an XLA error; any failure means "do not use"
            continue
        accepted[name] = value
    return accepted


def small_program_options() -> dict | None:
    """:data:`SMALL_PROGRAM_OPTIONS` that apply here: the CPU backend and a known option name."""
    if jax.default_backend() != "cpu":
        return None
    return _supported_options(tuple(sorted(SMALL_PROGRAM_OPTIONS.items()))) or None


def _under_jit() -> bool:
    """Whether the caller's ``jax.jit`` is tracing (JAX refuses compiler options on a nested
    jit). Uses JAX's own check where it exists; otherwise :func:`jit_for_size` finds out from
    the error."""
    try:
        from jax._src.core import unsafe_am_i_under_a_jit
    except ImportError:
        return False
    return unsafe_am_i_under_a_jit()


def jit_for_size(fun, **jit_kwargs):
    """``jax.jit(fun, **jit_kwargs)`` that compiles with :func:`small_program_options` for small
    problems.

    Returns ``call(small, *args, **kwargs)``, which runs the variant for ``small`` (each
    variant built once, so compiled programs are reused); ``call.variant(small)`` is that
    jitted function. Inside the caller's ``jax.jit`` the default variant runs.
    """

    @functools.cache
    def variant(small: bool):
        return jax.jit(fun, compiler_options=small_program_options() if small else None, **jit_kwargs)

    def call(small: bool, *args, **kwargs):
        if small and not _under_jit() and small_program_options():
            try:
                return variant(True)(*args, **kwargs)
            except ValueError as exc:  # a caller's jit that _under_jit could not see
                if "compiler_options" not in str(exc):
                    raise
        return variant(False)(*args, **kwargs)

    call.variant = variant
    return call
