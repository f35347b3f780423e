"""Exact EM with missing values (``missing="marginalize"``): NaN entries are missing at random.

For a row ``x`` with observed features ``O`` and missing features ``M`` and a component with
mean ``μ``, covariance ``Σ`` and precision ``Λ = Σ⁻¹``, with ``r̃ = x − μ`` on ``O`` and ``0``
on ``M``, ``b = (Λ r̃)_M`` and the Cholesky factor ``C`` of ``Λ_MM``:

- the marginal density over ``O``:
  ``log N(x_O | μ_O, Σ_OO) = −½ (r̃ᵀΛr̃ − ‖C⁻¹b‖²) + log det P − ½ log|Λ_MM| − |O|/2 · log 2π``
  (``log|Σ_OO| = log|Σ| + log|Λ_MM|``; ``P`` the precision Cholesky factor);
- the conditional mean ``E[x_M | x_O] = μ_M − Λ_MM⁻¹ b`` and the conditional covariance
  ``Λ_MM⁻¹ = (C⁻¹E)ᵀ(C⁻¹E)`` (``E`` the ``(|M|, D)`` one-hot rows of the missing features).

The E-step's statistics are the expected complete-data statistics: first moments of the
completed residual ``ê = r̃ − Eᵀ Λ_MM⁻¹ b`` and second moments ``ê êᵀ + Eᵀ Λ_MM⁻¹ E``, so
the M-step is unchanged (:func:`gmmjax._stats.m_step_with_diagnostics`), EM is exact and the
observed-data log-likelihood never decreases.

**Two forms, as for complete data.** The fit's E-step (:func:`e_step_missing`) runs the
*expanded* form (:func:`_expanded_chunk`) about one shift per pass, the weighted mean of the
means, while that form is accurate for every component (the complete data's test,
:func:`gmmjax._stats._e_step_form`): the quadratic forms, the first and second moments are
the complete data's two products with the features ``[φ(x̃), x̃]`` of the rows with missing
entries at the shift, plus one ``(c, D) × (D, K·D)`` product for ``(Λ x̃)_M``, one
``(D, c) × (c, K·D)`` product for the cross moments of observed and completed entries, and
scatter-adds of the ``m`` and ``m(m+1)/2`` slot values; no ``(K, c, D)`` residuals. Otherwise
it runs the *residual* form (:func:`_chunk_terms`: explicit residuals about each mean,
whitened and scattered by batched products), which also serves the densities and imputations.
The statistics of the conditional covariance are scatter-adds of the entries of ``Λ_MM⁻¹``
in both forms, not products of the ``m`` rows of ``C⁻¹E`` (measured ≈3× slower).

**Slots and tiers.** Each row carries the indices of its first ``m`` missing features
(padded; padded slots hold an identity block and contribute nothing), and the small
``(m, m)`` systems run batched over ``(K, chunk)``: unrolled entry by entry up to
``_UNROLLED_SLOTS`` (≈ ``m³/2`` fused elementwise operations), swept in a loop beyond (compile
time independent of ``m``). Their cost grows as ``m³``, so ``m`` is chosen per chunk among a
few static *tiers* (``lax.switch``): with the rows sorted by their number of missing entries
on the host (the fit does it; EM does not depend on the row order) most chunks take a small
tier, and a chunk at a swept tier runs in pieces of ``_WIDE_PIECE`` rows, each at its own
tier, so that the few rows with many missing entries do not make a whole chunk pay.
Rows are not grouped by missingness pattern: patterns grow as ``2^D`` and at 20% missing of
``D = 16`` rows with 5 or more missing entries mostly have their own (the rows with up to 3 or
4 share a few thousand patterns, but a per-pattern table of ``Λ_MM⁻¹`` and ``log|Λ_MM|``
computed once per pass and gathered per row measured slower than factorising per row: the
small systems are not where the time goes, ``benchmarks/MISSING.md``). Memory is bounded by
the chunk: ``O(chunk · K · (D + m²))``.

Every covariance type goes through dense ``(K, D, D)`` precisions (diagonal ones are
diagonal matrices) for the E-step, and its own scatter and M-step for the statistics.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._chunks import map_over_chunks, resolve_chunk_size, sum_over_chunks
from gmmjax._covariance import covariance_kind
from gmmjax._density import component_terms
from gmmjax._params import GMMParams
from gmmjax._stats import (
    SufficientStats,
    _e_step_form,
    _weighted_posteriors,
    m_step_with_diagnostics,
    moments_about_means,
    uniform_branch,
)

MISSING_MODES = ("raise", "marginalize")

# The missing-data E-step's work per row in units of the complete-data one's (measured ≈5–8×
# on a 2-core CPU, 20% missing of 16 features): a fit counts as "small" for XLA's cheaper
# compile settings (gmmjax._compile) only below 1/8 of the complete-data size, since those
# settings (the classic elementwise emitter) made its iterations ≈1.35× slower at 20k × 16.
MISSING_WORK_PER_ROW = 8

# Numbers of missing entries per row that a chunk's factorisations are padded to (static
# shapes); a chunk takes the smallest tier that covers its rows. Beyond the last, D.
_TIERS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)


def check_missing(missing) -> str:
    """``missing`` if it is one of :data:`MISSING_MODES`, else a ``ValueError``."""
    if missing not in MISSING_MODES:
        raise ValueError(
            f"missing must be 'raise' (refuse NaN) or 'marginalize' (exact EM treating NaN entries "
            f"as missing at random), got {missing!r}."
        )
    return missing


def tiers_for(max_missing: int, num_features: int) -> tuple[int, ...]:
    """The static tiers ``(0, …, max_missing)`` for rows with at most ``max_missing`` missing
    entries (rows with every entry missing not counted)."""
    max_missing = min(int(max_missing), num_features)
    return tuple(t for t in _TIERS if t < max_missing) + (max_missing,)


def _dense_terms(params: GMMParams):
    """``(means, P, Λ, log_scale)``: dense precision Cholesky factors ``P`` and precisions
    ``Λ = P Pᵀ`` ``(K, D, D)`` for any covariance type, and ``log w + log det P − D/2 log 2π``."""
    K, D = params.num_components, params.num_features
    dense = covariance_kind(params.covariance_type).dense(params.covariances, K, D)
    full = GMMParams(params.weights, params.means, dense, covariance_type="full")
    terms = component_terms(full)
    prec_chol = terms.prec_chol
    return params.means, prec_chol, prec_chol @ jnp.swapaxes(prec_chol, -1, -2), terms.log_scale


def _lower_pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot pairs ``(i, j)``, ``i ≥ j``, of an ``(m, m)`` symmetric matrix, row by row: ``P = m(m+1)/2``."""
    rows, cols = np.tril_indices(m)
    return rows, cols


