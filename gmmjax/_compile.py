"""How gmmjax's own fit programs are compiled: cheaper XLA settings for small problems.

On the CPU, compiling a fit takes longer than running it whenever the data is small (the
original example, a vmapped batch of many small datasets, model selection on a small
table): most of XLA's compile time goes to LLVM code generation for the elementwise
kernels. For such programs gmmjax asks XLA for a cheaper pipeline — LLVM at ``-O2`` and
XLA's classic elementwise emitter — which compiles ≈35% faster at the same speed on small
data (``benchmarks/NOTES.md``). Larger problems keep XLA's defaults: there the classic
emitter was up to 15% slower per iteration, which the run time no longer hides.

These settings only apply to gmmjax's own ``jit`` (a call of :func:`gmmjax.fit_em`, also
under ``jax.vmap``); inside the caller's ``jax.jit`` the caller's settings rule. A setting
that the installed XLA does not know is dropped with one warning per process (the fit is
then the same, its compilation slower); the test suite fails if the installed XLA rejects
any of them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

# XLA debug options for programs whose data is small (see the module docstring).
SMALL_PROGRAM_OPTIONS = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": False}

# "Small": at most this many entries in the (restarts, K, N, D) work of one pass over the data.
SMALL_PROGRAM_WORK = 2**23


def is_small_program(num_samples: int, num_features: int, num_components: int, fits: int = 1) -> bool:
    """Whether a fit of this size is compile-bound on the CPU (see :data:`SMALL_PROGRAM_WORK`)."""
    return fits * num_components * num_samples * num_features <= SMALL_PROGRAM_WORK


def accepts_option(name: str, value) -> bool:
    """Whether this XLA compiles a trivial program with the compiler option ``name=value``."""
    probe = jax.jit(lambda x: x + 1, compiler_options={name: value})
    try:
        probe.lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 - XLA reports an unknown option as its own error type
        return False
    return True


@functools.cache
def _supported_options(options: tuple) -> dict:
    """The subset of ``options`` (``(name, value)`` pairs) that this XLA accepts; one warning
    names any it rejects."""
    accepted = {name: value for name, value in options if accepts_option(name, value)}
    rejected = [name for name, _ in options if name not in accepted]
    if rejected:
        warnings.warn(
            f"gmmjax: this XLA does not accept the compiler option(s) {rejected}; small fits compile "
            "with XLA's defaults instead (same results, slower compilation).",
            RuntimeWarning,
            stacklevel=3,
        )
    return accepted


def small_program_options() -> dict | None:
    """:data:`SMALL_PROGRAM_OPTIONS` that apply here: the CPU backend and a known option name."""
    if jax.default_backend() != "cpu":
        return None
    return _supported_options(tuple(sorted(SMALL_PROGRAM_OPTIONS.items()))) or None


def under_caller_jit() -> bool:
    """Whether the caller's ``jax.jit`` (or another staging transformation: ``scan``,
    ``checkpoint``…) is tracing: JAX refuses compiler options on a nested jit. Under staging,
    every new array is a tracer; under ``vmap``/``grad`` alone a fresh constant stays concrete."""
    return isinstance(jnp.zeros(()), jax.core.Tracer)


def _has_tracers(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


class SizedJit(Protocol):
    """What :func:`jit_for_size` returns: ``call(small, *args, **kwargs)`` and its ``variant``."""

    def __call__(self, small: bool, *args: Any, **kwargs: Any) -> Any: ...

    def variant(self, small: bool) -> Callable[..., Any]: ...


def jit_for_size(fun, **jit_kwargs):
    """``jax.jit(fun, **jit_kwargs)`` that compiles with :func:`small_program_options` for small
    problems.

    Returns ``call(small, *args, **kwargs)``, which runs the variant for ``small`` (each
    variant built once, so compiled programs are reused); ``call.variant(small)`` is that
    jitted function. Inside the caller's ``jax.jit`` the default variant runs.

    Under ``vmap`` the cheaper settings apply, but under ``grad`` JAX stages the nested jit
    and refuses them, and no public JAX function tells the two apart: with traced arguments
    the cheap variant is tried first and, if JAX refuses it (a ``ValueError`` when the call
    is staged), the default variant runs; an error of the fit itself recurs there and
    propagates unchanged, whatever its message. A direct call with concrete arguments pays
    for no check (small fits are call-overhead bound): only if it fails is the caller's jit
    looked for, and an error of a direct call propagates at once.
    """

    @functools.cache
    def variant(small: bool):
        return jax.jit(fun, compiler_options=small_program_options() if small else None, **jit_kwargs)

    def call(small: bool, *args, **kwargs):
        if not small or small_program_options() is None:
            return variant(False)(*args, **kwargs)
        traced = _has_tracers((args, kwargs))
        if traced and under_caller_jit():
            return variant(False)(*args, **kwargs)
        try:
            return variant(True)(*args, **kwargs)
        except ValueError:
            # Staged after all: by grad (traced arguments), or by the caller's jit around a
            # call with concrete arguments only (checked now, not on every direct call).
            if traced or under_caller_jit():
                return variant(False)(*args, **kwargs)
            raise

    call.variant = variant
    return call
