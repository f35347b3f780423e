"""The fit driver: what every way of fitting a mixture shares.

EM (:mod:`gmmjax._em`), the gradient fit (:mod:`gmmjax._gradient`) and model selection
(:mod:`gmmjax._model_selection`) each provide one thing: a function that fits one restart
from its key and returns a :class:`FitState`. The driver owns the rest:

- the boundary: inputs and :class:`~gmmjax.FitOptions` checked in one place
  (:func:`check_fit_inputs`), chunk and restart-batch sizes resolved;
- initialisation from the options (:func:`initial_params`: the same start for every kind
  of fit with the same key);
- restarts: one key each, vmapped in batches of ``restart_batch_size``
  (:func:`run_restarts`), the best chosen on the device (:func:`choose_best`);
- compilation: gmmjax's own ``jit`` with the settings of :mod:`gmmjax._compile`, and
  progress reporting around the call (:func:`call_compiled`);
- the result type, :class:`FitResult`, with one :class:`FitState` per restart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._chunks import resolve_chunk_size
from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._compile import SizedJit, is_small_program, jit_for_size
from gmmjax._init import initialize
from gmmjax._options import FitOptions, check_fit_options
from gmmjax._params import GMMParams
from gmmjax._progress import reporting


class FitState(NamedTuple):
    """The state of one restart's fit: the loop carry while it runs, its record afterwards.

    Attributes:
      params: current :class:`GMMParams`.
      lower_bound: ``()`` mean log-likelihood of the parameters before the last update
        (scikit-learn's ``lower_bound_``).
      n_iter: ``()`` int32, iterations (or optimizer steps) run.
      converged: ``()`` bool, whether ``tol`` was met.
      lower_bound_history: ``(T,)`` mean log-likelihood at each iteration (``T`` the
        iteration limit); NaN after the last one (and for a skipped gradient step).
      collapsed_components: ``(K,)`` bool: the component was empty or needed extra
        regularisation at some point (it stays finite either way).
    """

    params: GMMParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    lower_bound_history: jax.Array
    collapsed_components: jax.Array


def initial_state(params: GMMParams, collapsed, num_iterations: int, lower_bound_init=None) -> FitState:
    """The state before the first iteration (``lower_bound_init``: ``None`` for −∞)."""
    dtype = params.means.dtype
    lower_bound = -jnp.inf if lower_bound_init is None else lower_bound_init
    return FitState(
        params=params,
        lower_bound=jnp.asarray(lower_bound, dtype),
        n_iter=jnp.array(0, jnp.int32),
        converged=jnp.array(False),
        lower_bound_history=jnp.full((num_iterations,), jnp.nan, dtype),
        collapsed_components=jnp.zeros(params.num_components, bool) if collapsed is None else collapsed,
    )


class FitResult(NamedTuple):
    """Result of a fit with ``R`` restarts (:func:`gmmjax.fit_em`, :func:`gmmjax.fit_gradient`).

    Differentiable (see ``differentiation`` in :func:`gmmjax.fit_em`): ``params`` and
    ``lower_bound`` in both modes, every floating-point field in ``"unrolled"`` mode.

    Attributes:
      params: :class:`GMMParams` of the best restart (highest ``lower_bound``).
      lower_bound: ``()`` mean log-likelihood of the best restart (scikit-learn's
        ``lower_bound_``: that of the parameters before the last M-step).
      n_iter: ``()`` iterations run by the best restart.
      converged: ``()`` whether the best restart met ``tol`` before its iteration limit.
      best_restart: ``()`` index of the best restart.
      restarts: :class:`FitState` of every restart, each leaf with a leading ``(R,)`` axis.

    The per-restart fields are also reachable under their earlier names:
    ``restart_params``, ``restart_lower_bounds``, ``restart_n_iter``, ``restart_converged``,
    ``lower_bound_history`` ``(R, T)`` and ``collapsed_components`` ``(R, K)``.
    """

    params: GMMParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    best_restart: jax.Array
    restarts: FitState

    @property
    def restart_params(self) -> GMMParams:
        return self.restarts.params

    @property
    def restart_lower_bounds(self) -> jax.Array:
        return self.restarts.lower_bound

    @property
    def restart_n_iter(self) -> jax.Array:
        return self.restarts.n_iter

    @property
    def restart_converged(self) -> jax.Array:
        return self.restarts.converged

    @property
    def lower_bound_history(self) -> jax.Array:
        return self.restarts.lower_bound_history

    @property
    def collapsed_components(self) -> jax.Array:
        return self.restarts.collapsed_components


def choose_best(states: FitState) -> FitResult:
    """The restart with the highest lower bound (NaN counts as worst), chosen on the device."""
    score = jnp.where(jnp.isnan(states.lower_bound), -jnp.inf, states.lower_bound)
    best = jnp.argmax(score)
    chosen = jax.tree_util.tree_map(lambda leaf: leaf[best], states)
    return FitResult(
        params=chosen.params,
        lower_bound=chosen.lower_bound,
        n_iter=chosen.n_iter,
        converged=chosen.converged,
        best_restart=best,
        restarts=states,
    )


def restart_keys(key: jax.Array, n_init: int) -> jax.Array:
    """``(n_init,)`` keys of the restarts of a fit with ``key``: restart ``r`` of a batched fit
    equals the single fit with ``restart_keys(key, n_init)[r]``.

    Restart 0 uses ``key`` itself, so ``n_init=R`` always includes the fit with ``n_init=1``
    and the same key, and is never worse than it (scikit-learn's restarts behave so too: its
    first initialisation is that of ``n_init=1``). Restart ``r ≥ 1`` uses
    ``split(key, n_init − 1)[r − 1]``, which does not depend on ``n_init`` (with JAX's
    default ``jax_threefry_partitionable``): more restarts add fits, they never change the
    first ones.

    Example:
      >>> import jax, gmmjax as gj
      >>> keys = gj.restart_keys(jax.random.key(0), 3)
      >>> bool((jax.random.key_data(keys[0]) == jax.random.key_data(jax.random.key(0))).all())
      True
    """
    if n_init == 1:
        return key[None]
    return jnp.concatenate([key[None], jax.random.split(key, n_init - 1)])


def run_restarts(key: jax.Array, options: FitOptions, fit_one: Callable[[jax.Array, jax.Array], FitState]) -> FitResult:
    """Runs ``fit_one(restart_key, restart_index)`` for each of ``options.n_init`` restarts and
    chooses the best.

    Restarts run ``options.restart_batch_size`` at a time (vmapped; batches one after
    another inside the same program); a single restart runs without a batch axis (XLA picks
    worse layouts for an axis of size one).
    """
    n_init, batch = options.n_init, options.restart_batch_size or options.n_init
    keys, indices = restart_keys(key, n_init), jnp.arange(n_init, dtype=jnp.int32)
    if n_init == 1:
        states = jax.tree_util.tree_map(lambda leaf: leaf[None], fit_one(keys[0], indices[0]))
    elif batch >= n_init:
        states = jax.vmap(fit_one)(keys, indices)
    else:
        states = jax.lax.map(lambda restart: fit_one(*restart), (keys, indices), batch_size=batch)
    return choose_best(states)


def initial_params(
    key: jax.Array,
    X: jax.Array,
    sample_weight,
    options: FitOptions,
    num_components: int,
    num_active=None,
    rows: RowAxis = LOCAL,
):
    """Starting parameters of one restart from ``options`` (``init_params`` and ``*_init``):
    ``(params, collapsed)`` (see :func:`gmmjax._init.initialize`). The same for every kind of
    fit with the same key, so EM and gradient fits are comparable start for start (and the
    same with the rows sharded: ``rows``, see :mod:`gmmjax._collectives`)."""
    return initialize(
        key,
        X,
        num_components,
        covariance_type=options.covariance_type,
        init_params=options.init_params,
        sample_weight=sample_weight,
        reg_covar=options.reg_covar,
        weights_init=options.weights_init,
        means_init=options.means_init,
        precisions_init=options.precisions_init,
        chunk_size=options.chunk_size,
        num_active=num_active,
        by_value=options.row_order_invariant,
        rows=rows,
        n_local_trials=options.n_local_trials,
    )


def resolve_restart_batch_size(restart_batch_size, n_init: int) -> int:
    """Restarts run together (vmapped): ``restart_batch_size`` if given, else all of them.

    A batch size that does not divide ``n_init`` is lowered to the largest divisor below it,
    so that every batch has the same shape (one compiled loop body).
    """
    if restart_batch_size is None:
        return n_init
    size = min(v.check_int("restart_batch_size", restart_batch_size, 1), n_init)
    while n_init % size:
        size -= 1
    return size


class FitInputs(NamedTuple):
    """A fit's inputs after :func:`check_fit_inputs`: checked, sizes resolved."""

    key: jax.Array
    X: jax.Array
    sample_weight: jax.Array | None
    options: FitOptions


def check_fit_inputs(
    key,
    X,
    num_components: int | None,
    options: FitOptions,
    sample_weight=None,
    *,
    max_components: int | None = None,
    fits_per_pass: int = 1,
    marginalizes: bool = False,
) -> FitInputs:
    """Checks a fit's inputs at the boundary, with messages that say what to do, and resolves
    the options' sizes for this data.

    Args:
      key: ``jax.random`` key.
      X: ``(N, D)`` data.
      num_components: ``K``; ``None`` for several (model selection: ``max_components``).
      options: :class:`~gmmjax.FitOptions`.
      sample_weight: optional ``(N,)`` weights (``None`` stays ``None``: no array of ones in
        the loop).
      max_components: the largest ``K`` fitted (default ``num_components``); ``X`` needs at
        least that many rows.
      fits_per_pass: fits sharing each pass over the data besides the restarts of one batch
        (model selection's numbers of components): chunks are sized for all of them.
      marginalizes: the caller runs the missing-data EM of :mod:`gmmjax._missing` (NaN allowed
        with ``options.missing == "marginalize"``); other fits refuse that option.
    """
    if options.missing == "marginalize" and not marginalizes:
        raise ValueError(
            "missing='marginalize' is available for fit_em and GaussianMixtureModel.fit (EM in memory) only: "
            "impute the data first for this kind of fit, or use missing='raise'."
        )
    key = v.check_key(key)
    if num_components is not None:
        num_components = v.check_int("num_components", num_components, 1)
    largest = num_components if max_components is None else max_components
    X = v.check_data(X, "X", min_samples=largest or 1, allow_nan=options.missing == "marginalize")
    options = check_fit_options(options, num_components, X.shape[1])
    if sample_weight is not None:
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], X.dtype)
    restart_batch_size = resolve_restart_batch_size(options.restart_batch_size, options.n_init)
    chunk_size = resolve_chunk_size(
        options.chunk_size, X.shape[0], largest or 1, X.shape[1], X.dtype, batch=fits_per_pass * restart_batch_size
    )
    options = options.replace(restart_batch_size=restart_batch_size, chunk_size=chunk_size)
    return FitInputs(key, X, sample_weight, options)