class _Slots(NamedTuple):
    """Where each row's missing features sit (``c`` rows, ``m`` slots, ``P = m(m+1)/2`` pairs):
    ``order`` ``(c, m)`` the ``a``-th missing feature (0 in padded slots), ``valid`` ``(c, m)``,
    ``slot`` ``(c, D)`` each missing feature's slot, ``missing`` ``(c, D)``, ``flat`` ``(c, P)``
    the flat ``(D, D)`` index ``M_i·D + M_j`` of each lower slot pair, ``pair_valid`` ``(c, P)``."""

    order: jax.Array
    valid: jax.Array
    slot: jax.Array
    missing: jax.Array
    flat: jax.Array
    pair_valid: jax.Array


def _slots(observed: jax.Array, m: int) -> _Slots:
    """The slots of rows with at most ``m`` missing entries (``observed`` ``(c, D)`` bool)."""
    D = observed.shape[1]
    missing = ~observed
    count = jnp.cumsum(missing, axis=1, dtype=jnp.int32)  # (c, D), inclusive
    valid = jnp.arange(m)[None, :] < count[:, -1:]
    # The a-th missing feature is the number of features through which fewer than a + 1 are
    # missing (no sort); padded slots point at feature 0 and are masked.
    order = jnp.sum(count[:, None, :] <= jnp.arange(m)[None, :, None], axis=2, dtype=jnp.int32)
    order = jnp.where(valid, order, 0)
    rows, cols = _lower_pairs(m)
    return _Slots(
        order, valid, jnp.clip(count - 1, 0, m - 1), missing, order[:, rows] * D + order[:, cols], valid[:, rows]
    )


def _missing_block(precision: jax.Array, slots: _Slots) -> jax.Array:
    """``Λ_MM`` ``(P, K, c)`` (lower entries) by one flat gather of the ``(K, D, D)`` precisions;
    padded slots an identity block."""
    K, D, _ = precision.shape
    rows, cols = _lower_pairs(slots.order.shape[1])
    block = jnp.moveaxis(jnp.take(precision.reshape(K, D * D), slots.flat.T, axis=1), 1, 0)
    return jnp.where(slots.pair_valid.T[:, None, :], block, jnp.asarray(rows == cols, block.dtype)[:, None, None])


# Largest number of slots whose small systems are unrolled entry by entry (≈ m³/2 elementwise
# operations, fused by XLA; compile time grows as m³); beyond, a loop of m sweeps (m³ operations).
_UNROLLED_SLOTS = 8


def _conditional_solve(block: jax.Array, t: jax.Array, slots: _Slots, m: int):
    """The small systems of every (component, row), slot axes first: ``Λ_MM`` ``block``
    ``(P, K, c)``, ``t`` ``(m, K, c)`` (0 in padded slots). Returns ``(Λ_MM⁻¹ t (m, K, c),
    Λ_MM⁻¹ (P, K, c) lower entries, 0 for padded pairs, log|Λ_MM| (K, c), tᵀ Λ_MM⁻¹ t (K, c))``."""
    rows, cols = _lower_pairs(m)
    if m > _UNROLLED_SLOTS:
        inverse, log_det_block = _swept_inverse(block, m)
        conditional = inverse[rows, cols]
        solved = jnp.einsum("abkc,bkc->akc", inverse, t)
        reduction = jnp.sum(t * solved, axis=0)
    else:
        lower = {(int(i), int(j)): block[p] for p, (i, j) in enumerate(zip(rows, cols))}
        chol, inv = _small_cholesky_and_inverse(lower, m)
        t_slots = [t[a] for a in range(m)]
        u = [sum(inv[a, j] * t_slots[j] for j in range(a + 1)) for a in range(m)]  # C⁻¹ t
        solved = jnp.stack([sum(inv[a, j] * u[a] for a in range(j, m)) for j in range(m)])  # C⁻ᵀ C⁻¹ t
        # Λ_MM⁻¹ = C⁻ᵀ C⁻¹, lower entries.
        conditional = jnp.stack([sum(inv[p, i] * inv[p, j] for p in range(i, m)) for i, j in zip(rows, cols)])
        log_det_block = 2.0 * sum(jnp.log(chol[a, a]) for a in range(m))
        reduction = sum(u_a**2 for u_a in u)
    # Padded slots (an identity block) zeroed.
    return solved, jnp.where(slots.pair_valid.T[:, None, :], conditional, 0.0), log_det_block, reduction


