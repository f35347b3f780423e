"""EM: the fit loop of one restart, and the front door :func:`fit_em`.

The loop advances a :class:`~gmmjax._driver.FitState` by one EM step (E-step in chunks →
summed statistics → M-step) until the mean log-likelihood changes by less than ``tol``;
restarts, the best restart, compilation and progress belong to :mod:`gmmjax._driver`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._driver import (
    FitResult,
    FitState,
    call_compiled,
    check_fit_inputs,
    compiled,
    initial_params,
    initial_state,
    run_restarts,
)
from gmmjax._implicit import attach_fixed_point
from gmmjax._loops import compacting_while_loop
from gmmjax._missing import MISSING_WORK_PER_ROW, MissingLayout, em_step_missing, mean_imputed, tiers_for
from gmmjax._options import FitOptions, fit_options
from gmmjax._prior import check_prior, require_no_prior, resolve_prior
from gmmjax._progress import DEFAULT_VERBOSE_INTERVAL, check_verbose, reporting_step
from gmmjax._sharding import fit_em_sharded, fit_em_sharded_checkpointed, row_sharding
from gmmjax._stats import _em_step_with_diagnostics
from gmmjax._validation import is_traced

DIFFERENTIATION_MODES = ("implicit", "unrolled")


class EMOperands(NamedTuple):
    """What the EM loop reads but never changes (a pytree: under ``vmap`` each field may or
    may not carry the batch axis).

    Attributes:
      X: ``(N, D)`` data.
      sample_weight: ``(N,)`` or ``None``.
      tol: ``()`` convergence threshold.
      reg_covar: ``()``.
      num_active: ``()`` int or ``None`` (see :func:`run_em`).
      restart: ``()`` int32 index of the restart for progress reports, or ``None``.
      prior: a :class:`~gmmjax.ConjugatePrior` (MAP EM) or ``None``.
    """

    X: jax.Array
    sample_weight: jax.Array | None
    tol: jax.Array
    reg_covar: jax.Array
    num_active: jax.Array | None = None
    restart: jax.Array | None = None
    prior: Any = None


def em_iteration(state: FitState, operands: EMOperands, em_step_fn) -> FitState:
    """One EM iteration with the loop's bookkeeping; the body of both fit loops.

    ``em_step_fn(params, X, sample_weight, reg_covar, num_active=...) -> (params, collapsed, lower_bound)``.
    """
    with_prior = {} if operands.prior is None else {"prior": operands.prior}  # MAP EM
    new_params, new_collapsed, lower_bound = em_step_fn(
        state.params,
        operands.X,
        operands.sample_weight,
        operands.reg_covar,
        num_active=operands.num_active,
        **with_prior,
    )
    return FitState(
        params=new_params,
        lower_bound=lower_bound,
        n_iter=state.n_iter + 1,
        converged=jnp.abs(lower_bound - state.lower_bound) < operands.tol,
        lower_bound_history=state.lower_bound_history.at[state.n_iter].set(lower_bound),
        collapsed_components=state.collapsed_components | new_collapsed,
    )


def run_em(
    start: FitState,
    operands: EMOperands,
    *,
    max_iter: int,
    chunk_size: int | None = None,
    report_every: int = 0,
    rows: RowAxis = LOCAL,
    em_step_fn=None,
) -> FitState:
    """EM from ``start`` until the mean log-likelihood changes by less than ``operands.tol`` or
    ``max_iter`` iterations have run, as one ``lax.while_loop`` on the device (each
    iteration one chunked pass over ``X``; no host round trip until the loop ends; under
    ``vmap``, fits that have stopped no longer cost work: :mod:`gmmjax._loops`).
    Not reverse-differentiable (see :func:`run_em_unrolled` and :mod:`gmmjax._implicit`).

    With ``operands.num_active``, only the first ``num_active`` components are fitted (see
    :func:`gmmjax._stats.m_step_with_diagnostics`). ``report_every`` (static; 0: off) sends
    progress to the host every that many iterations, tagged with ``operands.restart``
    (:mod:`gmmjax._progress`). With sharded ``rows`` (inside ``jax.shard_map``, see
    :mod:`gmmjax._sharding`) each iteration's statistics are summed over the shards by one
    all-reduce; the M-step and the convergence test then run replicated. ``em_step_fn``
    (see :func:`em_iteration`; default: the complete-data step) replaces the EM step, e.g. by
    the missing-data step of :mod:`gmmjax._missing`."""
    if em_step_fn is None:
        em_step_fn = functools.partial(_em_step_with_diagnostics, chunk_size=chunk_size, rows=rows)

    def keep_going(state: FitState, operands: EMOperands):
        return (state.n_iter < max_iter) & ~state.converged

    def step(state: FitState, operands: EMOperands) -> FitState:
        return em_iteration(state, operands, em_step_fn)

    # Under vmap (restarts, datasets) finished fits stop costing work (see _loops).
    return compacting_while_loop(keep_going, reporting_step(step, keep_going, report_every), start, operands)


def run_em_unrolled(
    start: FitState, operands: EMOperands, *, max_iter: int, chunk_size: int | None = None, rows: RowAxis = LOCAL
) -> FitState:
    """The same iterations as :func:`run_em`, as ``max_iter`` steps of a ``lax.scan`` that
    leave a fit unchanged once it has converged: differentiable in every mode (reverse,
    forward, higher order) in ``X``, ``sample_weight`` and ``reg_covar``.

    Each step is rematerialised (``jax.checkpoint``), so reverse mode saves only the
    parameters of every step, ``O(max_iter · K · D²)`` (full), and recomputes one step at a
    time on the way back; that step's backward pass holds its per-chunk temporaries, about
    ``O(N · K · D)``. A converged fit still pays for the remaining steps' bookkeeping, and
    under ``vmap`` for their EM steps too.
    """
    em_step_fn = jax.checkpoint(functools.partial(_em_step_with_diagnostics, chunk_size=chunk_size, rows=rows))

    def step(state: FitState, _) -> tuple[FitState, None]:
        state = jax.lax.cond(state.converged, lambda s: s, lambda s: em_iteration(s, operands, em_step_fn), state)
        return state, None

    return jax.lax.scan(step, start, None, length=max_iter)[0]


def check_differentiation(differentiation) -> str:
    if differentiation not in DIFFERENTIATION_MODES:
        raise ValueError(f"differentiation must be one of {DIFFERENTIATION_MODES}, got {differentiation!r}.")
    return differentiation


def fit_em_restarts(
    key,
    X,
    sample_weight,
    options: FitOptions,
    *,
    num_components: int,
    num_active=None,
    report_every: int = 0,
    differentiation: str = "implicit",
    rows: RowAxis = LOCAL,
    missing_tiers: tuple[int, ...] | None = None,
) -> FitResult:
    """The body of :func:`fit_em` (inputs checked, sizes resolved, ``tol``/``reg_covar`` arrays).

    With ``num_active`` (an int, may be traced, e.g. vmapped over), ``num_components`` is a
    maximum: only the first ``num_active`` components are fitted and the result equals that
    of ``num_components=num_active`` padded with weight-0 components (see
    :mod:`gmmjax._model_selection`; such fits are constants for derivatives).
    ``report_every``: progress (see :func:`run_em`; the while loop only). ``rows``: where the
    rows of ``X`` live (sharded inside ``jax.shard_map``: :mod:`gmmjax._sharding`; no
    derivatives then). With ``options.missing == "marginalize"`` NaN entries of ``X`` are
    missing values (:mod:`gmmjax._missing`; ``missing_tiers``: its static tiers, ``None``:
    up to ``D``): the seeding sees mean-imputed data, EM runs the exact missing-data step, and
    the result is a constant for derivatives.
    """
    # Initialisation (k-means, random draws, *_init), the convergence test and the choice of
    # the best restart are constants for derivatives. "unrolled": the EM steps see the live
    # data; "implicit": the while loop runs on constants and its fixed point is attached to
    # the live data afterwards (see _implicit).
    X_const, weight_const, options_const = jax.lax.stop_gradient((X, sample_weight, options))
    marginalize = options.missing == "marginalize"
    X_seed, em_step_fn = X_const, None
    if marginalize:
        tiers = tiers_for(X.shape[1], X.shape[1]) if missing_tiers is None else missing_tiers
        X_seed = mean_imputed(X_const, weight_const)
        em_step_fn = functools.partial(em_step_missing, chunk_size=options.chunk_size, tiers=tiers)
    if differentiation == "unrolled" and not marginalize:
        run = functools.partial(run_em_unrolled, rows=rows)
        X_em, weight_em, reg_em, prior_em = X, sample_weight, options.reg_covar, options.prior
    else:
        run = functools.partial(run_em, report_every=report_every, rows=rows, em_step_fn=em_step_fn)
        X_em, weight_em, reg_em, prior_em = X_const, weight_const, options_const.reg_covar, options_const.prior

    def fit_one(restart_key, restart_index) -> FitState:
        params, collapsed = initial_params(
            restart_key, X_seed, weight_const, options_const, num_components, num_active, rows
        )
        start = initial_state(params, collapsed, options.max_iter, options_const.lower_bound_init)
        if options.max_iter == 0:  # scikit-learn's max_iter=0: the initialisation itself
            return start
        operands = EMOperands(
            X_em, weight_em, options_const.tol, reg_em, num_active, restart_index if report_every else None, prior_em
        )
        return run(start, operands, max_iter=options.max_iter, chunk_size=options.chunk_size)

    result = run_restarts(key, options, fit_one)
    if marginalize:
        return refuse_derivatives(result, X, sample_weight, options.reg_covar)
    if differentiation == "implicit" and num_active is None and options.max_iter > 0:
        params, lower_bound = attach_fixed_point(
            result.params,
            result.lower_bound,
            X,
            sample_weight,
            options.reg_covar,
            options.chunk_size,
            options.max_iter,
            rows,
            options.prior,
        )
        result = result._replace(params=params, lower_bound=lower_bound)
    return result


@jax.custom_vjp
def _constant_for_values(result, X, sample_weight, reg_covar):
    return result


def _constant_fwd(result, X, sample_weight, reg_covar):
    return result, None


def _refuse_bwd(_, cotangent):
    raise NotImplementedError(
        "derivatives through a fit with missing='marginalize' are not available: differentiate "
        "through a fit on complete rows, or treat the fitted parameters as constants "
        "(jax.lax.stop_gradient)."
    )


_constant_for_values.defvjp(_constant_fwd, _refuse_bwd)


def refuse_derivatives(result, X, sample_weight, reg_covar):
    """``result`` unchanged; reverse-mode derivatives of it with respect to the data raise
    instead of being silently zero (the fit ran on constants)."""
    return _constant_for_values(result, X, sample_weight, reg_covar)


# The compiled fit, as fit_em runs it: _fit_em_for_size(small, ...) (see gmmjax._compile).
_fit_em_for_size = compiled(
    fit_em_restarts, static_argnames=("num_components", "report_every", "differentiation", "missing_tiers")
)
_fit_em = _fit_em_for_size.variant(False)  # XLA's default settings (e.g. for inspecting the compiled program)


def fit_em(
    key: jax.Array,
    X: jax.typing.ArrayLike,
    num_components: int,
    options: FitOptions | None = None,
    *,
    sample_weight: jax.typing.ArrayLike | None = None,
    verbose: bool | int = False,
    verbose_interval: int = DEFAULT_VERBOSE_INTERVAL,
    differentiation: str = "implicit",
    mesh=None,
    data_axis=None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    **option_keywords,
) -> FitResult:
    """Fits a Gaussian mixture by EM, ``n_init`` restarts in one vmapped, jitted call.

    Each restart is initialised from its own key and runs one ``lax.while_loop`` until the
    mean log-likelihood changes by less than ``tol`` or ``max_iter`` iterations have run;
    the best restart (highest lower bound) is chosen on the device. Works under ``jit``
    (mark ``num_components`` static; a :class:`~gmmjax.FitOptions` argument needs no marking:
    its static fields are pytree structure, ``tol``/``reg_covar`` traced) and ``vmap`` (e.g.
    over a batch of equally shaped datasets, or over ``reg_covar`` values).

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
      options: a :class:`~gmmjax.FitOptions` (default ``FitOptions()``).
      sample_weight: optional ``(N,)`` non-negative sample weights.
      verbose: show progress on stderr (a ``tqdm`` bar if installed, else lines): iteration,
        best lower bound, restarts converged, elapsed time. The call then waits for the fit to
        finish. Off, the compiled loop has no host callback. Not available under the caller's
        ``jit``/``vmap``.
      verbose_interval: iterations between progress reports (each restart also reports its
        last iteration).
      differentiation: ``"implicit"`` or ``"unrolled"``: how derivatives pass through the
        fit (see above). Changes nothing when nobody differentiates, except that
        ``"unrolled"`` always runs ``max_iter`` (mostly idle) steps.
      mesh: a ``jax.sharding.Mesh``: fit data-parallel with the rows sharded over
        ``data_axis`` (default: the mesh's only axis), one all-reduce of the statistics per
        iteration (:mod:`gmmjax._sharding`, ``docs/scaling/devices_and_hosts.md``). A
        row-sharded ``jax.Array`` ``X`` (``NamedSharding``) fits so without ``mesh``. The result
        equals the one-device fit (to rounding), and so do its derivatives (on a mesh of
        Explicit axes, differentiate inside ``jax.set_mesh(mesh)``, as JAX asks); no
        ``verbose`` then.
      data_axis: the mesh axis (or tuple of axes) of the rows.
      checkpoint: a file (``.npz``): run the fit ``checkpoint_every`` iterations (default 1)
        at a time as a sharded fit (over ``mesh``, or a one-device mesh), writing the restarts'
        states after each segment atomically (on many processes, process 0 writes);
        ``resume=True`` continues from it (refused with a ``CheckpointMismatchError`` when it
        was written for other data, options or key) to the result of the uninterrupted fit
        (``gmmjax._sharding.fit_em_sharded_checkpointed``).
      checkpoint_every, resume: see ``checkpoint``.
      **option_keywords: any field of :class:`~gmmjax.FitOptions` (replacing that of
        ``options``): ``covariance_type``, ``max_iter`` (alias ``num_iters``, the original
        example's name; default 100; 0 returns the initialisation), ``tol``, ``reg_covar``,
        ``n_init``, ``init_params``, ``weights_init``/``means_init``/``precisions_init``
        (scikit-learn's shapes: precisions, not covariances), ``lower_bound_init``,
        ``chunk_size`` (rows per chunk in every pass over the data; memory beyond the data is
        ``O(restart_batch_size · chunk_size · K · D + K · D²)``; ``None`` sizes chunks so that
        one ``(restarts, K, chunk, D)`` temporary is about 8 MiB, see
        :func:`gmmjax.auto_chunk_size`; results do not depend on it
        beyond floating-point summation order) and ``restart_batch_size`` (restarts run
        together, vmapped; batches run one after another inside the same compiled program),
        and ``prior``: a :class:`~gmmjax.ConjugatePrior` or ``"default"`` (mclust's defaults
        for ``X``, :meth:`~gmmjax.ConjugatePrior.default`) for MAP EM with mclust's conjugate
        prior (Fraley & Raftery 2007): the M-step adds the prior's pseudo-statistics, the
        weights keep their maximum-likelihood update, and ``lower_bound`` (the convergence
        test, the choice of the best restart, ``lower_bound_history``) is the *penalised*
        objective ``(Σ_n s_n log p(x_n) + log prior(params)) / Σ_n s_n``, which MAP EM never
        decreases (mclust's ``loglik`` reports the log-likelihood alone: ``gj.log_prob``;
        ``gj.bic`` uses the log-likelihood alone, as mclust's BIC). Not with ``mesh``,
        ``checkpoint`` or sharded ``X``.

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
    options = fit_options(options, **option_keywords)
    if options.missing == "marginalize" and options.prior is not None:
        raise ValueError(
            "missing='marginalize' and prior= are not available together yet: impute the data for a MAP fit, "
            "or leave out the prior."
        )
    if options.missing == "marginalize" and (
        checkpoint is not None or mesh is not None or row_sharding(X) is not None or differentiation != "implicit"
    ):
        raise ValueError(
            "missing='marginalize' fits on one device, without checkpoints and without derivatives: leave out "
            "mesh, checkpoint and differentiation (or impute the data and use missing='raise')."
        )
    if options.prior is not None and (checkpoint is not None or mesh is not None or row_sharding(X) is not None):
        require_no_prior(options.prior, "sharded or checkpointed fits")
    if isinstance(options.prior, str):  # "default": mclust's defaults for this data
        options = options.replace(prior=resolve_prior(options.prior, X, num_components, options.covariance_type))
    if checkpoint is None and (checkpoint_every is not None or resume):
        raise ValueError("checkpoint_every and resume need checkpoint= (a file path).")
    if checkpoint is not None:
        if verbose or differentiation != "implicit":
            raise ValueError("a checkpointed fit reports no progress and has no derivatives: leave out verbose.")
        if mesh is None and row_sharding(X) is None:
            mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("rows",))
        return fit_em_sharded_checkpointed(
            key, X, num_components, options, sample_weight, mesh, data_axis, checkpoint, checkpoint_every, resume
        )
    if mesh is not None or row_sharding(X) is not None:
        if verbose:
            raise ValueError("verbose progress is not available for a sharded fit (mesh= or row-sharded X).")
        return fit_em_sharded(key, X, num_components, options, sample_weight, mesh, data_axis, differentiation)
    inputs = check_fit_inputs(key, X, num_components, options, sample_weight, marginalizes=True)
    inputs, missing_tiers = _prepare_missing(inputs)
    if inputs.options.prior is not None:  # the prior's leaves in the data's dtype: one compiled fit for all
        prior = check_prior(inputs.options.prior, inputs.options.covariance_type, inputs.X.shape[1], inputs.X.dtype)
        inputs = inputs._replace(options=inputs.options.replace(prior=prior))
    report_every = check_verbose(verbose, verbose_interval, inputs.key, inputs.X)
    if report_every and differentiation == "unrolled":
        raise ValueError(
            "verbose progress is reported from the EM while loop; differentiation='unrolled' runs "
            "a scan instead: use verbose=False or differentiation='implicit'."
        )
    return call_compiled(
        _fit_em_for_size,
        inputs,
        num_components=int(num_components),
        report_every=report_every,
        differentiation=differentiation,
        missing_tiers=missing_tiers,
        work_per_row=1 if missing_tiers is None else MISSING_WORK_PER_ROW,
    )


def _prepare_missing(inputs):
    """``(inputs, missing_tiers)`` for ``missing="marginalize"``: concrete data gets its rows
    sorted by number of missing entries, rows with every entry missing weight zero (with a
    warning) and the tiers of :mod:`gmmjax._missing`; data without NaN runs today's
    complete-data fit (``missing`` reset to ``"raise"``), traced data the tiers up to ``D``."""
    if inputs.options.missing != "marginalize" or is_traced(inputs.X):
        return inputs, None
    weight = None if inputs.sample_weight is None else np.asarray(inputs.sample_weight)
    layout = MissingLayout(np.asarray(inputs.X), weight)
    if layout.tiers == (0,) and not layout.num_all_missing:
        return inputs._replace(options=inputs.options.replace(missing="raise")), None
    sample_weight = None if layout.sample_weight is None else jnp.asarray(layout.sample_weight, inputs.X.dtype)
    return inputs._replace(X=jnp.asarray(layout.X), sample_weight=sample_weight), layout.tiers
