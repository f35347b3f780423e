"""Fitting a mixture by gradient ascent on its log-likelihood with any optax optimizer.

The optimizer works on :class:`~gmmjax.UnconstrainedParams` in *standardised
coordinates*: each component's own whitened coordinates at the start. Component ``k``
with starting mean ``c_k`` and precision Cholesky factor ``F_k`` is fitted in
``z = (x − c_k) F_k``, where it starts as ``N(0, I)`` (mean ``0``, factor ``I``, see
:class:`Frame`). The log-likelihood is still
evaluated on the data as given: the fitted parameters are mapped to the data's
coordinates inside the objective (``μ = c + δ F⁻¹``, ``P = F T``: ``O(K·D³)``, no
factorisation or solve), so no copy of the data is made and reported log-likelihoods are
those of ``x``.

Why: Adam-like optimizers move every coordinate by about the learning rate per step,
whatever the size of its gradient, also near an optimum where the gradient is small
noise. In the data's units such a step means different things for every feature, offset
and cluster; per-feature standardisation of the data fixes the features' units but makes
tight, well-separated clusters tighter still, and a step of ``lr`` on each of the
``D(D+1)/2`` entries of the precision factor of a strongly correlated cluster changes its
whitened residuals by far more than ``lr``. In a component's own whitened coordinates a
step of ``lr`` changes its whitened residuals by ``O(lr)`` per coordinate, whatever the
data's scale, offset, correlations or separation. Measured (``benchmarks/GRADIENT.md``,
section 4: ``D = 64``, ``K = 4``, strongly correlated clusters, Adam at ``lr = 0.1`` from
the k-means start): after ten steps the mean log-likelihood drops from −143.2 to −144.6 in
these coordinates, to −250 in the data's units and to −430,909 with per-feature
standardisation; after 1000 steps the gaps to EM are 6e-6, 3e-3 and 72 (relative).

Stability (no NaN, whatever the optimizer does):

- the density comes straight from the unconstrained numbers
  (:func:`~gmmjax._unconstrained.component_terms_from_unconstrained`: no Cholesky
  factorisation or solve that could fail, ``log det`` linear in the stored numbers);
- after every step the log-diagonal of the precision factor is projected onto
  ``log P_dd ≤ −½ log(reg_covar)`` (in the data's units): every conditional variance stays
  at least ``reg_covar``, the role ``reg_covar`` plays in EM. This bounds the likelihood, so
  a component cannot collapse onto a point and drive the fit to infinity;
  components that reach the bound are reported in ``collapsed_components``;
- a step whose objective or gradient is not finite is skipped (parameters and optimizer
  state are kept) and recorded as NaN in the history, so a history without NaN means that
  every step was finite and applied.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gmmjax import _validation as v
from gmmjax._chunks import sum_over_chunks
from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._covariance import covariance_kind
from gmmjax._density import log_joint_from_residuals, residuals_about
from gmmjax._driver import FitResult, FitState, call_compiled, check_fit_inputs, compiled, initial_params, run_restarts
from gmmjax._options import FitOptions, fit_options
from gmmjax._prior import require_no_prior
from gmmjax._sharding import prepare, row_sharding, run_data_parallel
from gmmjax._stats import _weighted_posteriors, total_weight
from gmmjax._unconstrained import (
    UnconstrainedParams,
    component_terms_from_unconstrained,
    from_unconstrained,
    log_diagonal_bound,
    precision_cholesky_from_unconstrained,
    raw_log_diagonal,
    to_unconstrained,
    with_raw_log_diagonal,
)

DEFAULT_LEARNING_RATE = 1e-2
DEFAULT_NUM_STEPS = 1000
# One optimizer object for the default, so that repeated fits reuse the compiled program
# (the optimizer is static configuration of the compiled fit).
DEFAULT_OPTIMIZER = optax.adam(DEFAULT_LEARNING_RATE)


# --------------------------------------------------------------------------- standardised coordinates
# (each component's own whitened coordinates at the start)


class Frame(NamedTuple):
    """Each component's own whitened coordinates at the start of a fit.

    Component ``k`` is fitted in ``z = (x − c_k) F_k`` with ``F_k`` its starting precision
    Cholesky factor, so it starts as ``N(0, I)``: mean ``0``, factor ``I``. A fitted
    ``(δ_k, T_k)`` in these coordinates is the mean ``c_k + δ_k F_k⁻¹`` and the factor
    ``F_k T_k`` in the data's (products of upper-triangular matrices stay upper
    triangular; their log-diagonals add).

    Attributes:
      center: ``(K, D)`` starting means.
      factor: ``F``: starting precision Cholesky factors (scikit-learn's shape for the type).
      inverse: ``F⁻¹`` (``1/F`` for diag and spherical).
      log_diagonal: ``log`` of ``F``'s diagonal (shaped like the stored log-diagonal).
    """

    center: jax.Array
    factor: jax.Array
    inverse: jax.Array
    log_diagonal: jax.Array


def component_frame(u: UnconstrainedParams) -> Frame:
    """The :class:`Frame` of the starting parameters ``u`` (one triangular solve per matrix, once)."""
    factor = precision_cholesky_from_unconstrained(u)
    return Frame(u.means, factor, covariance_kind(u.covariance_type).factor_inverse(factor), raw_log_diagonal(u))


def standard_start(u: UnconstrainedParams) -> UnconstrainedParams:
    """``u`` in its own :func:`component_frame`: zero means, identity factors, the same logits."""
    return u.replace(means=jnp.zeros_like(u.means), raw_precision_cholesky=jnp.zeros_like(u.raw_precision_cholesky))


def unstandardize(u: UnconstrainedParams, frame: Frame) -> UnconstrainedParams:
    """Parameters in the data's coordinates from parameters in ``frame`` (``O(K·D³)``, no solve)."""
    kind = covariance_kind(u.covariance_type)
    log_diagonal = frame.log_diagonal + raw_log_diagonal(u)
    return u.replace(
        means=kind.unstandardize_means(u.means, frame.center, frame.inverse),
        raw_precision_cholesky=kind.unstandardize_raw(u.raw_precision_cholesky, frame.factor, log_diagonal),
    )


def log_diagonal_limits(frame: Frame, reg_covar, dtype):
    """Bounds ``(low, high)`` on the log-diagonal of ``T`` (fitted factor in ``frame``).

    In the data's units ``log P_dd`` stays within ``[−B, min(B, −½ log v)]`` with
    ``v = max(reg_covar, 10·eps²/F_dd²)`` (relative to the starting conditional variance, as
    the floor of ``regularize_covariances`` when ``reg_covar`` is zero), so every conditional
    variance is at least ``reg_covar`` and the clip of :mod:`gmmjax._unconstrained` (``±B``)
    never acts during a fit.
    """
    bound = log_diagonal_bound(dtype)
    eps = jnp.finfo(dtype).eps
    variance_floor = jnp.maximum(reg_covar, 10.0 * eps**2 * jnp.exp(-2.0 * frame.log_diagonal))
    high = jnp.minimum(bound, -0.5 * jnp.log(variance_floor))
    return -bound - frame.log_diagonal, high - frame.log_diagonal


# --------------------------------------------------------------------------- objective


def _chunk_log_likelihood(u_std: UnconstrainedParams, frame, X_chunk, w_chunk):
    """``Σ_n s_n log p(x_n)`` over one chunk, from standardised parameters."""
    terms = component_terms_from_unconstrained(unstandardize(u_std, frame))
    log_joint = log_joint_from_residuals(terms, residuals_about(X_chunk, terms.means))  # (K, c)
    return _weighted_posteriors(log_joint, w_chunk, component_axis=0)[1]


def _log_likelihood_and_gradient(u_std, frame, X, weight, chunk, rows=LOCAL):
    """Weighted total log-likelihood and its gradient, summed chunk by chunk.

    Gradients add across chunks like the statistics of EM, so each chunk runs its own
    forward and backward pass and the memory stays ``O(chunk · K · D)``; sharded ``rows``:
    the value and gradient are summed over the shards by one all-reduce.
    """
    value_and_grad = jax.value_and_grad(_chunk_log_likelihood)
    return rows.sum(
        sum_over_chunks(lambda X_chunk, w_chunk, _: value_and_grad(u_std, frame, X_chunk, w_chunk), X, weight, chunk)
    )


def _log_likelihood(u_std, frame, X, weight, chunk, rows=LOCAL):
    return rows.sum(
        sum_over_chunks(
            lambda X_chunk, w_chunk, _: _chunk_log_likelihood(u_std, frame, X_chunk, w_chunk), X, weight, chunk
        )
    )


def _optimized_coordinates(u: UnconstrainedParams):
    """``(pack, unpack)``: the coordinates the optimizer sees, and back.

    Full and tied factors are stored as ``(…, D, D)`` arrays whose strictly lower triangle
    is ignored; its gradient is always zero, and such dead coordinates break derivatives
    *through* the fit (Adam's ``√ν`` at ``ν = 0`` has an infinite derivative: 0·∞ = NaN in,
    e.g., the gradient with respect to ``sample_weight``). The optimizer therefore sees only
    the used entries (:meth:`~gmmjax._covariance.CovarianceKind.pack_raw`); the fit itself is
    unchanged.
    """
    kind, num_features = covariance_kind(u.covariance_type), u.num_features

    def pack(tree):
        return tree.replace(raw_precision_cholesky=kind.pack_raw(tree.raw_precision_cholesky))

    def unpack(tree):
        return tree.replace(raw_precision_cholesky=kind.unpack_raw(tree.raw_precision_cholesky, num_features))

    return pack, unpack


class _StepCarry(NamedTuple):
    """The carry of the gradient fit's scan."""

    coordinates: UnconstrainedParams  # the optimizer's (packed) coordinates
    opt_state: Any
    converged: jax.Array  # () bool: tol met (stops updating)
    n_iter: jax.Array  # () int32: steps taken
    previous: jax.Array  # () the mean log-likelihood before the last step
    collapsed: jax.Array  # (K,) bool


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


# --------------------------------------------------------------------------- the loop


def run_gradient(
    u_std: UnconstrainedParams,
    frame: Frame,
    X,
    sample_weight,
    key,
    *,
    optimizer,
    num_steps: int,
    batch_size: int | None,
    tol,
    reg_covar,
    chunk_size: int,
    collapsed=None,
    rows: RowAxis = LOCAL,
) -> FitState:
    """``num_steps`` optimizer steps from parameters in ``frame``, as one ``lax.scan``.

    Each step evaluates the weighted mean log-likelihood (of all the data, or of
    ``batch_size`` rows drawn uniformly with replacement with a key folded from ``key`` and
    the step number) and its gradient, applies the optimizer's update (ascent), projects
    the precision log-diagonal onto :func:`log_diagonal_limits`, and records the mean
    log-likelihood of the parameters before the update (NaN for a skipped, non-finite
    step). With ``tol`` (not ``None``) a fit stops updating once two consecutive values
    differ by less than ``tol``.

    Returns:
      :class:`~gmmjax._driver.FitState` with the parameters in the data's units; as ``lower_bound`` the mean
      log-likelihood before the last step (as EM's: the parameters before the last update;
      with minibatches, that of the final parameters on all the data); the steps taken as
      ``n_iter``, ``converged`` (``tol`` met; always false without ``tol``), the
      ``(num_steps,)`` history (NaN after the last step) and components that started
      empty or reached the variance floor.
    """
    dtype = X.dtype
    num_samples = X.shape[0]
    if collapsed is None:
        collapsed = jnp.zeros(u_std.num_components, bool)
    low, high = log_diagonal_limits(frame, reg_covar, dtype)
    row_axis = rows  # (the name `rows` is taken below by a minibatch's drawn rows)
    full_weight = row_axis.sum(total_weight(X, sample_weight))

    pack, unpack = _optimized_coordinates(u_std)
    transformation = optax.with_extra_args_support(optimizer)

    def objective_and_gradient(u, step):
        """Mean log-likelihood, the loss gradient, and the loss as a function of the
        optimizer's coordinates on the same rows (for line searches such as L-BFGS's)."""
        if batch_size is None:
            X_rows, w_rows, chunk, weight_sum = X, sample_weight, chunk_size, full_weight
        else:
            rows = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, num_samples)
            X_rows = X[rows]
            w_rows = jnp.ones(batch_size, dtype) if sample_weight is None else sample_weight[rows]
            chunk = min(chunk_size, batch_size)
            weight_sum = jnp.maximum(jnp.sum(w_rows), jnp.finfo(dtype).tiny)  # all-zero batch: zero step
        total, gradient = _log_likelihood_and_gradient(u, frame, X_rows, w_rows, chunk, row_axis)
        # The optimizer minimises: the loss is minus the mean log-likelihood.
        loss_of = (  # noqa: E731
            lambda coordinates: (
                -_log_likelihood(unpack(coordinates), frame, X_rows, w_rows, chunk, row_axis) / weight_sum
            )
        )
        return total / weight_sum, jax.tree_util.tree_map(lambda g: -g / weight_sum, gradient), loss_of

    def take_step(carry: _StepCarry, step):
        coordinates, opt_state = carry.coordinates, carry.opt_state
        u = unpack(coordinates)
        mean_ll, loss_gradient, loss_of = objective_and_gradient(u, step)
        loss_gradient = pack(loss_gradient)
        # Optimizers that take the loss itself (optax.lbfgs's line search) get it; others
        # ignore these arguments.
        updates, new_state = transformation.update(
            loss_gradient, opt_state, coordinates, value=-mean_ll, grad=loss_gradient, value_fn=loss_of
        )
        stepped = unpack(optax.apply_updates(coordinates, updates))
        log_diagonal = raw_log_diagonal(stepped)
        hit_floor = log_diagonal > high
        new_u = with_raw_log_diagonal(stepped, jnp.clip(log_diagonal, low, high))
        finite = jnp.isfinite(mean_ll) & _all_finite(loss_gradient) & _all_finite(new_u)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
        hit = covariance_kind(u.covariance_type).per_covariance(hit_floor)  # (K,), or () tied
        collapsed = carry.collapsed | (finite & jnp.broadcast_to(hit, carry.collapsed.shape))
        converged = (jnp.abs(mean_ll - carry.previous) < tol) if tol is not None else jnp.array(False)
        recorded = jnp.where(finite, mean_ll, jnp.nan)  # NaN marks a skipped step
        return _StepCarry(
            keep(pack(new_u), coordinates), keep(new_state, opt_state), converged, carry.n_iter + 1, mean_ll, collapsed
        ), recorded

    def step_or_stop(carry: _StepCarry, step):
        return jax.lax.cond(
            carry.converged, lambda c: (c, jnp.array(jnp.nan, dtype)), lambda c: take_step(c, step), carry
        )

    initial = _StepCarry(
        pack(u_std),
        transformation.init(pack(u_std)),
        jnp.array(False),
        jnp.array(0, jnp.int32),
        jnp.array(-jnp.inf, dtype),
        collapsed,
    )
    body = step_or_stop if tol is not None else take_step
    final, history = jax.lax.scan(body, initial, jnp.arange(num_steps, dtype=jnp.int32))
    u_final, last_ll = unpack(final.coordinates), final.previous
    if batch_size is not None:  # the last batch estimate is noisy: one full pass for the result
        last_ll = _log_likelihood(u_final, frame, X, sample_weight, chunk_size) / full_weight
    return FitState(
        params=from_unconstrained(unstandardize(u_final, frame)),
        lower_bound=last_ll,
        n_iter=final.n_iter,
        converged=final.converged,
        lower_bound_history=history.astype(dtype),
        collapsed_components=final.collapsed,
    )


