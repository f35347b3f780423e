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
completed residual ``ê = r̃ − Eᵀ Λ_MM⁻¹ b`` and second moments ``ê êᵀ + (C⁻¹E)ᵀ(C⁻¹E)``, so
the M-step is unchanged (:func:`gmmjax._stats.m_step_with_diagnostics`), EM is exact and the
observed-data log-likelihood never decreases. Both parts are batched matrix products: the
completed residual and the ``|M|`` rows of ``C⁻¹E`` are ``1 + m`` "residual" rows per sample,
scattered by the same batched GEMM as complete data (:meth:`CovarianceKind.scatter`).

**Why a masked formulation, not groups of rows by missingness pattern.** With entries
missing at random, the number of patterns grows as ``2^D``: at 20% missing of ``D = 16``
(W2) nearly every row of 200,000 has its own pattern, so grouping saves nothing and
needs a host-side regrouping. Instead each row carries the indices of its first ``m``
missing features (padded; padded slots hold an identity block and contribute nothing), and
the small ``(m, m)`` factorisations run batched over ``(K, chunk)``. Their cost grows as
``m³``, so ``m`` is chosen per chunk among a few static *tiers* (``lax.switch``): with the
rows sorted by their number of missing entries on the host (the fit does it; EM does not
depend on the row order) most chunks take a small tier. ``benchmarks/MISSING.md`` has
the measured times. Memory is bounded by the chunk: ``O(chunk · K · (D + m²))``.

Every covariance type goes through dense ``(K, D, D)`` precisions (diagonal ones are
diagonal matrices) for the E-step, and its own scatter and M-step for the statistics.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._chunks import map_over_chunks, resolve_chunk_size, sum_over_chunks
from gmmjax._covariance import covariance_kind
from gmmjax._density import component_terms
from gmmjax._params import GMMParams
from gmmjax._stats import SufficientStats, _weighted_posteriors, m_step_with_diagnostics, uniform_branch

MISSING_MODES = ("raise", "marginalize")

# Numbers of missing entries per row that a chunk's factorisations are padded to (static
# shapes); a chunk takes the smallest tier that covers its rows. Beyond the last, D.
_TIERS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


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


