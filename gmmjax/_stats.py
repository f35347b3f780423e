"""EM as a monoid of sufficient statistics: E-step → additive statistics → M-step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gmmjax._chunks import resolve_chunk_size, sum_over_chunks
from gmmjax._collectives import LOCAL, RowAxis, symmetric
from gmmjax._covariance import SMALL_FEATURES, covariance_kind, regularize_covariances, weighted_sums
from gmmjax._density import ComponentTerms, component_terms, log_joint_from_residuals, residuals_about
from gmmjax._params import GMMParams
from gmmjax._prior import log_prior, map_offsets_and_covariances


@dataclasses.dataclass(frozen=True)
class SufficientStats:
    """Weighted moments of the data about a per-component shift ``c`` (``(K, D)``).

    Statistics of different chunks, devices or hosts computed about the *same* shift are
    combined by addition (``a + b``, ``jax.lax.psum``, ``tree_map(sum)``); the M-step is a
    function of the summed statistics and the shift alone. The E-step uses the current
    means as the shift, so second moments never suffer the cancellation of ``E[xxᵀ] − μμᵀ``.

    Attributes:
      counts: ``(K,)`` ``Σ_n s_n r_nk`` (``s``: sample weights, ``r``: responsibilities).
      first_moments: ``(K, D)`` ``Σ_n s_n r_nk (x_n − c_k)``.
      second_moments: ``Σ_n s_n r_nk (x_n − c_k)(x_n − c_k)ᵀ`` as ``(K, D, D)`` for
        full/tied covariances, its diagonal ``(K, D)`` for diag/spherical.
      covariance_type: static; decides the shape of ``second_moments``.
    """

    counts: jax.Array
    first_moments: jax.Array
    second_moments: jax.Array
    covariance_type: str = "full"

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return jax.tree_util.tree_map(jnp.add, self, other)


jax.tree_util.register_dataclass(
    SufficientStats,
    data_fields=["counts", "first_moments", "second_moments"],
    meta_fields=["covariance_type"],
)


def _moments(residuals: jax.Array, weighted_resp: jax.Array, covariance_type: str) -> SufficientStats:
    """Statistics from residuals ``(K, N, D)`` and weighted responsibilities ``(K, N)``."""
    return SufficientStats(
        counts=jnp.sum(weighted_resp, axis=1),
        first_moments=weighted_sums(residuals, weighted_resp),
        second_moments=covariance_kind(covariance_type).scatter(residuals, weighted_resp),
        covariance_type=covariance_type,
    )


def _weighted_posteriors(log_joint: jax.Array, weight: jax.Array, component_axis: int):
    """Responsibilities times sample weights, and ``Σ_n s_n log p(x_n)``, from joint
    log-densities with components along ``component_axis`` (0: ``(K, c)``, 1: ``(c, K)``).

    One exponential per (sample, component): ``e = exp(log_joint − max)`` gives both the
    normaliser ``max + log Σ e`` and the responsibilities ``e / Σ e`` (the exponentials are
    the E-step's main elementwise cost once K is large).
    """
    peak = jax.lax.stop_gradient(jnp.max(log_joint, axis=component_axis, keepdims=True))
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)  # as logsumexp: a row of -inf stays -inf
    scaled = jnp.exp(log_joint - peak)
    total = jnp.sum(scaled, axis=component_axis, keepdims=True)
    row_weight = jnp.expand_dims(weight, component_axis)
    weighted_resp = scaled * (row_weight / total)
    log_norm = peak + jnp.log(total)
    # Rows of weight zero (masked rows of the last chunk) must not turn a -inf into NaN.
    log_likelihood = jnp.sum(jnp.where(row_weight > 0, row_weight * log_norm, 0.0))
    return weighted_resp, log_likelihood


def _chunk_e_step(terms: ComponentTerms, X_chunk: jax.Array, weight: jax.Array):
    """E-step on one chunk: statistics about ``terms.means`` and ``Σ_n s_n log p(x_n)``."""
    residuals = residuals_about(X_chunk, terms.means)  # (K, c, D), reused by the scatter
    log_joint = log_joint_from_residuals(terms, residuals)  # (K, c)
    weighted_resp, log_likelihood = _weighted_posteriors(log_joint, weight, component_axis=0)
    return _moments(residuals, weighted_resp, terms.covariance_type), log_likelihood


# The expanded (matrix-product) E-step is used while, for every component, the terms that
# cancel in its expanded squared norm about the pass's shift stay below _EXPANDED_LIMIT / eps
# times the norm's unit (see CovarianceKind.expanded_terms: for a diagonal precision, the
# mean within ≈ 90 of its own standard deviations of the shift in float32), so that the
# cancellation costs < _EXPANDED_LIMIT in the whitened squared norms; otherwise the exact
# residual form runs.
_EXPANDED_LIMIT = 1e-3

# The components with the largest such error are computed exactly, from explicit residuals,
# inside the expanded pass: a few tight, far-away components (a small distant cluster, a
# component collapsing on a point) do not push the whole pass onto the slow exact form. One
# tier of up to half the components (at least _EXACT_SLOTS) computed one slot at a time, each
# slot skipped by a cond when the pass does not need it, so a pass pays for the slots it
# needs: early EM iterations with K = 1024 in 128 dimensions (W8) leave ≈140 components above
# the limit; measured there (20k rows), 137 needed slots cost 245–315 ms per pass whether the
# tier holds 256 or 512 slots, against 538 ms for 128 slots as one batched (S, chunk, D) piece
# of work (two tiers of up to K/64 and K/8 batched slots before) and 2.2 s for the exact form
# of all components.
_EXACT_SLOTS = 4


def _slot_tiers(num_components: int) -> tuple[int, ...]:
    """The numbers of exactly computed components of the expanded forms, increasing."""
    return (min(max(_EXACT_SLOTS, num_components // 2), num_components - 1),)


@jax.custom_batching.custom_vmap
def uniform_branch(index: jax.Array) -> jax.Array:
    """``index`` itself; under ``vmap``, the largest index of the batch, for every lane.

    A ``lax.switch`` on a batched index runs *every* branch for every lane and selects per
    lane. Where a larger index is a more exact choice that is also correct for the lanes
    that would take a smaller one (as the E-step's forms below), taking the batch's maximum
    keeps the index unbatched, so one branch runs for the whole batch (equinox's "unvmap
    max" rule). The rule calls the function again, so nested ``vmap``s (and the vmapped
    body of :func:`gmmjax._loops.compacting_while_loop`) reduce over every batch axis.
    """
    return index


@uniform_branch.def_vmap
def _uniform_branch_vmap(axis_size, in_batched, index):
    del axis_size
    (batched,) = in_batched
    return uniform_branch(jnp.max(index) if batched else index), False


def _expanded_e_step(
    terms: ComponentTerms, center: jax.Array, expansion, exact: jax.Array, X, sample_weight, chunk, num_needed
):
    """E-step as two plain matrix products per chunk, about a shift ``g`` fixed for the pass.

    With ``x̃ = x − g``, the squared norms ``‖(x − μ_k) P_k‖² = a_k · φ(x̃) − 2 b_k · x̃ + c_k``
    (``expansion = (a, b, c, severity)``, see :meth:`CovarianceKind.expanded_terms`; ``φ`` the
    ``F`` second-order features: ``x̃²`` for diag/spherical, the upper triangle of ``x̃ x̃ᵀ``
    for full/tied) are one product of the ``(K, F + D)`` coefficients ``[a, −2b]`` with the
    chunk's features ``[φ(x̃), x̃]`` ``(c, F + D)``, and the statistics about ``g``
    (``Σ r φ(x̃)``, ``Σ r x̃``) one product of the ``(K, c)`` responsibilities with the same
    features; they are moved to the means once per pass. For full covariances this is
    ``2·N·K·(F + D)`` flops per product (``F ≈ D²/2``) in products whose inner dimension is
    ``F + D``, against ``2·N·K·D²`` in products of inner dimension ``D`` for whitening and
    scatter. Exact in exact arithmetic; in floating point
    component ``k`` loses ``eps · severity_k`` (see ``_EXPANDED_LIMIT``). The components
    ``exact`` (``(S,)`` indices) are computed from explicit residuals instead: their squared
    norms and statistics are exact, or rather the first ``num_needed`` of them (an int, may be
    traced, unbatched): each of the others is skipped (``lax.cond`` per slot, one slot at a
    time), its expanded values being accurate; their elementwise ``(c, D)`` work
    is most of a pass's cost beyond the two products when D is large (W4: 4 slots cost 45% more
    than none). Components run along the first axis: the reductions over
    them (max, sum) are then across rows of the ``(K, c)`` block, which vectorise over the
    samples (measured several times faster on the CPU than along the minor axis of ``(c, K)``).
    """
    kind = covariance_kind(terms.covariance_type)
    quadratic, linear, constant, _ = expansion
    offsets = terms.means - center[None, :]

    coefficients = jnp.concatenate(
        [jnp.broadcast_to(quadratic, (linear.shape[0], quadratic.shape[1])), -2.0 * linear], axis=1
    )

    def chunk_stats(X_chunk, w_chunk, _):
        centred = X_chunk - center[None, :]
        # One (c, F + D) array for both products: XLA's CPU dot takes a fused operand (a
        # gather feeding a transpose) off its fast path, measured 3.7× slower at W3's shape.
        features = jnp.concatenate([kind.second_order_features(centred), centred], axis=1)
        sq_norms = coefficients @ features.T + constant[:, None]  # (K, c)
        log_joint = terms.log_scale[:, None] - 0.5 * jnp.maximum(sq_norms, 0.0)
        if not exact.shape[0]:
            weighted_resp, log_likelihood = _weighted_posteriors(log_joint, w_chunk, component_axis=0)
            return jnp.sum(weighted_resp, axis=1), weighted_resp @ features, log_likelihood
        log_joint = log_joint.at[exact].set(jax.lax.map(lambda s: one_slot_log_joint(s, X_chunk, log_joint), slots))
        weighted_resp, log_likelihood = _weighted_posteriors(log_joint, w_chunk, component_axis=0)
        exact_first, exact_second = jax.lax.map(lambda s: one_slot_moments(s, X_chunk, weighted_resp), slots)
        return jnp.sum(weighted_resp, axis=1), weighted_resp @ features, log_likelihood, exact_first, exact_second

    slots = jnp.arange(exact.shape[0])

    def one_slot(s, X_chunk):
        index = exact[s][None]
        return index, residuals_about(X_chunk, terms.means[index]), kind.components(terms.prec_chol, index)

    def one_slot_log_joint(s, X_chunk, log_joint):
        def exact_row():
            index, residuals, factor = one_slot(s, X_chunk)
            return terms.log_scale[index[0]] - 0.5 * kind.whitened_squared_norms(residuals, factor)[0]

        return jax.lax.cond(s < num_needed, exact_row, lambda: log_joint[exact[s]])

    def one_slot_moments(s, X_chunk, weighted_resp):
        def exact_moments():
            index, residuals, _ = one_slot(s, X_chunk)
            moments = _moments(residuals, weighted_resp[index], terms.covariance_type)
            return moments.first_moments[0], moments.second_moments[0]

        shapes = jax.eval_shape(exact_moments)
        return jax.lax.cond(s < num_needed, exact_moments, lambda: tuple(jnp.zeros(x.shape, x.dtype) for x in shapes))

    counts, moments_about_center, log_likelihood, *exact_moments = sum_over_chunks(chunk_stats, X, sample_weight, chunk)
    num_second_order = moments_about_center.shape[1] - X.shape[1]
    second_features, first_about_center = (
        moments_about_center[:, :num_second_order],
        moments_about_center[:, num_second_order:],
    )
    first, second = moments_about_means(
        kind, counts, first_about_center, kind.moments_from_features(second_features), offsets
    )
    if exact_moments:  # the skipped slots keep their expanded statistics
        needed = slots < num_needed
        exact_first, exact_second = exact_moments
        first = first.at[exact].set(jnp.where(needed[:, None], exact_first, first[exact]))
        second = second.at[exact].set(
            jnp.where(needed.reshape((-1,) + (1,) * (second.ndim - 1)), exact_second, second[exact])
        )
    stats = SufficientStats(
        counts=counts,
        first_moments=first,
        second_moments=second,
        covariance_type=terms.covariance_type,
    )
    return stats, log_likelihood


def moments_about_means(kind, counts, first_about_center, second_about_center, offsets):
    """``(first, second)`` moments about the means from moments about a shift ``g``
    (``offsets = μ − g`` ``(K, D)``; ``counts`` ``(K,)``, ``first_about_center`` ``(K, D)``,
    ``second_about_center`` in the statistics' shape, ``(K, D, D)`` or ``(K, D)``): the move
    of the expanded E-step, once per pass."""
    first = first_about_center - counts[:, None] * offsets
    second = (
        second_about_center
        - kind.outer(offsets, first_about_center)
        - kind.outer(first_about_center, offsets)
        + counts.reshape(counts.shape + (1,) * (second_about_center.ndim - 1)) * kind.outer(offsets, offsets)
    )
    return first, second


def e_step(params: GMMParams, X: jax.Array, sample_weight: jax.Array | None = None, *, chunk_size: int | None = None):
    """E-step: statistics about ``params.means`` and the total log-likelihood.

    The data is visited ``chunk_size`` rows at a time inside one compiled loop, so the
    memory used is ``O(chunk_size · K · D + K · D²)`` beyond the data itself; the result
    does not depend on the chunk size (up to floating-point summation order).

    Every covariance type uses two plain matrix products per chunk about the weighted
    mean of the means (see ``_expanded_e_step``), computing the components whose expanded form
    would cancel too many digits (up to half of them) exactly from residuals, while that form is
    accurate for all others (for diagonal precisions: each mean within ≈90 of its own
    standard deviations of the shift in float32); otherwise the exact residual form runs for
    all: whitened explicit residuals ``x − μ_k`` (one batched matrix product per chunk) and
    their scatter (another). The form is chosen per pass with ``lax.switch``; under ``vmap``
    one form runs for the whole batch: the most exact one any lane needs (see
    ``uniform_branch``). Full and tied covariances with at most ``SMALL_FEATURES`` features
    always use the residual form.

    Args:
      params: current parameters.
      X: ``(N, D)`` data (a chunk is fine: results add up across chunks).
      sample_weight: optional ``(N,)`` non-negative weights (default: ones).
      chunk_size: rows per chunk; ``None`` picks one automatically
        (see :func:`gmmjax._chunks.auto_chunk_size`).

    Returns:
      ``(stats, log_likelihood)``: :class:`SufficientStats` about ``params.means`` and the
      scalar ``Σ_n s_n log p(x_n)``.
    """
    terms = component_terms(params)
    chunk = resolve_chunk_size(chunk_size, X.shape[0], params.num_components, params.num_features, X.dtype)

    def residual_pass():
        return sum_over_chunks(
            lambda X_chunk, w_chunk, _: _chunk_e_step(terms, X_chunk, w_chunk), X, sample_weight, chunk
        )

    num_components, num_features = params.num_components, params.num_features
    kind = covariance_kind(params.covariance_type)
    if kind.matrix and num_features <= SMALL_FEATURES:  # the fused feature-by-feature form is faster
        return residual_pass()
    branch, center, expansion, worst_components, num_inexact = _e_step_form(params, terms, X.dtype)
    num_second_order = num_features * (num_features + 1) // 2 if kind.matrix else num_features

    def expanded(exact):
        # Temporaries (c, F + D + K + D) rather than (K, c, D): the same memory holds more rows.
        width = num_second_order + num_features + num_components + num_features * min(1, exact.shape[0])
        wide_chunk = min(X.shape[0], chunk * max(1, num_components * num_features // width))
        return lambda: _expanded_e_step(terms, center, expansion, exact, X, sample_weight, wide_chunk, num_inexact)

    # A slot tier computes only the slots it needs (one at a time): a pass with one tight
    # component (a collapsing one) pays for one.
    forms = [expanded(worst_components[:slots]) for slots in (0, *_slot_tiers(num_components))]
    return jax.lax.switch(branch, [*forms, residual_pass])


def _e_step_form(params: GMMParams, terms: ComponentTerms, dtype):
    """Which form the E-step runs for the data type ``dtype``: ``(branch, center, expansion,
    worst_components, num_inexact)`` (``num_inexact``: how many components the expanded form
    is not accurate for, the batch's maximum under ``vmap``). ``branch`` 0: the expanded form
    is accurate for every component; ``t`` (1 ≤ t ≤ T, the tiers of :func:`_slot_tiers`): for
    all but the worst, of which it computes the ``tiers[t − 1]`` first of ``worst_components``
    exactly (only the ``num_inexact`` it needs); ``T + 1``: the exact
    residual form for all. Under ``vmap`` the branch is the batch's maximum (see
    :func:`uniform_branch`)."""
    kind = covariance_kind(params.covariance_type)
    weights = params.weights / jnp.sum(params.weights)
    center = weights @ params.means
    expansion = kind.expanded_terms(terms.prec_chol, params.covariances, params.means - center[None, :])
    # A component of weight zero (inactive, see m_step) has no responsibility: no exact slot.
    severity = jnp.where(params.weights > 0, expansion[3], -jnp.inf)
    tiers = _slot_tiers(params.num_components)
    worst_components = jax.lax.top_k(severity, tiers[-1])[1]
    num_inexact = jnp.sum(severity > _EXPANDED_LIMIT / jnp.finfo(dtype).eps)
    branch = jnp.sum(num_inexact > jnp.asarray((0, *tiers))).astype(jnp.int32)
    # Under vmap, one branch for the whole batch: the most exact one any lane needs.
    return uniform_branch(branch), center, expansion, worst_components, uniform_branch(num_inexact)


def stats_from_responsibilities(
    X: jax.Array,
    resp_fn,
    shift: jax.Array,
    covariance_type: str,
    sample_weight: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    rows: RowAxis = LOCAL,
) -> SufficientStats:
    """Statistics about ``shift`` ``(K, D)`` for responsibilities given chunk by chunk.

    Args:
      X: ``(N, D)`` data.
      resp_fn: ``(X_chunk (c, D), row_offset) -> (c, K)`` responsibilities of those rows.
      shift: ``(K, D)``.
      covariance_type: the covariance type.
      sample_weight: optional ``(N,)`` weights.
      chunk_size: rows per chunk (``None``: automatic).
      rows: where the rows live (:mod:`gmmjax._collectives`); ``resp_fn`` gets global row offsets.
    """
    chunk = resolve_chunk_size(chunk_size, X.shape[0], shift.shape[0], shift.shape[1], X.dtype)
    first_row = rows.offset(X.shape[0])

    def chunk_stats(X_chunk, w_chunk, row_offset):
        weighted_resp = resp_fn(X_chunk, first_row + row_offset).T * w_chunk[None, :]
        return _moments(residuals_about(X_chunk, shift), weighted_resp, covariance_type)

    return sum_stats(rows, sum_over_chunks(chunk_stats, X, sample_weight, chunk))[0]


def sum_stats(rows: RowAxis, stats: SufficientStats, *scalars):
    """``(stats, *scalars)`` summed over the shards of ``rows``: one all-reduce of one flat
    array, ``K·(1 + D + D(D+1)/2)`` numbers for full/tied statistics (the symmetric second
    moments as their upper triangle), ``K·(1 + 2D)`` for diag, plus the scalars. Identity on
    one device."""
    if not rows.sharded:
        return (stats, *scalars)
    matrix = covariance_kind(stats.covariance_type).matrix
    second = symmetric(stats.second_moments) if matrix else stats.second_moments
    counts, first, second, *scalars = rows.sum((stats.counts, stats.first_moments, second, *scalars))
    return (dataclasses.replace(stats, counts=counts, first_moments=first, second_moments=second), *scalars)


def active_mask(num_components: int, num_active) -> jax.Array | None:
    """``(K,)`` bool: which of ``K`` components are active when only the first ``num_active``
    are (``None``, meaning all, when ``num_active`` is ``None``)."""
    if num_active is None:
        return None
    return jnp.arange(num_components) < num_active


def _where_active(active: jax.Array, values: jax.Array) -> jax.Array:
    """``values`` ``(K, ...)`` with the rows of inactive components replaced by row 0's."""
    mask = active.reshape(active.shape + (1,) * (values.ndim - 1))
    return jnp.where(mask, values, values[:1])


def m_step_with_diagnostics(stats: SufficientStats, shift: jax.Array, reg_covar, num_active=None, prior=None):
    """M-step that also reports components that were empty or needed extra regularisation.

    With ``prior`` (a :class:`~gmmjax.ConjugatePrior`), the MAP M-step: means and
    covariances from the statistics plus the prior's pseudo-statistics (see
    :func:`gmmjax._prior.map_offsets_and_covariances`), weights as without it; not with
    ``num_active``.

    With ``num_active`` (a traced int scalar is fine), only the first ``num_active``
    components are fitted: the others get weight exactly 0 and, as finite placeholders,
    component 0's mean and covariance, so that the active components come out as an M-step
    with ``num_active`` components would give them (see :func:`m_step`).

    Returns:
      ``(params, collapsed)`` with ``collapsed`` a ``(K,)`` boolean array (never true for
      an inactive component).
    """
    dtype = stats.first_moments.dtype
    eps = jnp.finfo(dtype).eps
    total = jnp.sum(stats.counts)
    # scikit-learn's guard: every component keeps a tiny positive count, so an empty
    # component gets a near-zero weight and keeps its mean instead of dividing by zero.
    counts = stats.counts + 10 * eps
    if prior is None:
        offsets = stats.first_moments / counts[:, None]
        raw_cov = covariance_kind(stats.covariance_type).covariances_from_moments(stats.second_moments, counts, offsets)
    else:
        if num_active is not None:
            raise ValueError("a prior (MAP EM) is not supported together with num_active.")
        offsets, raw_cov = map_offsets_and_covariances(stats, counts, shift, prior)
    means = shift + offsets
    active = active_mask(stats.counts.shape[0], num_active)
    if active is not None:
        # Copies of component 0 leave the regularisation's spread (largest variance, range of
        # the means) as it is without them; a weight of exactly 0 keeps them out of E-steps.
        counts = jnp.where(active, counts, 0.0)
        means = _where_active(active, means)
        if not covariance_kind(stats.covariance_type).shared:
            raw_cov = _where_active(active, raw_cov)
    covariances, repaired = regularize_covariances(raw_cov, jnp.asarray(reg_covar, dtype), stats.covariance_type, means)
    params = GMMParams(
        weights=counts / jnp.sum(counts),
        means=means,
        covariances=covariances,
        covariance_type=stats.covariance_type,
    )
    empty = stats.counts <= eps * total
    collapsed = empty | jnp.broadcast_to(repaired, empty.shape)
    if active is not None:
        collapsed = collapsed & active
    return params, collapsed


def m_step(stats: SufficientStats, shift: jax.Array, reg_covar=1e-6, *, num_active=None, prior=None) -> GMMParams:
    """M-step: maximum-likelihood parameters from summed statistics about ``shift``.

    Args:
      stats: :class:`SufficientStats` (summed over all the data).
      shift: ``(K, D)`` the shift the statistics were accumulated about (for statistics
        from :func:`e_step`, the means of the parameters that produced them).
      reg_covar: non-negative value added to the covariance diagonals.
      num_active: optional int (may be traced) in ``1..K``: only the first ``num_active``
        components are fitted; the others get weight exactly 0 (so an E-step gives them no
        responsibility) and component 0's mean and covariance as placeholders.
      prior: optional :class:`~gmmjax.ConjugatePrior`: the MAP M-step (mclust's; the
        weights keep the maximum-likelihood update).

    Returns:
      New :class:`GMMParams`. Covariances are always positive definite (see
      ``regularize_covariances``); weights are normalised.
    """
    return m_step_with_diagnostics(stats, shift, reg_covar, num_active, prior)[0]


def em_step(
    params: GMMParams,
    X: jax.Array,
    sample_weight: jax.Array | None = None,
    reg_covar=1e-6,
    *,
    chunk_size: int | None = None,
    prior=None,
):
    """One EM iteration (E-step in chunks of ``chunk_size`` rows, see :func:`e_step`);
    with ``prior`` (a :class:`~gmmjax.ConjugatePrior`), one MAP EM iteration.

    Returns:
      ``(new_params, mean_log_likelihood)``, where the log-likelihood (per unit weight) is
      that of the *input* parameters, as scikit-learn's ``lower_bound_`` (with ``prior``:
      log-likelihood plus log-prior, per unit weight).
    """
    new_params, _, mean_ll = _em_step_with_diagnostics(params, X, sample_weight, reg_covar, chunk_size, prior=prior)
    return new_params, mean_ll


def total_weight(X: jax.Array, sample_weight: jax.Array | None) -> jax.Array:
    """``Σ_n s_n`` (``N`` without weights) in the data's dtype."""
    if sample_weight is None:
        return jnp.asarray(X.shape[0], X.dtype)
    return jnp.sum(sample_weight)


def _em_step_with_diagnostics(
    params, X, sample_weight, reg_covar, chunk_size=None, num_active=None, rows=LOCAL, prior=None
):
    stats, log_likelihood = e_step(params, X, sample_weight, chunk_size=chunk_size)
    # Sharded rows: the one all-reduce of the iteration (statistics, log-likelihood, weight).
    stats, log_likelihood, weight = sum_stats(rows, stats, log_likelihood, total_weight(X, sample_weight))
    new_params, collapsed = m_step_with_diagnostics(stats, params.means, reg_covar, num_active, prior)
    if prior is not None:  # MAP EM: the penalised objective, log-likelihood plus log-prior
        log_likelihood = log_likelihood + log_prior(params, prior)
    return new_params, collapsed, log_likelihood / weight