def _fit_gradient(
    key,
    X,
    sample_weight,
    options: FitOptions,
    tol,
    *,
    num_components,
    num_steps,
    batch_size,
    optimizer,
    has_tol,
    rows: RowAxis = LOCAL,
) -> FitResult:
    def fit_one(restart_key, _) -> FitState:
        # The same initialisation as fit_em with the same key: restart r of both starts
        # from the same parameters.
        params, collapsed = initial_params(restart_key, X, sample_weight, options, num_components, rows=rows)
        u_start = to_unconstrained(params)
        assert options.chunk_size is not None  # resolved by check_fit_inputs before the compiled fit
        return run_gradient(
            standard_start(u_start),
            component_frame(u_start),
            X,
            sample_weight,
            jax.random.fold_in(restart_key, 1),
            optimizer=optimizer,
            num_steps=num_steps,
            batch_size=batch_size,
            tol=tol if has_tol else None,
            reg_covar=options.reg_covar,
            chunk_size=options.chunk_size,
            collapsed=collapsed,
            rows=rows,
        )

    return run_restarts(key, options, fit_one)


def check_optimizer(optimizer):
    """``optimizer`` if it is an optax ``GradientTransformation`` (``init``/``update``), the default for ``None``."""
    if optimizer is None:
        return DEFAULT_OPTIMIZER
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(
            f"optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-2)) or None, got {optimizer!r}."
        )
    return optimizer