def _chunk_terms(terms, X_chunk: jax.Array, m: int):
    """The per-row quantities of one chunk with at most ``m`` missing entries per row (rows
    with every entry missing excepted: they are marked, see below).

    Returns:
      ``(log_joint (K, c), completed (K, c, D), spread (K, c, m, D), all_missing (c,))``:
      ``log w_k + log N(x_O | k)``, the completed residual ``E[x | x_O, k] − μ_k`` and the rows
      of ``C⁻¹E`` (conditional covariance ``spreadᵀ spread``). For a row with every entry
      missing, ``log_joint = log w_k`` and ``completed = 0`` (its ``spread`` is meaningless:
      such rows carry zero weight in a fit).
    """
    means, prec_chol, precision, log_scale = terms
    K, D = means.shape
    observed = ~jnp.isnan(X_chunk)
    all_missing = ~jnp.any(observed, axis=1)
    observed = observed | all_missing[:, None]  # treated as observed zeros, then overridden
    filled = jnp.where(observed, X_chunk, 0.0)
    residual = (filled[None, :, :] - means[:, None, :]) * observed[None].astype(filled.dtype)
    residual = jnp.where(all_missing[None, :, None], 0.0, residual)
    whitened = jnp.einsum("kcd,kde->kce", residual, prec_chol)
    squared = jnp.sum(whitened**2, axis=-1)  # r̃ᵀ Λ r̃
    num_missing = D - jnp.sum(observed, axis=1)
    log_joint = log_scale[:, None] - 0.5 * squared
    if m == 0:
        spread = jnp.zeros((K, X_chunk.shape[0], 0, D), filled.dtype)
    else:
        gradient = jnp.einsum("kce,kde->kcd", whitened, prec_chol)  # Λ r̃
        # Slot a of a row holds its a-th missing feature (no sort: a running count).
        missing = ~observed
        slot = jnp.cumsum(missing, axis=1) - 1  # (c, D)
        valid = jnp.arange(m)[None, :] < num_missing[:, None]  # (c, m)
        onehot = (missing[:, None, :] & (slot[:, None, :] == jnp.arange(m)[None, :, None])).astype(filled.dtype)
        order = jnp.sum(onehot * jnp.arange(D, dtype=filled.dtype)[None, None, :], axis=2).astype(jnp.int32)
        # Small (m, m) systems, unrolled: lists of (K, c) arrays, elementwise over the batch.
        b = [jnp.sum(gradient * onehot[None, :, a, :], axis=2) for a in range(m)]  # (Λ r̃)_M, 0 if padded
        flat = (order[:, :, None] * D + order[:, None, :]).reshape(-1)  # (c·m·m,) into Λ_k's D·D entries
        block = jnp.take(precision.reshape(K, D * D), flat, axis=1).reshape(K, -1, m, m)
        block = jnp.moveaxis(block, (2, 3), (0, 1))  # (m, m, K, c) Λ_MM
        pair = valid[:, :, None] & valid[:, None, :]  # (c, m, m)
        eye = jnp.eye(m, dtype=filled.dtype)[:, :, None, None]
        block = jnp.where(jnp.moveaxis(pair, 0, 2)[:, :, None, :], block, eye)
        chol, inv = _small_cholesky_and_inverse(block)
        u = [sum(inv[a][j] * b[j] for j in range(a + 1)) for a in range(m)]  # C⁻¹ b
        shift = [sum(inv[a][j] * u[a] for a in range(j, m)) for j in range(m)]  # C⁻ᵀ C⁻¹ b = Λ_MM⁻¹ b
        rows = [onehot[None, :, a, :] for a in range(m)]  # (1, c, D) each
        residual = residual - sum(shift[a][:, :, None] * rows[a] for a in range(m))
        spread = jnp.stack(
            [sum(inv[a][j][:, :, None] * rows[j] for j in range(a + 1)) for a in range(m)], axis=2
        )  # (K, c, m, D): C⁻¹ E
        log_det_block = 2.0 * sum(jnp.log(chol[a][a]) for a in range(m))
        log_joint = log_joint + 0.5 * sum(u_a**2 for u_a in u) - 0.5 * log_det_block
    log_joint = log_joint + 0.5 * num_missing[None, :] * math.log(2.0 * math.pi)
    return log_joint, residual, spread, all_missing


def _small_cholesky_and_inverse(block: jax.Array):
    """Cholesky factors ``C`` and their inverses ``C⁻¹`` of a batch of small SPD matrices stored
    as ``(m, m, *batch)``: ``(C, C⁻¹)``, each as nested lists ``[i][j]`` of batch arrays.

    Unrolled over the ``m²`` entries, each step elementwise over the whole batch: for the
    small ``m`` of missing entries per row this vectorises across the ``(K, chunk)`` batch,
    where batched LAPACK calls (``jnp.linalg.cholesky``, ``solve_triangular``) run one
    ``(m, m)`` matrix at a time: the whole missing-data EM step was 2.1× slower with them
    (20k × 16, K=16, 20% missing, 2-core CPU under load).
    """
    m = block.shape[0]
    chol: list[list] = [[None] * m for _ in range(m)]
    for j in range(m):
        diagonal = block[j, j] - sum((chol[j][p] ** 2 for p in range(j)), jnp.zeros_like(block[j, j]))
        chol[j][j] = jnp.sqrt(diagonal)
        for i in range(j + 1, m):
            off = block[i, j] - sum((chol[i][p] * chol[j][p] for p in range(j)), jnp.zeros_like(block[i, j]))
            chol[i][j] = off / chol[j][j]
    inverse: list[list] = [[jnp.zeros_like(block[0, 0])] * m for _ in range(m)]
    for i in range(m):
        inverse[i][i] = 1.0 / chol[i][i]
        for j in range(i):
            total = sum((chol[i][p] * inverse[p][j] for p in range(j, i)), jnp.zeros_like(block[0, 0]))
            inverse[i][j] = -total / chol[i][i]
    return chol, inverse


def _chunk_tier(X_chunk: jax.Array, tiers: tuple[int, ...]) -> jax.Array:
    """Index of the smallest tier covering every row of the chunk (rows all missing ignored)."""
    observed = ~jnp.isnan(X_chunk)
    count = X_chunk.shape[1] - jnp.sum(observed, axis=1)
    count = jnp.where(jnp.any(observed, axis=1), count, 0)
    index = jnp.sum(jnp.max(count) > jnp.asarray(tiers)).astype(jnp.int32)
    return uniform_branch(jnp.minimum(index, len(tiers) - 1))