def _swept_inverse(block: jax.Array, m: int):
    """``(Λ_MM⁻¹ (m, m, K, c), log|Λ_MM| (K, c))`` from lower entries ``(P, K, c)``, by ``m``
    sweeps (Gauss–Jordan in place, no pivoting: the pivots of an SPD matrix are its Schur
    complements' leading entries, positive, and their logarithms sum to the log-determinant).
    A ``fori_loop`` of whole-array steps: compiles in constant time whatever ``m``."""
    rows, cols = _lower_pairs(m)
    index = np.zeros((m, m), np.int32)
    index[rows, cols] = index[cols, rows] = np.arange(len(rows))
    full = block[index]  # (m, m, K, c)
    arange = jnp.arange(m)

    def sweep(j, carry):
        a, log_det = carry
        pivot = jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(a, j, 0, False), j, 0, False)
        column = jax.lax.dynamic_index_in_dim(a, j, 1, False) / pivot[None]  # a[:, j] / p (m, K, c)
        row = jax.lax.dynamic_index_in_dim(a, j, 0, False)  # a[j, :] (m, K, c)
        is_j = arange == j
        updated = a - column[:, None] * row[None, :]
        updated = jnp.where(is_j[None, :, None, None], column[:, None], updated)  # b_ij = a_ij / p
        updated = jnp.where(is_j[:, None, None, None], (row / pivot[None])[None, :], updated)  # b_jk = a_jk / p
        updated = jnp.where((is_j[:, None] & is_j[None, :])[:, :, None, None], -1.0 / pivot[None, None], updated)
        return updated, log_det + jnp.log(pivot)

    swept, log_det = jax.lax.fori_loop(0, m, sweep, (full, jnp.zeros_like(full[0, 0])))
    return -swept, log_det


def _embed(values: jax.Array, slots: _Slots) -> jax.Array:
    """Slot values ``(m, K, c)`` placed at their missing features: ``(K, c, D)``, 0 on observed ones."""
    gathered = jnp.take_along_axis(jnp.moveaxis(values, 0, 2), slots.slot[None], axis=2)
    return jnp.where(slots.missing[None], gathered, 0.0)


# Largest number of slots for which the expanded form's cross moments embed the slot values
# by one-hot masks (:func:`_embed_one_hot`) rather than by a gather (:func:`_embed`): one
# chunk of 2472 rows, K=16, D=16, m = 1…4: 0.3–0.9 ms less of 3.4–6.1 ms; m = 5, 6 about
# even; a whole E-step at 60k rows 4% less (2-core CPU under load, interleaved).
_ONE_HOT_SLOTS = 5


def _embed_one_hot(values: jax.Array, slots: _Slots, D: int) -> jax.Array:
    """Slot values ``(m, K, c)`` placed at their missing features, features before rows:
    ``(K, D, c)``, 0 on observed ones. A sum of ``m`` selections by the slots' one-hot masks
    ``(m, D, c)`` (k-independent), elementwise along the rows: XLA's CPU gather of
    :func:`_embed` runs element by element."""
    one_hot = (slots.order.T[:, None, :] == jnp.arange(D)[None, :, None]) & slots.valid.T[:, None, :]
    embedded = jnp.where(one_hot[0][None], values[0][:, None, :], 0.0)
    for a in range(1, values.shape[0]):
        embedded = embedded + jnp.where(one_hot[a][None], values[a][:, None, :], 0.0)
    return embedded