_fit_gradient_for_size = compiled(
    _fit_gradient, static_argnames=("num_components", "num_steps", "batch_size", "optimizer", "has_tol")
)


def fit_gradient(
    key: jax.Array,
    X: jax.typing.ArrayLike,
    num_components: int,
    options: FitOptions | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = DEFAULT_NUM_STEPS,
    batch_size: int | None = None,
    tol: float | None = None,
    sample_weight: jax.typing.ArrayLike | None = None,
    mesh=None,
    data_axis=None,
    **option_keywords,
) -> FitResult:
    """Fits a Gaussian mixture by maximising its mean log-likelihood with an optax optimizer.

    Each restart starts from the same initialisation as :func:`fit_em` with the same key
    and ``n_init`` (so EM and gradient fits are comparable start for start), then runs
    ``num_steps`` optimizer steps in one ``lax.scan`` on
    :class:`~gmmjax.UnconstrainedParams` in each component's own whitened coordinates at
    the start (see :mod:`gmmjax._gradient`); restarts are vmapped and the best (highest final mean
    log-likelihood) is chosen on the device. Works under ``jit`` (mark the configuration
    static: ``num_components``, ``num_steps``, ``optimizer``…), ``vmap`` (e.g. over
    equally shaped datasets) and, from a given start (all three ``*_init``; k-means is not
    differentiable), ``grad`` through the steps (memory grows with ``num_steps``).

    Args:
      key: ``jax.random`` key (initialisation and minibatches).
      X: ``(N, D)`` data; float64 is kept when ``jax_enable_x64`` is on, else float32.
      num_components: ``K``.
      optimizer: an optax ``GradientTransformation``; ``None`` means
        ``optax.adam(1e-2)``. Optimizers that need the loss itself (``optax.lbfgs()``'s line
        search: ``value``, ``grad``, ``value_fn``) get it, on the step's rows. It is static
        configuration: pass the *same* object again to reuse the compiled fit (a new
        ``optax.adam(...)`` call compiles anew).
      num_steps: optimizer steps per restart (default 1000).
      batch_size: ``None`` for full-batch steps; else rows per step, drawn uniformly with
        replacement, keyed per step inside the scan (sample weights weight the batch mean).
      options: a :class:`~gmmjax.FitOptions` (default ``FitOptions()``); its ``max_iter``,
        ``tol`` and ``lower_bound_init`` are EM's and not used here (``num_steps`` and the
        ``tol`` below are the gradient fit's). ``reg_covar``: every conditional variance stays
        at least this (see the module notes), and it regularises the initial M-step as in EM.
      tol: ``None`` (default): every restart runs all ``num_steps`` steps. Else a restart
        stops updating once two consecutive mean log-likelihoods differ by less than
        ``tol`` (with minibatches they are noisy batch estimates: use a larger ``tol``).
      sample_weight: optional ``(N,)`` non-negative weights; the objective is the weighted
        mean log-likelihood ``Σ s_n log p(x_n) / Σ s_n``.
      mesh, data_axis: full-batch steps data-parallel with the rows sharded over a mesh axis,
        as in :func:`fit_em` (also for a row-sharded ``X``): the value and gradient are summed
        by one all-reduce per step. Not with ``batch_size``.
      **option_keywords: fields of :class:`~gmmjax.FitOptions` replacing those of
        ``options``, as in :func:`fit_em`: ``n_init`` (restart ``r`` uses
        ``gj.restart_keys(key, n_init)[r]``, as EM), ``covariance_type``, ``init_params``,
        ``reg_covar``, ``weights_init``/``means_init``/``precisions_init``, ``chunk_size``,
        ``restart_batch_size``.

    Returns:
      A :class:`~gmmjax.FitResult`: ``lower_bound`` is the mean log-likelihood of the
      parameters before the last step (EM's convention; one step from the returned ones),
      or with minibatches that of the final parameters on all the data;
      ``lower_bound_history`` ``(R, num_steps)`` the mean log-likelihood (batch estimate
      with minibatches) before each step, NaN for a step skipped because its objective or
      gradient was not finite and after a restart stopped; ``n_iter`` the steps taken
      (``num_steps`` without ``tol``); ``converged`` whether ``tol`` was met (always false
      without ``tol``);
      ``collapsed_components`` components that started empty or reached the variance
      floor ``reg_covar``.

    Example (the original example's data):
      >>> import jax, numpy as np, gmmjax as gj
      >>> X = gj.generate_gmm_data(600, np.array([0.6, 0.4]), np.array([[0.0, 0.0], [3.0, 3.0]]),
      ...                          np.array([[[1.0, 0.5], [0.5, 1.0]]] * 2))
      >>> result = gj.fit_gradient(jax.random.key(0), X, 2, num_steps=200)
      >>> sorted(round(float(m)) for m in result.params.means[:, 0])
      [0, 3]
    """
    em_only = sorted({"max_iter", "num_iters", "lower_bound_init"} & set(option_keywords))
    if em_only:
        raise ValueError(
            f"{', '.join(em_only)} set EM's iterations; fit_gradient runs num_steps optimizer steps "
            "(and stops early only with its own tol): use num_steps instead."
        )
    options = fit_options(options, **option_keywords)
    require_no_prior(options.prior, "fit_gradient")
    optimizer = check_optimizer(optimizer)
    num_steps = v.check_int("num_steps", num_steps, 1)
    if batch_size is not None:
        batch_size = v.check_int("batch_size", batch_size, 1)
    has_tol = tol is not None
    tol = v.check_nonnegative_float("tol", tol) if has_tol else 0.0
    if mesh is not None or row_sharding(X) is not None:
        if batch_size is not None:
            raise ValueError("a sharded fit_gradient takes full-batch steps: leave batch_size=None.")
        key, sharded, leaves = prepare(key, X, num_components, options, sample_weight, mesh, data_axis)
        static = dict(num_steps=num_steps, batch_size=None, optimizer=optimizer, has_tol=has_tol)
        return run_data_parallel(
            _fit_gradient,
            key,
            sharded,
            leaves,
            jnp.asarray(tol, sharded.X.dtype),
            num_components=int(num_components),
            **static,
        )
    inputs = check_fit_inputs(key, X, num_components, options, sample_weight)
    return call_compiled(
        _fit_gradient_for_size,
        inputs,
        jnp.asarray(tol, inputs.X.dtype),
        num_components=int(num_components),
        num_steps=num_steps,
        batch_size=batch_size,
        optimizer=optimizer,
        has_tol=has_tol,
    )