def _log_joint_chunk(params: GMMParams, terms, X_chunk, m: int):
    log_joint, completed, spread, all_missing = _chunk_terms(terms, X_chunk, m)
    return jnp.where(all_missing[None, :], jnp.log(params.weights)[:, None], log_joint), completed, spread


def e_step_missing(
    params: GMMParams, X: jax.Array, sample_weight: jax.Array | None, *, tiers: tuple[int, ...], chunk_size=None
):
    """E-step on data with NaN entries: expected statistics about ``params.means`` and the
    observed-data log-likelihood ``Σ_n s_n log p(x_{n,O_n})``.

    Rows with every entry missing contribute nothing (zero weight). ``tiers``: static numbers
    of missing entries a chunk is padded to (see ``gmmjax._missing.tiers_for``); every row must have at
    most ``tiers[-1]`` (or all) entries missing.
    """
    K, D = params.num_components, params.num_features
    terms = _dense_terms(params)
    kind = covariance_kind(params.covariance_type)
    base = resolve_chunk_size(chunk_size, X.shape[0], K, D, X.dtype)
    chunk = min(X.shape[0], max(8, base * D // (D + tiers[-1] * (tiers[-1] + 1))))

    def branch(m, X_chunk, w_chunk):
        log_joint, completed, spread, all_missing = _chunk_terms(terms, X_chunk, m)
        w_chunk = jnp.where(all_missing, 0.0, w_chunk)
        weighted_resp, log_likelihood = _weighted_posteriors(log_joint, w_chunk, component_axis=0)
        c = X_chunk.shape[0]
        rows = jnp.concatenate([completed[:, :, None, :], spread], axis=2).reshape(K, c * (1 + m), D)
        resp_rows = jnp.repeat(weighted_resp, 1 + m, axis=1)
        stats = SufficientStats(
            counts=jnp.sum(weighted_resp, axis=1),
            first_moments=jnp.einsum("kc,kcd->kd", weighted_resp, completed),
            second_moments=kind.scatter(rows, resp_rows),
            covariance_type=params.covariance_type,
        )
        return stats, log_likelihood, jnp.sum(w_chunk)

    def chunk_stats(X_chunk, w_chunk, _):
        branches = [functools.partial(branch, m) for m in tiers]
        if len(branches) == 1:
            return branches[0](X_chunk, w_chunk)
        return jax.lax.switch(_chunk_tier(X_chunk, tiers), branches, X_chunk, w_chunk)

    return sum_over_chunks(chunk_stats, X, sample_weight, chunk)


def em_step_missing(params, X, sample_weight, reg_covar, chunk_size=None, num_active=None, *, tiers):
    """One exact EM step on data with NaN entries, in the shape of the driver's
    ``em_step_fn``: ``(new_params, collapsed, mean observed-data log-likelihood)`` (the mean
    over the weight of rows with at least one observed entry)."""
    stats, log_likelihood, weight = e_step_missing(params, X, sample_weight, tiers=tiers, chunk_size=chunk_size)
    new_params, collapsed = m_step_with_diagnostics(stats, params.means, reg_covar, num_active)
    return new_params, collapsed, log_likelihood / weight


def _map_missing(params: GMMParams, X, tiers, chunk_size, row_fn):
    """``row_fn(log_joint (K, c), completed (K, c, D))`` over the rows of ``X`` in chunks."""
    X = jnp.asarray(X, dtype=jnp.result_type(params.means.dtype, jnp.float32))
    K, D = params.num_components, params.num_features
    terms = _dense_terms(params)
    base = resolve_chunk_size(chunk_size, X.shape[0], K, D, X.dtype)
    chunk = min(X.shape[0], max(8, base * D // (D + tiers[-1] * (tiers[-1] + 1))))

    def branch(m, X_chunk):
        log_joint, completed, _ = _log_joint_chunk(params, terms, X_chunk, m)
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
    return jax.scipy.special.logsumexp(
        marginal_component_log_prob(params, X, tiers=tiers, chunk_size=chunk_size), axis=1
    )


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