def _chunk_terms(terms, X_chunk: jax.Array, m: int):
    """The per-row quantities of one chunk with at most ``m`` missing entries per row (rows
    with every entry missing excepted: they are marked, see below).

    Returns:
      ``(log_joint (K, c), completed (K, c, D), conditional (P, K, c), pairs (c, P), all_missing (c,))``:
      ``log w_k + log N(x_O | k)``; the completed residual ``E[x | x_O, k] − μ_k``; the
      conditional covariance ``Λ_MM⁻¹`` as its ``P = m(m+1)/2`` lower-triangle entries per
      slot pair ``(i ≥ j)`` (:func:`_lower_pairs`), 0 for padded slots; and each pair's flat
      index ``M_i·D + M_j`` into a ``(D, D)`` matrix (lower triangle: slots hold the missing
      features in increasing order), ``D·D`` (out of range) for padded pairs. For a row with
      every entry missing, ``log_joint = log w_k`` and ``completed = 0`` (its ``conditional``
      is meaningless: such rows carry zero weight in a fit).
    """
    means, prec_chol, precision, log_scale = terms
    K, D = means.shape
    c = X_chunk.shape[0]
    observed = ~jnp.isnan(X_chunk)
    all_missing = ~jnp.any(observed, axis=1)
    observed = observed | all_missing[:, None]  # treated as observed zeros, then overridden
    filled = jnp.where(observed, X_chunk, 0.0)
    residual = (filled[None, :, :] - means[:, None, :]) * observed[None].astype(filled.dtype)
    residual = jnp.where(all_missing[None, :, None], 0.0, residual)
    whitened = jnp.einsum("kcd,kde->kce", residual, prec_chol)
    squared = jnp.sum(whitened**2, axis=-1)  # r̃ᵀ Λ r̃
    num_missing = D - jnp.sum(observed, axis=1)
    log_joint = log_scale[:, None] - 0.5 * squared + 0.5 * num_missing[None, :] * math.log(2.0 * math.pi)
    if m == 0:
        return log_joint, residual, jnp.zeros((0, K, c), filled.dtype), jnp.zeros((c, 0), jnp.int32), all_missing
    gradient = jnp.einsum("kce,kde->kcd", whitened, prec_chol)  # Λ r̃ (K, c, D)
    slots = _slots(observed, m)
    b = jnp.take_along_axis(gradient, slots.order[None], axis=2)
    b = jnp.where(slots.valid.T[:, None, :], jnp.moveaxis(b, 2, 0), 0.0)  # (Λ r̃)_M (m, K, c)
    block = _missing_block(precision, slots)
    shift, conditional, log_det_block, reduction = _conditional_solve(block, b, slots, m)
    # Completed residual: r̃ − Λ_MM⁻¹ b on the missing features, read back through each
    # feature's slot (a gather per feature, not a sum over slots).
    completed = residual - _embed(shift, slots)
    log_joint = log_joint + 0.5 * reduction - 0.5 * log_det_block
    pairs = jnp.where(slots.pair_valid, slots.flat, D * D)
    return log_joint, completed, conditional, pairs, all_missing


def _small_cholesky_and_inverse(block: dict, m: int):
    """Cholesky factors ``C`` and their inverses ``C⁻¹`` of a batch of small SPD matrices given
    by their lower entries ``block[i, j]`` (``i ≥ j``, batch arrays): ``(C, C⁻¹)``, each a dict
    ``[i, j]`` (``i ≥ j``) of batch arrays.

    Unrolled over the ``m²`` entries, each step elementwise over the whole batch: for the
    small ``m`` of missing entries per row this vectorises across the ``(K, chunk)`` batch,
    where batched LAPACK calls (``jnp.linalg.cholesky``, ``solve_triangular``) run one
    ``(m, m)`` matrix at a time: the whole missing-data EM step was 2.1× slower with them
    (20k × 16, K=16, 20% missing, 2-core CPU under load).
    """
    chol: dict = {}
    for j in range(m):
        diagonal = block[j, j] - sum((chol[j, p] ** 2 for p in range(j)), jnp.zeros_like(block[j, j]))
        chol[j, j] = jnp.sqrt(diagonal)
        for i in range(j + 1, m):
            off = block[i, j] - sum((chol[i, p] * chol[j, p] for p in range(j)), jnp.zeros_like(block[i, j]))
            chol[i, j] = off / chol[j, j]
    inverse: dict = {}
    for i in range(m):
        inverse[i, i] = 1.0 / chol[i, i]
        for j in range(i):
            total = sum((chol[i, p] * inverse[p, j] for p in range(j, i)), jnp.zeros_like(chol[i, i]))
            inverse[i, j] = -total / chol[i, i]
    return chol, inverse


