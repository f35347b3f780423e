"""Online (stepwise) EM: the E-step's statistics of each batch, mixed into running ones.

The functional pair follows optax: :func:`online_em_init` builds an :class:`OnlineEMState`
from starting parameters, :func:`online_em_update` consumes one batch and returns the new
state and the current estimate. Both are pure and work under ``jit`` and ``vmap`` (many
online models at once: vmap the state, share or batch the data).

The recursion lives in statistic space (Cappé & Moulines, 2009): with ``ŝ_t`` the E-step
statistics of batch ``t`` per unit of sample weight (:func:`gmmjax.e_step` about the current
means),

    s_t = s_{t−1} + γ_t (ŝ_t − s_{t−1}),   γ_t = (t + t0)^(−α),   t = 1, 2, ...

and the parameters are the M-step of ``s_t`` (:func:`gmmjax.m_step`). As everywhere in the
core, the statistics are moments about a per-component shift: the current means. When the
M-step moves the means, the running statistics are moved to the new shift exactly, in closed
form (``recenter_stats``), so the next batch's statistics (about the new means) and the
running ones are always about the same centres and mix without the cancellation of
``E[xxᵀ] − μμᵀ``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._options import FitOptions
from gmmjax._params import GMMParams
from gmmjax._prior import require_no_prior
from gmmjax._stats import SufficientStats, e_step, m_step, total_weight

# Defaults of the step-size schedule γ_t = (t + t0)^(−α) and of the averaging, chosen by
# measurement (benchmarks/ONLINE.md: D=8, K=16 full, 10M samples in batches of 10k).
DEFAULT_ALPHA = 0.6
DEFAULT_T0 = 0.0
DEFAULT_AVERAGE_START = 100


@dataclasses.dataclass(frozen=True)
class OnlineEMState:
    """The state of an online EM fit (a pytree; ``averaging`` is static metadata).

    Attributes:
      params: :class:`GMMParams` of the current iterate, the M-step of ``stats``: the next
        batch's E-step runs with them, and their means are the shift of both statistics.
      stats: :class:`SufficientStats` ``s_t`` per unit of sample weight (``counts`` sums to
        one), about ``params.means``.
      average_stats: the Polyak–Ruppert average of ``s_t`` over the updates after
        ``average_start`` (equal to ``stats`` until then), about ``params.means``.
      step: ``()`` int32, updates applied (batches of zero total weight are not counted).
      log_likelihood: ``()`` mean log-likelihood of the last batch under the parameters
        *before* that update (a held-out estimate of the fit's progress; −∞ before the first).
      skipped: ``()`` int32, batches left out because their statistics were not finite (NaN
        or inf in the data): traced code cannot raise, so the state says so instead.
      alpha: ``()`` step-size exponent ``α`` in ``(0.5, 1]``.
      t0: ``()`` step-size offset ``t0 ≥ 0`` (``γ_1 = (1 + t0)^(−α)``; 0: the first batch
        replaces the starting statistics, as one EM step from ``params``).
      reg_covar: ``()`` value added to the covariance diagonals by every M-step.
      average_start: ``()`` int32, updates before the average starts.
      averaging: static; whether :func:`online_em_update` returns the parameters of
        ``average_stats`` (Polyak averaging) or those of ``stats``.
    """

    params: GMMParams
    stats: SufficientStats
    average_stats: SufficientStats
    step: jax.Array
    log_likelihood: jax.Array
    skipped: jax.Array
    alpha: jax.Array
    t0: jax.Array
    reg_covar: jax.Array
    average_start: jax.Array
    averaging: bool = True

    def estimate(self) -> GMMParams:
        """The parameters the fit reports: the M-step of ``average_stats`` with averaging,
        else ``params``."""
        if not self.averaging:
            return self.params
        return m_step(self.average_stats, self.params.means, self.reg_covar)


jax.tree_util.register_dataclass(
    OnlineEMState,
    data_fields=[
        "params",
        "stats",
        "average_stats",
        "step",
        "log_likelihood",
        "skipped",
        "alpha",
        "t0",
        "reg_covar",
        "average_start",
    ],
    meta_fields=["averaging"],
)


def recenter_stats(stats: SufficientStats, old_shift: jax.Array, new_shift: jax.Array) -> SufficientStats:
    """The same statistics about ``new_shift`` ``(K, D)`` instead of ``old_shift`` ``(K, D)``.

    Exact (closed form): with ``δ = new − old``, ``Σ r (x − new) = Σ r (x − old) − n δ`` and
    ``Σ r (x − new)(x − new)ᵀ = S − F δᵀ − δ Fᵀ + n δ δᵀ`` (its diagonal for diag/spherical),
    where ``n``, ``F``, ``S`` are the counts and first and second moments about ``old``.
    """
    delta = new_shift - old_shift
    counts, first = stats.counts, stats.first_moments
    if covariance_kind(stats.covariance_type).matrix:
        cross = first[:, :, None] * delta[:, None, :]
        second = (
            stats.second_moments
            - cross
            - jnp.swapaxes(cross, -1, -2)
            + counts[:, None, None] * delta[:, :, None] * delta[:, None, :]
        )
    else:
        second = stats.second_moments - 2.0 * first * delta + counts[:, None] * delta * delta
    return SufficientStats(
        counts=counts,
        first_moments=first - counts[:, None] * delta,
        second_moments=second,
        covariance_type=stats.covariance_type,
    )


def stats_from_params(params: GMMParams) -> SufficientStats:
    """Statistics per unit weight about ``params.means`` whose M-step (with ``reg_covar=0``)
    gives ``params`` back: counts = weights, first moments 0, second moments weight ×
    covariance (its diagonal for diag/spherical)."""
    weights, cov = params.weights, params.covariances
    num_components, num_features = params.num_components, params.num_features
    if params.covariance_type == "full":
        second = weights[:, None, None] * cov
    elif params.covariance_type == "tied":
        second = weights[:, None, None] * cov[None]
    elif params.covariance_type == "diag":
        second = weights[:, None] * cov
    else:  # spherical
        second = weights[:, None] * jnp.broadcast_to(cov[:, None], (num_components, num_features))
    return SufficientStats(
        counts=weights,
        first_moments=jnp.zeros_like(params.means),
        second_moments=second,
        covariance_type=params.covariance_type,
    )


def _check_alpha(alpha):
    if v.is_traced(alpha):
        return alpha
    value = float(alpha)
    if not 0.5 < value <= 1.0:
        raise ValueError(
            f"alpha (the step-size exponent, γ_t = (t + t0)^-alpha) must be in (0.5, 1], got {alpha!r}: "
            f"the recursion converges only there (default {DEFAULT_ALPHA})."
        )
    return value


def online_em_init(
    params: GMMParams,
    *,
    alpha=DEFAULT_ALPHA,
    t0=DEFAULT_T0,
    reg_covar=None,
    averaging: bool = True,
    average_start=DEFAULT_AVERAGE_START,
    options: FitOptions | None = None,
) -> OnlineEMState:
    """Starts an online (stepwise) EM fit from ``params``.

    Args:
      params: starting :class:`GMMParams` (e.g. from :func:`gmmjax.fit_em` with
        ``max_iter=0`` on a first batch, which is what the estimator's ``partial_fit`` does).
      alpha: step-size exponent ``α ∈ (0.5, 1]`` of ``γ_t = (t + t0)^(−α)`` (default 0.6).
      t0: step-size offset ``≥ 0`` (default 0: ``γ_1 = 1``, the first batch's statistics
        replace the starting ones, so the first update is one EM step on that batch).
      reg_covar: value added to the covariance diagonals by every M-step (``None``: that of
        ``options``, default ``FitOptions().reg_covar``, 1e-6).
      averaging: report the M-step of the Polyak–Ruppert average of the statistics after
        ``average_start`` updates (default ``True``). The *statistics* are averaged, not the
        parameters: the recursion is linear in them, an average of statistics is a valid
        statistic (its M-step gives positive definite covariances and normalised weights),
        and the covariances it gives are about the averaged means rather than an average
        of covariances about means that have moved.
      average_start: updates before the average starts (default 100): the early iterates,
        far from the optimum, are left out of it.
      options: optional :class:`~gmmjax.FitOptions` to take ``reg_covar`` from.

    Returns:
      :class:`OnlineEMState` (statistics from ``params`` by ``stats_from_params``).

    Example:
      >>> import jax, gmmjax as gj
      >>> X = jax.random.normal(jax.random.key(0), (200, 2))
      >>> state = gj.online_em_init(gj.fit_em(jax.random.key(1), X, 2, max_iter=0).params)
      >>> state, params = jax.jit(gj.online_em_update)(state, X)
      >>> int(state.step)
      1
    """
    if not isinstance(params, GMMParams):
        raise TypeError(f"params must be a gmmjax.GMMParams, got {type(params).__name__}.")
    if not isinstance(averaging, bool):
        raise ValueError(f"averaging must be True or False, got {averaging!r}.")
    if options is not None:
        require_no_prior(options.prior, "online EM")
    if reg_covar is None:
        reg_covar = (options or FitOptions()).reg_covar
    reg_covar = v.check_nonnegative_float("reg_covar", reg_covar)
    alpha = _check_alpha(alpha)
    if not v.is_traced(t0):
        t0 = v.check_nonnegative_float("t0", t0)
    if not v.is_traced(average_start):
        average_start = v.check_int("average_start", average_start, 0)
    dtype = params.dtype
    stats = stats_from_params(params)
    return OnlineEMState(
        params=params,
        stats=stats,
        average_stats=stats,
        step=jnp.zeros((), jnp.int32),
        log_likelihood=jnp.full((), -jnp.inf, dtype),
        skipped=jnp.zeros((), jnp.int32),
        alpha=jnp.asarray(alpha, dtype),
        t0=jnp.asarray(t0, dtype),
        reg_covar=jnp.asarray(reg_covar, dtype),
        average_start=jnp.asarray(average_start, jnp.int32),
        averaging=averaging,
    )


def step_size(state: OnlineEMState, step: jax.Array) -> jax.Array:
    """``γ_t = (t + t0)^(−α)`` for update ``t`` (1 for the first update with ``t0 = 0``)."""
    return (step.astype(state.alpha.dtype) + state.t0) ** (-state.alpha)


def _mix(old: SufficientStats, new: SufficientStats, weight) -> SufficientStats:
    return jax.tree_util.tree_map(lambda a, b: a + weight * (b - a), old, new)


def online_em_update(
    state: OnlineEMState, X_batch: jax.Array, sample_weight: jax.Array | None = None, *, chunk_size: int | None = None
) -> tuple[OnlineEMState, GMMParams]:
    """One stepwise EM update on a batch: ``s ← s + γ_t (ŝ(batch) − s)``, then an M-step.

    ``ŝ(batch)`` is :func:`gmmjax.e_step` about the current means, divided by the batch's
    total weight; the M-step is :func:`gmmjax.m_step`; both statistics (running and
    averaged) are then moved exactly to the new means (``recenter_stats``). A batch of
    total weight zero changes nothing (the step is not counted); nor does a batch whose
    statistics are not finite (NaN or inf in it), which is counted in ``state.skipped``.

    Args:
      state: :class:`OnlineEMState`.
      X_batch: ``(B, D)`` batch (the batch size may change between calls; each new size
        compiles anew under ``jit``).
      sample_weight: optional ``(B,)`` non-negative weights.
      chunk_size: rows per chunk of the E-step (static; ``None``: automatic).

    Returns:
      ``(new_state, params)``: ``params`` is the current estimate
      (:meth:`gmmjax.OnlineEMState.estimate`: the averaged one with ``averaging``).
    """
    params = state.params
    X_batch = jnp.asarray(X_batch)
    sample_weight = None if sample_weight is None else jnp.asarray(sample_weight)
    if X_batch.ndim != 2 or X_batch.shape[1] != params.num_features:
        raise ValueError(
            f"X_batch must be 2-D with {params.num_features} features (as the state's parameters), "
            f"got shape {tuple(X_batch.shape)}."
        )
    if sample_weight is not None and sample_weight.shape != X_batch.shape[:1]:
        raise ValueError(
            f"sample_weight must have shape ({X_batch.shape[0]},) like X_batch's rows, "
            f"got {tuple(sample_weight.shape)}."
        )
    X_batch = X_batch.astype(params.dtype)
    batch_stats, log_likelihood = e_step(params, X_batch, sample_weight, chunk_size=chunk_size)
    weight = total_weight(X_batch, sample_weight)
    finite = jnp.isfinite(log_likelihood) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(batch_stats)])
    )
    has_weight = (weight > 0) & finite
    # A skipped batch's statistics are replaced by the running ones (0 · NaN would be NaN).
    batch_stats = jax.tree_util.tree_map(
        lambda leaf, old: jnp.where(has_weight, leaf / jnp.where(has_weight, weight, 1.0), old),
        batch_stats,
        state.stats,
    )
    step = state.step + has_weight.astype(jnp.int32)
    gamma = jnp.where(has_weight, step_size(state, step), 0.0)
    stats = _mix(state.stats, batch_stats, gamma)
    # The average covers the iterates after average_start; until then it follows them.
    averaged = jnp.maximum(step - state.average_start, 1).astype(gamma.dtype)
    average_stats = _mix(state.average_stats, stats, jnp.where(has_weight, 1.0 / averaged, 0.0))
    new_params = m_step(stats, params.means, state.reg_covar)
    shift = jnp.where(has_weight, new_params.means, params.means)
    new_params = jax.tree_util.tree_map(lambda a, b: jnp.where(has_weight, a, b), new_params, params)
    new_state = dataclasses.replace(
        state,
        params=new_params,
        stats=recenter_stats(stats, params.means, shift),
        average_stats=recenter_stats(average_stats, params.means, shift),
        step=step,
        skipped=state.skipped + (~finite).astype(jnp.int32),
        log_likelihood=jnp.where(has_weight, log_likelihood / jnp.where(has_weight, weight, 1.0), state.log_likelihood),
    )
    return new_state, new_state.estimate()


# The estimator's partial_fit calls this (one compiled program per batch shape).
online_em_update_jit = jax.jit(online_em_update, static_argnames="chunk_size")
