"""The EM fit loop and its front door, :func:`fit_em`."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gmmjax import _validation as v
from gmmjax._chunks import resolve_chunk_size
from gmmjax._compile import is_small_program, jit_for_size
from gmmjax._loops import compacting_while_loop
from gmmjax._implicit import attach_fixed_point
from gmmjax._init import check_init_params, initialize
from gmmjax._params import GMMParams, check_covariance_type
from gmmjax._progress import DEFAULT_VERBOSE_INTERVAL, check_verbose, report_em_step, reporting
from gmmjax._stats import _em_step_with_diagnostics


class FitResult(NamedTuple):
    """Result of :func:`fit_em` (``R`` restarts, ``K`` components, ``T`` = ``max_iter``).

    Differentiable (see ``differentiation`` in :func:`fit_em`): ``params`` and
    ``lower_bound`` in both modes, every floating-point field in ``"unrolled"`` mode.

    Attributes:
      params: :class:`GMMParams` of the best restart (highest ``lower_bound``).
      lower_bound: ``()`` mean log-likelihood of the best restart (scikit-learn's
        ``lower_bound_``: that of the parameters before the last M-step).
      n_iter: ``()`` EM iterations run by the best restart.
      converged: ``()`` whether the best restart met ``tol`` before ``max_iter``.
      best_restart: ``()`` index of the best restart.
      restart_params: :class:`GMMParams` with a leading ``(R,)`` axis on every leaf.
      restart_lower_bounds: ``(R,)``.
      restart_n_iter: ``(R,)`` int.
      restart_converged: ``(R,)`` bool.
      lower_bound_history: ``(R, T)`` mean log-likelihood at each iteration; entries after
        a restart's last iteration are NaN.
      collapsed_components: ``(R, K)`` bool: the component was empty or its covariance needed
        extra regularisation at some iteration (it stays finite either way).
    """

    params: GMMParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    best_restart: jax.Array
    restart_params: GMMParams
    restart_lower_bounds: jax.Array
    restart_n_iter: jax.Array
    restart_converged: jax.Array
    lower_bound_history: jax.Array
    collapsed_components: jax.Array


class _LoopState(NamedTuple):
    params: GMMParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    history: jax.Array
    collapsed: jax.Array


def _initial_state(params: GMMParams, collapsed, max_iter: int, dtype, lower_bound=None) -> _LoopState:
    return _LoopState(
        params=params,
        lower_bound=jnp.array(-jnp.inf, dtype) if lower_bound is None else jnp.asarray(lower_bound, dtype),
        n_iter=jnp.array(0, jnp.int32),
        converged=jnp.array(False),
        history=jnp.full((max_iter,), jnp.nan, dtype),
        collapsed=jnp.zeros(params.num_components, bool) if collapsed is None else collapsed,
    )


def _advance(state: _LoopState, operands, em_step_fn) -> _LoopState:
    """One EM iteration with the loop's bookkeeping; the body of both fit loops.

    ``operands``: ``(X, sample_weight, tol, reg_covar, num_active, ...)`` (see :func:`_operands`);
    ``em_step_fn(params, X, sample_weight, reg_covar, num_active=...) -> (params, collapsed, lower_bound)``.
    """
    X, sample_weight, tol, reg_covar, num_active = operands[:5]
    new_params, new_collapsed, lower_bound = em_step_fn(state.params, X, sample_weight, reg_covar,
                                                        num_active=num_active)
    converged = jnp.abs(lower_bound - state.lower_bound) < tol
    return _LoopState(
        params=new_params,
        lower_bound=lower_bound,
        n_iter=state.n_iter + 1,
        converged=converged,
        # (max_iter=0: no history, and this body is traced but never runs)
        history=state.history.at[state.n_iter].set(lower_bound) if state.history.shape[0] else state.history,
        collapsed=state.collapsed | new_collapsed,
    )


def _operands(X, sample_weight, tol, reg_covar, num_active):
    # num_active travels with the operands: the loop's rule under vmap takes no batched closures.
    return X, sample_weight, jnp.asarray(tol, X.dtype), jnp.asarray(reg_covar, X.dtype), num_active


def run_em(params: GMMParams, X, sample_weight, *, max_iter: int, tol, reg_covar, collapsed=None,
           chunk_size: int | None = None, num_active=None, report_every: int = 0, restart=None,
           lower_bound_init=None) -> _LoopState:
    """EM from ``params`` until the mean log-likelihood changes by less than ``tol`` or
    ``max_iter`` iterations have run, as one ``lax.while_loop`` on the device (each
    iteration one chunked pass over ``X``; no host round trip until the loop ends; under
    ``vmap``, fits that have stopped no longer cost work: :mod:`gmmjax._loops`).
    Not reverse-differentiable (see :func:`run_em_unrolled` and :mod:`gmmjax._implicit`).

    With ``num_active``, only the first ``num_active`` components are fitted (see
    :func:`gmmjax._stats.m_step_with_diagnostics`). ``report_every`` (static; 0: off) sends
    progress to the host every that many iterations, tagged with the ``()`` int ``restart``
    index (:mod:`gmmjax._progress`)."""
    em_step_fn = functools.partial(_em_step_with_diagnostics, chunk_size=chunk_size)

    def keep_going(state: _LoopState, operands):
        return (state.n_iter < max_iter) & ~state.converged

    def step(state: _LoopState, operands) -> _LoopState:
        new_state = _advance(state, operands, em_step_fn)
        if report_every:  # progress (static switch: when off the loop has no callback at all)
            report_em_step(operands[5], keep_going(state, operands), new_state.n_iter, new_state.lower_bound,
                           new_state.converged, keep_going(new_state, operands), report_every)
        return new_state

    operands = _operands(X, sample_weight, tol, reg_covar, num_active)
    if report_every:  # the restart index travels with its lane (compacting_while_loop regroups lanes)
        operands += (jnp.asarray(restart, jnp.int32),)
    # Under vmap (restarts, datasets) finished fits stop costing work (see _loops).
    return compacting_while_loop(keep_going, step, _initial_state(params, collapsed, max_iter, X.dtype,
                                                                  lower_bound_init), operands)


def run_em_unrolled(params: GMMParams, X, sample_weight, *, max_iter: int, tol, reg_covar, collapsed=None,
                    chunk_size: int | None = None, num_active=None, lower_bound_init=None) -> _LoopState:
    """The same iterations as :func:`run_em`, as ``max_iter`` steps of a ``lax.scan`` that
    leave a fit unchanged once it has converged: differentiable in every mode (reverse,
    forward, higher order) in ``X``, ``sample_weight`` and ``reg_covar``.

    Each step is rematerialised (``jax.checkpoint``), so reverse mode saves only the
    parameters of every step, ``O(max_iter · K · D²)`` (full), and recomputes one step at a
    time on the way back; that step's backward pass holds its per-chunk temporaries, about
    ``O(N · K · D)``. A converged fit still pays for the remaining steps' bookkeeping, and
    under ``vmap`` for their EM steps too.
    """
    em_step_fn = jax.checkpoint(functools.partial(_em_step_with_diagnostics, chunk_size=chunk_size))
    operands = _operands(X, sample_weight, tol, reg_covar, num_active)

    def step(state: _LoopState, _) -> tuple[_LoopState, None]:
        state = jax.lax.cond(state.converged, lambda s: s, lambda s: _advance(s, operands, em_step_fn), state)
        return state, None

    return jax.lax.scan(step, _initial_state(params, collapsed, max_iter, X.dtype, lower_bound_init), None,
                        length=max_iter)[0]


def restart_keys(key: jax.Array, n_init: int) -> jax.Array:
    """Keys of the ``n_init`` restarts: ``key`` itself for one restart, else ``split(key, n_init)``,
    so restart ``r`` of a batched fit equals a single fit with ``split(key, n_init)[r]``."""
    return key[None] if n_init == 1 else jax.random.split(key, n_init)


def select_best(state: _LoopState) -> FitResult:
    """Chooses the restart with the highest lower bound (NaN counts as worst), on device."""
    score = jnp.where(jnp.isnan(state.lower_bound), -jnp.inf, state.lower_bound)
    best = jnp.argmax(score)
    return FitResult(
        params=jax.tree_util.tree_map(lambda leaf: leaf[best], state.params),
        lower_bound=state.lower_bound[best],
        n_iter=state.n_iter[best],
        converged=state.converged[best],
        best_restart=best,
        restart_params=state.params,
        restart_lower_bounds=state.lower_bound,
        restart_n_iter=state.n_iter,
        restart_converged=state.converged,
        lower_bound_history=state.history,
        collapsed_components=state.collapsed,
    )


DIFFERENTIATION_MODES = ("implicit", "unrolled")


def check_differentiation(differentiation) -> str:
    if differentiation not in DIFFERENTIATION_MODES:
        raise ValueError(f"differentiation must be one of {DIFFERENTIATION_MODES}, got {differentiation!r}.")
    return differentiation


def fit_restarts(key, X, sample_weight, tol, reg_covar, weights_init, means_init, precisions_init, *,
                 num_components, covariance_type, max_iter, n_init, init_params, chunk_size, restart_batch_size,
                 num_active=None, report_every=0, differentiation="implicit", lower_bound_init=None) -> FitResult:
    """The body of :func:`fit_em` (arguments validated). With ``num_active`` (an int, may be
    traced, e.g. vmapped over), ``num_components`` is a maximum: only the first
    ``num_active`` components are fitted and the result equals that of
    ``num_components=num_active`` padded with weight-0 components (see
    :mod:`gmmjax._model_selection`; such fits are constants for derivatives).
    ``report_every``: progress (see :func:`run_em`; the while loop only)."""
    # Initialisation (k-means, random draws, *_init), the convergence test and the choice of
    # the best restart are constants for derivatives. "unrolled": the EM steps see the live
    # data; "implicit": the while loop runs on constants and its fixed point is attached to
    # the live data afterwards (see _implicit).
    X_const, weight_const, tol, reg_const, weights_init, means_init, precisions_init = jax.lax.stop_gradient(
        (X, sample_weight, tol, reg_covar, weights_init, means_init, precisions_init))
    if differentiation == "unrolled":
        run, X_em, weight_em, reg_em = run_em_unrolled, X, sample_weight, reg_covar
    else:
        run = functools.partial(run_em, report_every=report_every)
        X_em, weight_em, reg_em = X_const, weight_const, reg_const

    def one_restart(restart_key, restart_index=None):
        params, collapsed = initialize(
            restart_key, X_const, num_components,
            covariance_type=covariance_type, init_params=init_params, sample_weight=weight_const,
            reg_covar=reg_const, weights_init=weights_init, means_init=means_init,
            precisions_init=precisions_init, chunk_size=chunk_size, num_active=num_active,
        )
        progress = dict(restart=restart_index) if report_every else {}
        return run(params, X_em, weight_em, max_iter=max_iter, tol=tol, reg_covar=reg_em,
                   collapsed=collapsed, chunk_size=chunk_size, num_active=num_active,
                   lower_bound_init=lower_bound_init, **progress)

    keys = restart_keys(key, n_init)
    # With progress on, each restart also carries its index (for the host-side reporter).
    restarts = (keys, jnp.arange(n_init, dtype=jnp.int32)) if report_every else (keys,)
    if n_init == 1:  # no batch axis of size one: XLA picks worse layouts for it
        states = jax.tree_util.tree_map(lambda leaf: leaf[None], one_restart(*(r[0] for r in restarts)))
    elif restart_batch_size >= n_init:
        states = jax.vmap(one_restart)(*restarts)
    else:  # batches one after another in the same program; each batch stops when it converges
        states = jax.lax.map(lambda r: one_restart(*r), restarts, batch_size=restart_batch_size)
    result = select_best(states)
    if differentiation == "implicit" and num_active is None:
        params, lower_bound = attach_fixed_point(result.params, result.lower_bound, X, sample_weight, reg_covar,
                                                 chunk_size, max_iter)
        result = result._replace(params=params, lower_bound=lower_bound)
    return result


# The compiled fit, as fit_em runs it: _fit_em_for_size(small, ...) (see gmmjax._compile).
_fit_em_for_size = jit_for_size(fit_restarts, static_argnames=(
    "num_components", "covariance_type", "max_iter", "n_init", "init_params", "chunk_size", "restart_batch_size",
    "report_every", "differentiation"))
_fit_em = _fit_em_for_size.variant(False)  # XLA's default settings (e.g. for inspecting the compiled program)


def resolve_restart_batch_size(restart_batch_size, n_init: int) -> int:
    """Restarts run together (vmapped): ``restart_batch_size`` if given, else all of them.

    A batch size that does not divide ``n_init`` is lowered to the largest divisor below it,
    so that every batch has the same shape (one compiled loop body).
    """
    if restart_batch_size is None:
        return n_init
    size = v.check_int("restart_batch_size", restart_batch_size, 1)
    size = min(size, n_init)
    while n_init % size:
        size -= 1
    return size


def resolve_max_iter(max_iter, num_iters) -> int:
    """``num_iters`` (the seed's name) and ``max_iter`` (scikit-learn's) are the same limit (default 100).
    ``0`` runs no iteration: the fit returns its initialisation (as scikit-learn does)."""
    return v.check_int("num_iters (max_iter)", v.resolve_alias("num_iters", num_iters, "max_iter", max_iter, 100), 0)


def check_initial_parameters(weights_init, means_init, precisions_init, num_components, num_features,
                             covariance_type):
    """Validates user-given starting parameters (scikit-learn's ``*_init`` shapes)."""
    if weights_init is not None:
        v.check_weights("weights_init", weights_init, num_components)
    if means_init is not None:
        v.check_means("means_init", means_init, num_components, num_features)
    if precisions_init is not None:
        v.check_covariance_like("precisions_init", precisions_init, num_components, num_features,
                                covariance_type, kind="precision")


class CheckedFitInputs(NamedTuple):
    """The arguments :func:`fit_em` and :func:`~gmmjax.fit_gradient` share, validated."""

    key: jax.Array
    X: jax.Array
    num_components: int
    n_init: int
    covariance_type: str
    init_params: str
    reg_covar: float
    sample_weight: jax.Array | None
    chunk_size: int | None  # checked, not yet resolved: the batch it is sized for differs


def check_fit_inputs(key, X, num_components, *, n_init, covariance_type, init_params, reg_covar,
                     weights_init, means_init, precisions_init, sample_weight, chunk_size) -> CheckedFitInputs:
    """Validates a fit's shared arguments at the boundary, with messages that say what to do."""
    key = v.check_key(key)
    covariance_type = check_covariance_type(covariance_type)
    init_params = check_init_params(init_params)
    num_components = v.check_int("num_components", num_components, 1)
    n_init = v.check_int("n_init", n_init, 1)
    reg_covar = v.check_nonnegative_float("reg_covar", reg_covar)
    X = v.check_data(X, "X", min_samples=num_components)
    check_initial_parameters(weights_init, means_init, precisions_init, num_components, X.shape[1],
                             covariance_type)
    if sample_weight is not None:  # None stays None: no (N,) array of ones in the loop
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], X.dtype)
    if chunk_size is not None:
        chunk_size = v.check_int("chunk_size", chunk_size, 1)
    return CheckedFitInputs(key, X, num_components, n_init, covariance_type, init_params, reg_covar,
                            sample_weight, chunk_size)