def _chunk_rows(base: int, num_samples: int, num_features: int, m: int) -> int:
    """Rows per chunk for at most ``m`` missing entries per row: the ``(K, c, D)`` chunk of the
    complete-data pass shrunk so that the ``(K, c, D + m(m+1)/2)`` temporaries take its room."""
    rows = base * num_features // (num_features + m * (m + 1) // 2)
    # A multiple of the wide tiers' pieces (see _tier_switch), when that large.
    return min(num_samples, max(8, rows // _WIDE_PIECE * _WIDE_PIECE if rows >= _WIDE_PIECE else rows))


# Rows per piece of a chunk whose tier needs the swept (not unrolled) small systems: the few
# rows with that many missing entries come last (sorted), and only their pieces pay for it.
_WIDE_PIECE = 64


def _tier_switch(branch, tiers: tuple[int, ...], X_chunk: jax.Array, w_chunk: jax.Array):
    """``branch(m, X_chunk, w_chunk)`` (additive statistics) at the chunk's tier ``m``; a tier
    beyond :data:`_UNROLLED_SLOTS` runs piece by piece (:data:`_WIDE_PIECE` rows), each piece
    at its own tier among that one and the largest unrolled one."""
    unrolled = [m for m in tiers if m <= _UNROLLED_SLOTS]
    c = X_chunk.shape[0]

    def wide(m, X_chunk, w_chunk):
        pieces = next(q for q in range(-(-c // _WIDE_PIECE), c + 1) if c % q == 0)
        if not unrolled or pieces == 1 or c // pieces < _WIDE_PIECE // 4:
            return branch(m, X_chunk, w_chunk)
        inner = (unrolled[-1], m)
        stats = jax.lax.map(
            lambda piece: _tier_switch(branch, inner, *piece),
            (X_chunk.reshape(pieces, c // pieces, -1), w_chunk.reshape(pieces, c // pieces)),
        )
        return jax.tree_util.tree_map(lambda leaf: jnp.sum(leaf, axis=0), stats)

    branches = [
        functools.partial(branch, m) if m <= _UNROLLED_SLOTS or len(tiers) <= 2 else functools.partial(wide, m)
        for m in tiers
    ]
    if len(branches) == 1:
        return branches[0](X_chunk, w_chunk)
    return jax.lax.switch(_chunk_tier(X_chunk, tiers), branches, X_chunk, w_chunk)


def _chunk_tier(X_chunk: jax.Array, tiers: tuple[int, ...]) -> jax.Array:
    """Index of the smallest tier covering every row of the chunk (rows all missing ignored)."""
    observed = ~jnp.isnan(X_chunk)
    count = X_chunk.shape[1] - jnp.sum(observed, axis=1)
    count = jnp.where(jnp.any(observed, axis=1), count, 0)
    index = jnp.sum(jnp.max(count) > jnp.asarray(tiers)).astype(jnp.int32)
    return uniform_branch(jnp.minimum(index, len(tiers) - 1))


def _log_joint_chunk(params: GMMParams, terms, X_chunk, m: int):
    log_joint, completed, _, _, all_missing = _chunk_terms(terms, X_chunk, m)
    return jnp.where(all_missing[None, :], jnp.log(params.weights)[:, None], log_joint), completed


def _scatter_slots(values: jax.Array, index: jax.Array, size: int) -> jax.Array:
    """``(K, size)`` sums of ``values`` ``(S, K, c)`` at the row-wise indices ``index`` ``(c, S)``;
    indices ``≥ size`` (padded slots) are dropped. One scatter-add of ``c·S`` component vectors
    into a ``(size, K)`` table: measured ≈3× faster than the batched product of the ``m`` rows of
    ``C⁻¹E`` per sample that it replaces, and a fraction of one ``(K, c, D)`` elementwise pass."""
    S, K, c = values.shape
    # Component-major updates (K, S·c): the slot and component axes swap in blocks of c.
    updates = jnp.swapaxes(values, 0, 1).reshape(K, S * c)
    return jnp.zeros((K, size), values.dtype).at[:, index.T.reshape(-1)].add(updates, mode="drop")


def _conditional_scatter(conditional, pairs, weighted_resp, m: int, D: int, matrix: bool):
    """``Σ_n r_nk S_nk`` embedded at the missing features, for symmetric slot matrices ``S``
    given by their lower entries ``conditional`` ``(P, K, c)`` at the flat indices ``pairs``
    ``(c, P)`` (see :func:`_chunk_terms`): ``(K, D, D)`` (``matrix``) or its diagonal ``(K, D)``."""
    K = weighted_resp.shape[0]
    if m == 0:
        return jnp.zeros((K, D, D) if matrix else (K, D), weighted_resp.dtype)
    values = conditional * weighted_resp[None]
    if not matrix:  # the diagonal pairs only, at their feature's index
        rows, cols = _lower_pairs(m)
        keep = np.flatnonzero(rows == cols)
        diagonal = pairs[:, keep]
        return _scatter_slots(values[keep], jnp.where(diagonal < D * D, diagonal // (D + 1), D), D)
    lower = _scatter_slots(values, pairs, D * D).reshape(K, D, D)
    return lower + jnp.swapaxes(lower, 1, 2) - lower * jnp.eye(D, dtype=lower.dtype)[None]


class _ExpandedTerms(NamedTuple):
    """Per-pass constants of the expanded missing-data E-step about the shift ``center`` ``g``
    (``(D,)``, the weighted mean of the means): ``offsets`` ``δ = μ − g`` ``(K, D)``,
    ``coefficients`` ``(K, F + D)`` and ``constant`` ``(K,)`` of the complete-data squared norm
    (:meth:`CovarianceKind.expanded_terms`), ``linear`` ``Λδ`` ``(K, D)``, the dense
    ``precision`` ``(K, D, D)``, ``log_scale`` ``(K,)``."""

    center: jax.Array
    offsets: jax.Array
    coefficients: jax.Array
    constant: jax.Array
    linear: jax.Array
    precision: jax.Array
    log_scale: jax.Array


def _expanded_chunk(kind, terms: _ExpandedTerms, X_chunk: jax.Array, w_chunk: jax.Array, m: int):
    """Statistics of one chunk about the shift ``g`` by matrix products, for rows with at most
    ``m`` missing entries: ``(counts (K,), first (K, D), second, log_likelihood, weight)``.

    With ``x̃ = x − g`` on the observed features and 0 on the missing ones (k-independent),
    ``δ = μ_k − g`` and ``t = (Λ (x̃ − δ))_M``: ``x̃ − δ`` is the residual of the row completed
    with ``g`` on ``M``, and minimising its squared norm over the ``M`` entries gives the
    marginal one, ``(x̃ − δ)ᵀΛ(x̃ − δ) − tᵀ Λ_MM⁻¹ t`` (the first term ``Q(x̃)``, the complete-data
    expanded squared norm: one product with the features ``[φ(x̃), x̃]``), and the conditional
    mean, ``ζ = −Λ_MM⁻¹ t`` on ``M`` about ``g``; ``Λ x̃`` for every component is one
    ``(c, D) × (D, K·D)`` product. The completed point about ``g`` is ``z = x̃ + ζ``, so
    ``Σ r z = Σ r x̃ + Σ r ζ`` and ``Σ r (z zᵀ + Λ_MM⁻¹) = Σ r x̃x̃ᵀ + Σ r (x̃ζᵀ + ζx̃ᵀ) + Σ r (ζζᵀ + Λ_MM⁻¹)``:
    the first terms share one product with the features (as the complete data), the cross
    terms are one ``(D, c) × (c, K·D)`` product (none for diagonal statistics: ``x̃`` and ``ζ``
    have disjoint supports), the last are scatter-adds of ``m`` and ``m(m+1)/2`` slot values.
    """
    K, D = terms.offsets.shape
    observed = ~jnp.isnan(X_chunk)
    all_missing = ~jnp.any(observed, axis=1)
    observed = observed | all_missing[:, None]  # finite placeholders; such rows weigh zero
    w_chunk = jnp.where(all_missing, 0.0, w_chunk)
    centred = jnp.where(jnp.isnan(X_chunk), 0.0, X_chunk - terms.center[None, :])  # x̃ (c, D)
    features = jnp.concatenate([kind.second_order_features(centred), centred], axis=1)
    squared = terms.coefficients @ features.T + terms.constant[:, None]  # Q(x̃) (K, c)
    num_missing = D - jnp.sum(observed, axis=1)
    log_joint = terms.log_scale[:, None] + 0.5 * num_missing[None, :] * math.log(2.0 * math.pi)
    if m == 0:
        weighted_resp, log_likelihood = _weighted_posteriors(
            log_joint - 0.5 * jnp.maximum(squared, 0.0), w_chunk, component_axis=0
        )
        moments = weighted_resp @ features
        F = moments.shape[1] - D
        return (
            jnp.sum(weighted_resp, axis=1),
            moments[:, F:],
            kind.moments_from_features(moments[:, :F]),
            log_likelihood,
            jnp.sum(w_chunk),
        )
    slots = _slots(observed, m)
    c = X_chunk.shape[0]
    # (Λ_k x̃)_M for every component: one product, then a gather of the m slots.
    applied = centred @ jnp.moveaxis(terms.precision, 0, 1).reshape(D, K * D)  # (c, K·D)
    index = jnp.arange(K, dtype=jnp.int32)[None, :, None] * D + slots.order[:, None, :]  # (c, K, m)
    applied = jnp.take_along_axis(applied, index.reshape(c, K * m), axis=1).reshape(c, K, m)
    # Slot axes first: every slot entry a contiguous (K, c) block for the unrolled algebra.
    linear = jnp.swapaxes(jnp.take(terms.linear, slots.order.T, axis=1), 0, 1)
    t = jnp.where(slots.valid.T[:, None, :], jnp.transpose(applied, (2, 1, 0)) - linear, 0.0)  # (m, K, c)
    solved, conditional, log_det_block, reduction = _conditional_solve(
        _missing_block(terms.precision, slots), t, slots, m
    )
    log_joint = log_joint - 0.5 * jnp.maximum(squared - reduction, 0.0) - 0.5 * log_det_block
    weighted_resp, log_likelihood = _weighted_posteriors(log_joint, w_chunk, component_axis=0)
    zeta = -solved  # completed missing entries about g (m, K, c); 0 in padded slots
    rows, cols = _lower_pairs(m)
    moments = weighted_resp @ features
    F = moments.shape[1] - D
    weighted_zeta = zeta * weighted_resp[None]
    products = conditional + zeta[rows] * zeta[cols]  # Λ_MM⁻¹ + ζζᵀ (lower entries)
    pairs = jnp.where(slots.pair_valid, slots.flat, D * D)
    second = kind.moments_from_features(moments[:, :F]) + _conditional_scatter(
        products, pairs, weighted_resp, m, D, kind.matrix
    )
    if kind.matrix:
        # Σ r [x̃, 1] ζᵀ in one product: the cross moments and, in the last row, Σ r ζ.
        rows_and_one = jnp.concatenate([centred, jnp.ones_like(centred[:, :1])], axis=1)
        if m <= _ONE_HOT_SLOTS:
            both = jnp.einsum("cd,kec->kde", rows_and_one, _embed_one_hot(weighted_zeta, slots, D))
        else:
            both = jnp.einsum("cd,kce->kde", rows_and_one, _embed(weighted_zeta, slots))  # (K, D + 1, D)
        cross, completed = both[:, :D], both[:, D]
        second = second + cross + jnp.swapaxes(cross, 1, 2)
    else:
        completed = _scatter_slots(weighted_zeta, jnp.where(slots.valid, slots.order, D), D)
    first = moments[:, F:] + completed
    return jnp.sum(weighted_resp, axis=1), first, second, log_likelihood, jnp.sum(w_chunk)


def _expanded_terms(params: GMMParams, dense_terms) -> tuple[jax.Array, _ExpandedTerms]:
    """``(accurate, terms)``: whether the expanded form is accurate for every component in the
    data's dtype (as for complete data, see :func:`gmmjax._stats._e_step_form`; under ``vmap``
    the batch's verdict), and its per-pass constants."""
    branch, center, expansion, *_ = _e_step_form(params, component_terms(params), params.means.dtype)
    quadratic, linear, constant, _ = expansion
    coefficients = jnp.concatenate(
        [jnp.broadcast_to(quadratic, (linear.shape[0], quadratic.shape[1])), -2.0 * linear], axis=1
    )
    means, _, precision, log_scale = dense_terms
    offsets = means - center[None, :]
    return branch == 0, _ExpandedTerms(center, offsets, coefficients, constant, linear, precision, log_scale)


def e_step_missing(
    params: GMMParams,
    X: jax.Array,
    sample_weight: jax.Array | None,
    *,
    tiers: tuple[int, ...],
    chunk_size=None,
    form: str | None = None,
):
    """E-step on data with NaN entries: expected statistics about ``params.means`` and the
    observed-data log-likelihood ``Σ_n s_n log p(x_{n,O_n})``.

    Rows with every entry missing contribute nothing (zero weight). ``tiers``: static numbers
    of missing entries a chunk is padded to (see ``gmmjax._missing.tiers_for``); every row must have at
    most ``tiers[-1]`` (or all) entries missing. Two forms, chosen per pass as for complete
    data: the expanded one (matrix products about the weighted mean of the means,
    :func:`_expanded_chunk`) while it is accurate for every component, else explicit residuals
    about each mean (:func:`_chunk_terms`). ``form`` (static, for tests): ``"expanded"`` or
    ``"residual"`` forces one.
    """
    K, D = params.num_components, params.num_features
    terms = _dense_terms(params)
    kind = covariance_kind(params.covariance_type)
    # The memory bound, not the cache-sized CPU chunk: _chunk_rows shrinks it for the wider temporaries.
    base = resolve_chunk_size(chunk_size, X.shape[0], K, D, X.dtype, cache_sized=False)
    chunk = _chunk_rows(base, X.shape[0], D, min(tiers[-1], _UNROLLED_SLOTS))

    def residual_branch(m, X_chunk, w_chunk):
        log_joint, completed, conditional, pairs, all_missing = _chunk_terms(terms, X_chunk, m)
        w_chunk = jnp.where(all_missing, 0.0, w_chunk)
        weighted_resp, log_likelihood = _weighted_posteriors(log_joint, w_chunk, component_axis=0)
        stats = SufficientStats(
            counts=jnp.sum(weighted_resp, axis=1),
            first_moments=jnp.einsum("kc,kcd->kd", weighted_resp, completed),
            second_moments=kind.scatter(completed, weighted_resp)
            + _conditional_scatter(conditional, pairs, weighted_resp, m, D, kind.matrix),
            covariance_type=params.covariance_type,
        )
        return stats, log_likelihood, jnp.sum(w_chunk)

    def over_tiers(branch):
        def chunk_stats(X_chunk, w_chunk, _):
            return _tier_switch(branch, tiers, X_chunk, w_chunk)

        return chunk_stats

    def residual_pass():
        return sum_over_chunks(over_tiers(residual_branch), X, sample_weight, chunk)

    accurate, expanded_terms = _expanded_terms(params, terms)

    def expanded_pass():
        counts, first, second, log_likelihood, weight = sum_over_chunks(
            over_tiers(lambda m, X_chunk, w_chunk: _expanded_chunk(kind, expanded_terms, X_chunk, w_chunk, m)),
            X,
            sample_weight,
            chunk,
        )
        first, second = moments_about_means(kind, counts, first, second, expanded_terms.offsets)
        return SufficientStats(counts, first, second, params.covariance_type), log_likelihood, weight

    if form == "expanded":
        return expanded_pass()
    if form == "residual":
        return residual_pass()
    return jax.lax.cond(accurate, expanded_pass, residual_pass)


def em_step_missing(params, X, sample_weight, reg_covar, chunk_size=None, num_active=None, *, tiers, form=None):
    """One exact EM step on data with NaN entries, in the shape of the driver's
    ``em_step_fn``: ``(new_params, collapsed, mean observed-data log-likelihood)`` (the mean
    over the weight of rows with at least one observed entry)."""
    stats, log_likelihood, weight = e_step_missing(
        params, X, sample_weight, tiers=tiers, chunk_size=chunk_size, form=form
    )
    new_params, collapsed = m_step_with_diagnostics(stats, params.means, reg_covar, num_active)
    return new_params, collapsed, log_likelihood / weight


def _map_missing(params: GMMParams, X, tiers, chunk_size, row_fn):
    """``row_fn(log_joint (K, c), completed (K, c, D))`` over the rows of ``X`` in chunks."""
    X = jnp.asarray(X, dtype=jnp.result_type(params.means.dtype, jnp.float32))
    K, D = params.num_components, params.num_features
    terms = _dense_terms(params)
    # The memory bound, not the cache-sized CPU chunk: _chunk_rows shrinks it for the wider temporaries.
    base = resolve_chunk_size(chunk_size, X.shape[0], K, D, X.dtype, cache_sized=False)
    chunk = _chunk_rows(base, X.shape[0], D, tiers[-1])

    def branch(m, X_chunk):
        log_joint, completed = _log_joint_chunk(params, terms, X_chunk, m)
        return row_fn(log_joint, completed)

    def rows(X_chunk):
        branches = [functools.partial(branch, m) for m in tiers]
        if len(branches) == 1:
            return branches[0](X_chunk)
        return jax.lax.switch(_chunk_tier(X_chunk, tiers), branches, X_chunk)

    return map_over_chunks(rows, X, chunk)


def marginal_component_log_prob(params: GMMParams, X, *, tiers=None, chunk_size=None) -> jax.Array:
    """``(N, K)`` ``log w_k + log N(x_{n,O_n} | μ_k, Σ_k)`` over each row's observed features
    (NaN entries missing; a row with none observed: ``log w_k``). ``tiers``: see
    ``gmmjax._missing.tiers_for`` (``None``: up to ``D``, correct for any data)."""
    tiers = tiers_for(params.num_features, params.num_features) if tiers is None else tiers
    return _map_missing(params, X, tiers, chunk_size, lambda log_joint, _: log_joint.T)


def marginal_log_prob(params: GMMParams, X, *, tiers=None, chunk_size=None) -> jax.Array:
    """Log-density of each row over its observed features, NaN entries missing:
    ``log Σ_k w_k N(x_{n,O_n} | μ_k,O, Σ_k,OO)`` ``(N,)`` (0 for a row with none observed).
    Equals :func:`gmmjax.log_prob` on rows without NaN. Works under ``jit`` and ``vmap``.

    Args:
      params: mixture parameters.
      X: ``(N, D)`` data with NaN for missing entries.
      tiers: static tiers (``gmmjax._missing.tiers_for``); ``None``: up to ``D``, correct for any row.
      chunk_size: rows per chunk (``None``: automatic).

    Example:
      >>> import jax.numpy as jnp, gmmjax as gj
      >>> p = gj.GMMParams(jnp.array([1.0]), jnp.zeros((1, 2)), jnp.eye(2)[None])
      >>> round(float(gj.marginal_log_prob(p, jnp.array([[0.0, jnp.nan]]))[0]), 4)
      -0.9189
    """
    log_density = jax.scipy.special.logsumexp(
        marginal_component_log_prob(params, X, tiers=tiers, chunk_size=chunk_size), axis=1
    )
    # A row with nothing observed has density 1 exactly (log Σ w_k would be ±eps of 0 in float32).
    return jnp.where(jnp.all(jnp.isnan(jnp.asarray(X)), axis=1), 0.0, log_density)


def impute(params: GMMParams, X, *, tiers=None, chunk_size=None) -> jax.Array:
    """``X`` ``(N, D)`` with each NaN entry replaced by its conditional mean under the mixture,
    ``E[x_M | x_O] = Σ_k p(k | x_O) (μ_k,M − (Λ_k,MM)⁻¹ (Λ_k (x − μ_k))_M)``; observed entries
    unchanged; a row with no observed entry gets the mixture's mean. ``(N, D)``; ``tiers``,
    ``chunk_size`` as in :func:`marginal_log_prob`. Works under ``jit`` and ``vmap``.

    Example:
      >>> import jax.numpy as jnp, gmmjax as gj
      >>> p = gj.GMMParams(jnp.array([1.0]), jnp.zeros((1, 2)), jnp.array([[[1.0, 0.5], [0.5, 1.0]]]))
      >>> gj.impute(p, jnp.array([[2.0, jnp.nan]])).tolist()
      [[2.0, 1.0]]
    """
    tiers = tiers_for(params.num_features, params.num_features) if tiers is None else tiers

    def row_fn(log_joint, completed):
        resp = jax.nn.softmax(log_joint, axis=0)  # (K, c)
        return jnp.einsum("kc,kcd->cd", resp, completed + params.means[:, None, :])

    X = jnp.asarray(X, dtype=jnp.result_type(params.means.dtype, jnp.float32))
    return jnp.where(jnp.isnan(X), _map_missing(params, X, tiers, chunk_size, row_fn), X)


class MissingLayout:
    """Host-side preparation of data with NaN entries for a fit (concrete arrays only).

    Attributes:
      X: the rows sorted by their number of missing entries (stable), as a NumPy array.
      sample_weight: weights in the same order (zero for rows with every entry missing), or
        ``None`` when no weights were given and no row is all missing.
      tiers: static tiers for the fit (``gmmjax._missing.tiers_for``); ``(0,)``: no NaN at all.
      num_all_missing: rows with every entry missing.
    """

    def __init__(self, X: np.ndarray, sample_weight):
        missing = np.isnan(X)
        count = missing.sum(axis=1)
        all_missing = count == X.shape[1]
        self.num_all_missing = int(all_missing.sum())
        if self.num_all_missing == X.shape[0]:
            raise ValueError("every row of X has all its features missing (NaN): there is nothing to fit.")
        count_rows = np.where(all_missing, 0, count)
        order = np.argsort(count_rows, kind="stable")
        self.tiers = tiers_for(int(count_rows.max()), X.shape[1])
        self.X = X[order]
        if sample_weight is None and self.num_all_missing == 0:
            self.sample_weight = None
        else:
            weight = np.ones(X.shape[0], X.dtype) if sample_weight is None else np.asarray(sample_weight)
            self.sample_weight = np.where(all_missing, 0, weight)[order]
        if self.num_all_missing:
            warnings.warn(
                f"{self.num_all_missing} row(s) of X have every feature missing (NaN): they get zero weight "
                "in the fit (their log-density is 0 and their responsibilities are the weights).",
                UserWarning,
                stacklevel=4,
            )


def mean_imputed(X: jax.Array, sample_weight) -> jax.Array:
    """``X`` with NaN entries replaced by the (weighted) mean of their feature's observed
    entries (0 for a feature never observed): what the seeding (k-means) sees."""
    observed = ~jnp.isnan(X)
    weight = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
    w = observed * weight[:, None]
    filled = jnp.where(observed, X, 0.0)
    mean = jnp.sum(w * filled, axis=0) / jnp.maximum(jnp.sum(w, axis=0), jnp.finfo(X.dtype).tiny)
    return jnp.where(observed, X, mean[None, :])