def traced_leaves(options: FitOptions, dtype) -> FitOptions:
    """``options`` with ``tol``, ``reg_covar`` (and ``lower_bound_init``) as arrays of the data's
    dtype: traced by the compiled fit, so new values reuse it. Concrete values become NumPy
    scalars (no device dispatch per call: small fits are call-overhead bound); traced ones stay."""

    def as_array(value):
        if value is None:
            return None
        return value.astype(dtype) if isinstance(value, jax.core.Tracer) else np.asarray(value, dtype)

    return options.replace(
        tol=as_array(options.tol),
        reg_covar=as_array(options.reg_covar),
        lower_bound_init=as_array(options.lower_bound_init),
    )


def compiled(fun: Callable, static_argnames: tuple = ()) -> SizedJit:
    """gmmjax's ``jit`` of a fit's body ``fun(key, X, sample_weight, options, *args, **static)``:
    the options' static fields are part of its pytree structure, so only the names in
    ``static_argnames`` need listing. Call it through :func:`call_compiled`."""
    return jit_for_size(fun, static_argnames=static_argnames)


def call_compiled(
    fit: Callable,
    inputs: FitInputs,
    *args,
    num_components: int,
    fits: int = 1,
    report_every: int = 0,
    work_per_row: int = 1,
    **static,
):
    """Runs a :func:`compiled` fit on checked ``inputs``: with cheaper compile settings for
    small problems (:mod:`gmmjax._compile`; ``fits``: how many fits the program runs;
    ``work_per_row``: the pass's work per row in units of the complete-data E-step's), and,
    with ``report_every`` (static; 0: off), progress shown while it runs (the call then
    waits for the result)."""
    X = inputs.X
    small = is_small_program(X.shape[0], X.shape[1], num_components, fits * inputs.options.n_init * work_per_row)
    run = functools.partial(
        fit,
        small,
        inputs.key,
        X,
        inputs.sample_weight,
        traced_leaves(inputs.options, X.dtype),
        *args,
        num_components=num_components,
        **static,
    )
    if not report_every:
        return run()
    with reporting(inputs.options.n_init, inputs.options.max_iter):
        return jax.block_until_ready(run(report_every=report_every))