def fit_em(
    key: jax.Array,
    X: jax.typing.ArrayLike,
    num_components: int,
    *,
    covariance_type: str = "full",
    max_iter: int | None = None,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    n_init: int = 1,
    init_params: str = "kmeans",
    sample_weight: jax.typing.ArrayLike | None = None,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    num_iters: int | None = None,
    chunk_size: int | None = None,
    restart_batch_size: int | None = None,
    verbose: bool | int = False,
    verbose_interval: int = DEFAULT_VERBOSE_INTERVAL,
    differentiation: str = "implicit",
    lower_bound_init: float | None = None,
) -> FitResult:
    """Fits a Gaussian mixture by EM, ``n_init`` restarts in one vmapped, jitted call.

    Each restart is initialised from its own key and runs one ``lax.while_loop`` until the
    mean log-likelihood changes by less than ``tol`` or ``max_iter`` iterations have run;
    the best restart (highest lower bound) is chosen on the device. Works under ``jit``
    (mark ``num_components`` and the other configuration static) and ``vmap`` (e.g. over a
    batch of equally shaped datasets).

    **Gradients through the fit.** ``fit_em`` works inside ``jax.grad`` (and ``vjp``,
    ``jacrev``): the fitted ``params`` and ``lower_bound`` are differentiable in ``X``,
    ``sample_weight`` and ``reg_covar``. The initialisation (k-means, random draws, any
    ``*_init``), the convergence test and the choice of the best restart are discrete and
    treated as constants. ``differentiation`` chooses how:

    - ``"implicit"`` (default): the fit runs exactly as without differentiation (the
      compiled forward program is unchanged), and the result is differentiated as the EM
      fixed point ``p* = EM(p*, X)`` by the implicit function theorem: the backward pass
      iterates the transposed Jacobian of one EM step (vector-Jacobian products computed
      chunk by chunk, never a dense Jacobian) to the adjoint's fixed point
      (:mod:`gmmjax._implicit`). Memory does not depend on the number of iterations:
      ``O(chunk_size · K · D)`` beyond the data plus a few parameter-sized vectors. Time:
      the adjoint converges at EM's own rate, each of its iterations costing about three
      E-steps; it stops after ``max(max_iter, 100)`` iterations at most. Exact when the fit
      has converged (use a small ``tol``) to a well-determined fixed point; for an
      unconverged fit it approximates the derivative of the fixed point it was heading to.
      Where that point is degenerate (EM converging sublinearly, e.g. two components sharing a
      cluster) the capped iteration returns the derivative of that many EM steps from it.
      ``lower_bound``'s derivative is that of ``L(p*(X), X)`` (for ``reg_covar = 0`` the
      envelope theorem makes it ``∂L/∂X`` at fixed ``p*``). Reverse mode, first order only;
      ``restart_params`` and the other per-restart diagnostics are constants.
    - ``"unrolled"``: ``max_iter`` EM steps in a ``lax.scan`` from the (constant)
      initialisation, each fit left unchanged once converged, so the forward values equal
      the default's (to rounding); the exact derivative of the iterations that ran (also of an
      unconverged fit), in every field of the result, in forward and reverse mode and to
      any order. Memory: the parameters of every step are saved, ``O(max_iter · K · D²)``
      (full; ``K · D`` diag), and one step's backward pass, ``O(N · K · D)``, runs at a
      time; time grows with ``max_iter`` even after convergence.

    Args:
      key: ``jax.random`` key.
      X: ``(N, D)`` data; float64 is kept when ``jax_enable_x64`` is on, else float32.
      num_components: ``K``, the number of mixture components.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      max_iter: iteration limit (default 100); ``num_iters`` is accepted as an alias. ``0``
        returns the initialisation (``n_iter`` 0, not converged, ``lower_bound`` ``-inf``).
      tol: convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to covariance diagonals.
      n_init: number of restarts.
      init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
      sample_weight: optional ``(N,)`` non-negative sample weights.
      weights_init, means_init, precisions_init: optional starting parameters in
        scikit-learn's shapes (precisions, not covariances).
      num_iters: alias of ``max_iter`` (the original example's name).
      chunk_size: rows of ``X`` per chunk in every pass over the data; memory beyond the
        data is ``O(restart_batch_size · chunk_size · K · D + K · D²)``. ``None`` sizes
        chunks so that one ``(restarts, K, chunk, D)`` temporary is about 8 MiB
        (:data:`gmmjax._chunks.CHUNK_TARGET_BYTES`). Results do not depend on it beyond
        floating-point summation order.
      restart_batch_size: how many restarts run together (vmapped); batches run one after
        another inside the same compiled program. ``None``: all ``n_init`` at once.
      verbose: show progress on stderr (a ``tqdm`` bar if installed, else lines): iteration,
        best lower bound, restarts converged, elapsed time. The call then waits for the fit to
        finish. Off, the compiled loop has no host callback. Not available under the caller's
        ``jit``/``vmap``.
      verbose_interval: iterations between progress reports (each restart also reports its
        last iteration).
      differentiation: ``"implicit"`` or ``"unrolled"``: how derivatives pass through the
        fit (see above). Changes nothing when nobody differentiates, except that
        ``"unrolled"`` always runs ``max_iter`` (mostly idle) steps.
      lower_bound_init: the lower bound the first iteration's is compared with in the
        convergence test (``None``: ``-inf``); a warm start passes the previous fit's, as
        scikit-learn does, so a fit continued one iteration at a time can converge.

    Returns:
      A :class:`FitResult`.

    Example:
      >>> import jax, gmmjax as gj
      >>> X, _ = gj.sample(jax.random.key(0), gj.GMMParams(
      ...     jax.numpy.array([0.5, 0.5]), jax.numpy.array([[0.0], [5.0]]),
      ...     jax.numpy.ones((2, 1, 1))), 500)
      >>> result = gj.fit_em(jax.random.key(1), X, 2, n_init=4)
      >>> sorted(int(round(float(m))) for m in result.params.means[:, 0])
      [0, 5]
    """
    differentiation = check_differentiation(differentiation)
    max_iter = resolve_max_iter(max_iter, num_iters)
    tol = v.check_nonnegative_float("tol", tol)
    key, X, num_components, n_init, covariance_type, init_params, reg_covar, sample_weight, chunk_size = (
        check_fit_inputs(key, X, num_components, n_init=n_init, covariance_type=covariance_type,
                         init_params=init_params, reg_covar=reg_covar, weights_init=weights_init,
                         means_init=means_init, precisions_init=precisions_init, sample_weight=sample_weight,
                         chunk_size=chunk_size))
    restart_batch_size = resolve_restart_batch_size(restart_batch_size, n_init)
    chunk_size = resolve_chunk_size(chunk_size, X.shape[0], num_components, X.shape[1], X.dtype,
                                    batch=restart_batch_size)
    report_every = check_verbose(verbose, verbose_interval, key, X)
    if report_every and differentiation == "unrolled":
        raise ValueError("verbose progress is reported from the EM while loop; differentiation='unrolled' runs "
                         "a scan instead: use verbose=False or differentiation='implicit'.")
    small = is_small_program(X.shape[0], X.shape[1], num_components, n_init)
    fit = functools.partial(
        _fit_em_for_size, small,
        key, X, sample_weight, jnp.asarray(tol, X.dtype), jnp.asarray(reg_covar, X.dtype),
        weights_init, means_init, precisions_init,
        num_components=num_components, covariance_type=covariance_type, max_iter=max_iter,
        n_init=n_init, init_params=init_params, chunk_size=chunk_size, restart_batch_size=restart_batch_size,
        differentiation=differentiation,
        lower_bound_init=jnp.asarray(-jnp.inf if lower_bound_init is None else lower_bound_init, X.dtype),
    )
    if not report_every:
        return fit()
    with reporting(n_init, max_iter):
        return jax.block_until_ready(fit(report_every=report_every))
