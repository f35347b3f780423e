"""Initialisation in JAX (jit/vmap-compatible, no scikit-learn at run time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._chunks import resolve_chunk_size, sum_over_chunks
from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._covariance import covariance_kind, weighted_sums
from gmmjax._density import residuals_about
from gmmjax._loops import compacting_while_loop
from gmmjax._names import INIT_METHODS  # jax-free, for the command line
from gmmjax._params import GMMParams
from gmmjax._stats import active_mask, m_step_with_diagnostics, stats_from_responsibilities

# Lloyd iterations after k-means++ seeding for init_params="kmeans"; stops earlier once the
# assignment no longer changes.
KMEANS_MAX_STEPS = 30
_LLOYD_ULPS = 64

# The stream of the greedy k-means++ candidates beyond the first: ``fold_in(key, _TRIALS_STREAM)``
# then ``fold_in(·, k)`` for center ``k`` (the first candidate is the plain variant's draw).
_TRIALS_STREAM = 0x6B2B

# Seeding and Lloyd's steps run on at most max(INIT_SAMPLE_SIZE, 64·K) rows (see seeding_sample).
INIT_SAMPLE_SIZE = 2**14


def check_init_params(init_params) -> str:
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}.")
    return init_params


def _nearest_center_onehot(residuals: jax.Array, active: jax.Array | None = None) -> jax.Array:
    """``(K, c)`` one-hot of each point's nearest center, from residuals ``(K, c, D)`` about
    the centers (explicit residuals: no ``x² − 2xc + c²`` cancellation); only the centers
    that ``active`` (``(K,)`` bool, or ``None`` for all) marks are candidates."""
    squared_distances = jnp.sum(residuals * residuals, axis=-1)
    if active is not None:
        squared_distances = jnp.where(active[:, None], squared_distances, jnp.inf)
    labels = jnp.argmin(squared_distances, axis=0)
    return (labels[None, :] == jnp.arange(residuals.shape[0])[:, None]).astype(residuals.dtype)


def seeding_sample_size(num_components: int) -> int:
    return max(INIT_SAMPLE_SIZE, 64 * num_components)


def needs_seeding_sample(X, num_components: int, rows: RowAxis = LOCAL) -> bool:
    return rows.global_rows(X.shape[0]) > seeding_sample_size(num_components)


def seeding_sample(key, X, sample_weight, num_components, rows: RowAxis = LOCAL):
    """The rows that seeding and Lloyd's steps run on: all of them when ``N`` is at most
    ``max(INIT_SAMPLE_SIZE, 64·K)``, else that many rows drawn with replacement in
    proportion to the sample weights (which then become ones).

    Seeding needs ``K`` passes and every Lloyd step one pass over these rows, so a bounded
    sample keeps initialisation cheap next to EM on large data. Sharded ``rows``: the sample
    is drawn by global row index and replicated (each row sent by its shard); with weights the
    cumulative sums are added by shard, so in float32 some draws can differ from one device's.
    """
    size = seeding_sample_size(num_components)
    if not needs_seeding_sample(X, num_components, rows):
        return X, jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
    if not rows.sharded:
        if sample_weight is None:  # no (N,) temporaries for unweighted data
            index = jax.random.randint(key, (size,), 0, X.shape[0])
        else:
            index = jax.random.choice(key, X.shape[0], (size,), replace=True, p=sample_weight / jnp.sum(sample_weight))
        return X[index], jnp.ones(size, X.dtype)
    if sample_weight is None or rows.num_valid is not None:  # unweighted (padding, if any, at the end)
        num_valid = rows.num_valid or rows.global_rows(X.shape[0])
        index = jax.random.randint(key, (size,), 0, num_valid)
    else:  # jax.random.choice(replace=True, p=...) over the global rows, by shards
        p = sample_weight / rows.sum(jnp.sum(sample_weight))
        cumulative = jnp.cumsum(p) + rows.exclusive_prefix(jnp.sum(p))
        r = rows.sum(jnp.sum(p)) * (1 - jax.random.uniform(key, (size,), dtype=p.dtype))
        index = rows.sum(jnp.searchsorted(cumulative, r).astype(jnp.int32))
        index = jnp.minimum(index, rows.global_rows(X.shape[0]) - 1)
    return rows.take(X, index), jnp.ones(size, X.dtype)


def _draw_index(score: jax.Array, uniform: jax.Array, rows: RowAxis = LOCAL) -> jax.Array:
    """Index ``i`` drawn with probability ``score_i / Σ score`` (scores ``(N,)``, not all zero)
    from one uniform ``u ∈ [0, 1)``, by inverting the cumulative sum: the first ``i`` whose
    cumulative score exceeds ``u · Σ score``. A row of score zero never is that first one.
    Sharded ``rows``: the global index (cumulative sums by shard, so equal up to their rounding)."""
    if not rows.sharded:
        cumulative = jnp.cumsum(score)
        index = jnp.sum(cumulative <= uniform * cumulative[-1])
    else:
        local_total = jnp.sum(score)
        cumulative = jnp.cumsum(score) + rows.exclusive_prefix(local_total)
        index = rows.sum(jnp.sum(cumulative <= uniform * rows.sum(local_total)).astype(jnp.int32))
    # u·Σ can round up to Σ itself: then the last row with a positive score.
    last_positive = rows.last(score > 0)
    return jnp.minimum(index, last_positive)


def _ordered_bits(values: jax.Array) -> jax.Array:
    """Unsigned integers ordered as the floats ``values`` are (``-0.0`` just below ``+0.0``)."""
    unsigned = {4: jnp.uint32, 8: jnp.uint64}[values.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(values, unsigned)
    sign = jnp.array(1, unsigned) << (8 * values.dtype.itemsize - 1)
    return jnp.where(bits & sign, ~bits, bits | sign)


def _value_keys(X: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two ``(N,)`` keys that order the rows by their values, not their positions: ``X @ cos(1..D)``,
    ties broken by ``X @ sin(1..D)`` (directions with no rational linear relation, so distinct
    rows tie on both only by rounding), as ordered unsigned integers."""
    j = jnp.arange(1, X.shape[1] + 1, dtype=X.dtype)
    return _ordered_bits(X @ jnp.cos(j)), _ordered_bits(X @ jnp.sin(j))


def _draw_index_by_value(
    score: jax.Array, uniform: jax.Array, keys: tuple[jax.Array, jax.Array], rows: RowAxis = LOCAL
) -> jax.Array:
    """:func:`_draw_index` with the rows taken in the order of their value ``keys`` (see
    :func:`_value_keys`): the draw does not depend on the rows' order, and a row of integer
    weight ``m`` draws as ``m`` copies of it.

    No sort: the first key (in the order) whose cumulative score exceeds ``u · Σ score`` is found
    by bisection over the keys' bits, each step one masked sum over the rows (a sum, so a
    row-sharded caller needs one scalar all-reduce per step); first on the primary key, then on
    the secondary key among the rows that share the primary one. Sharded ``rows``: each masked
    sum is summed over the shards, and the index returned is global.
    """
    primary, secondary = keys
    bits = 8 * primary.dtype.itemsize

    def below(mask):  # a masked sum of non-negative scores is monotone in the mask, rounding included
        return rows.sum(jnp.sum(jnp.where(mask, score, 0)))

    total = below(jnp.ones_like(score, bool))
    target = uniform * total

    def smallest_key(in_prefix):
        def halve(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2
            covered = below(in_prefix(mid))
            # u·Σ can round up to Σ itself: then the whole sum counts as exceeding it.
            take = (covered > target) | (covered >= total)
            return jnp.where(take, lo, mid + 1), jnp.where(take, mid, hi)

        start = (jnp.zeros((), primary.dtype), jnp.full((), jnp.iinfo(primary.dtype).max, primary.dtype))
        return jax.lax.fori_loop(0, bits, halve, start)[1]

    first = smallest_key(lambda key: primary <= key)
    second = smallest_key(lambda key: (primary < first) | ((primary == first) & (secondary <= key)))
    return rows.first((primary == first) & (secondary == second) & (score > 0))


def default_local_trials(num_components: int) -> int:
    """scikit-learn's number of greedy k-means++ candidates per center for ``K`` centers:
    ``2 + int(log K)`` (3 for K = 3..7, 4 for 8..20, 5 for 21..54, …)."""
    return 2 + int(np.log(max(int(num_components), 1)))


def _lane_local_trials(num_active, max_trials: int) -> jax.Array:
    """``default_local_trials(num_active)`` for a traced ``num_active``, by integer comparisons
    with the smallest ``K`` of each trial count (the same numbers as NumPy's ``log``)."""
    num_active, count = jnp.asarray(num_active), jnp.asarray(2, jnp.int32)
    smallest = 1
    for trials in range(3, max_trials + 1):
        while default_local_trials(smallest) < trials:
            smallest += 1
        count = count + (num_active >= smallest).astype(jnp.int32)
    return count


def resolve_local_trials(num_components: int, n_local_trials, num_active=None):
    """``(num_trials, lane_trials)`` of the greedy k-means++ seeding: the static number of
    candidates drawn per center, and for ``n_local_trials=None`` with ``num_active`` the traced
    number of them that count (scikit-learn's default for ``K = num_active``; ``None``: all)."""
    if n_local_trials is not None:
        return check_local_trials(n_local_trials), None
    num_trials = default_local_trials(num_components)
    return num_trials, None if num_active is None else _lane_local_trials(num_active, num_trials)


def check_local_trials(n_local_trials) -> int:
    if isinstance(n_local_trials, (bool, np.bool_)) or not isinstance(n_local_trials, (int, np.integer)):
        raise ValueError(
            f"n_local_trials must be None (2 + int(log K) candidates per center, as scikit-learn) "
            f"or an integer >= 1 (1: plain k-means++), got {n_local_trials!r}."
        )
    if n_local_trials < 1:
        raise ValueError(f"n_local_trials must be at least 1 (1: plain k-means++), got {n_local_trials}.")
    return int(n_local_trials)


def _sequential_seeding(
    key,
    X,
    num_components,
    sample_weight,
    distance_weighted: bool,
    num_active=None,
    by_value: bool = False,
    rows: RowAxis = LOCAL,
    num_trials: int = 1,
    lane_trials=None,
):
    """Draws ``K`` centers from the data one at a time.

    Each next center is drawn with probability proportional to the sample weight times the
    squared distance to the nearest center so far (``distance_weighted``, k-means++) or
    times an indicator that it differs from every center so far (distinct random points).
    When every point coincides with a center (fewer distinct points than components), it
    falls back to drawing by weight alone.

    Greedy k-means++ (``num_trials > 1``, scikit-learn's ``_kmeans_plusplus``): each center
    after the first draws ``num_trials`` candidates that way and keeps the one that minimises
    the potential ``Σ w · min D²`` (the first of equal ones); with ``lane_trials`` (traced)
    only the first ``lane_trials`` candidates compete. The candidates' distances are one
    ``(num_trials, D) × (D, N)`` product about the first center (so data far from the origin
    lose no digits to it); the kept center's distances are computed exactly, so a point that
    coincides with a center has distance zero.

    Center ``k`` is drawn from uniform ``k`` of one draw of ``K`` uniforms, turned into an
    index by :func:`_draw_index` (greedy: that is its first candidate; candidates ``1…`` come
    from ``fold_in(fold_in(key, _TRIALS_STREAM), k)``, a draw of ``num_trials − 1``). With
    JAX's default counter-based generator (``jax_threefry_partitionable``) the first ``K`` of
    ``K' > K`` uniforms are those of ``K`` (and the first candidates of more those of fewer),
    so the first ``K`` centers of a seeding of ``K'`` are those of ``K`` with the same
    candidates counting (model selection relies on it). One random-number call (two when
    greedy) keeps the compiled program small: each call site of the generator is a sizeable
    kernel to compile. With ``num_active``, only the first ``num_active`` centers are drawn;
    the others repeat center 0. Sharded ``rows``: every draw is over the global rows (see
    :mod:`gmmjax._collectives`), each candidate's potential is one all-reduced row sum, and
    the centers are replicated.
    """
    uniforms = jax.random.uniform(key, (num_components,), X.dtype)
    if by_value:
        keys = _value_keys(X)
        draw_index = lambda score, uniform: _draw_index_by_value(score, uniform, keys, rows)  # noqa: E731
    else:
        draw_index = lambda score, uniform: _draw_index(score, uniform, rows)  # noqa: E731
    first = rows.take(X, draw_index(sample_weight, uniforms[0]))
    centers = jnp.broadcast_to(first[None, :], (num_components, X.shape[1]))
    min_sq = jnp.sum((X - first[None, :]) ** 2, axis=-1)
    greedy = distance_weighted and num_trials > 1
    if greedy:
        trials_key = jax.random.fold_in(key, _TRIALS_STREAM)
        about_first, first_sq = X - first[None, :], min_sq  # (N, D) and its squared norms (N,)
        counting = jnp.arange(num_trials) < (num_trials if lane_trials is None else lane_trials)

    def best_candidate(k, score, min_sq):
        """Of ``num_trials`` candidates drawn ∝ ``score``, the one of least potential."""
        more = jax.random.uniform(jax.random.fold_in(trials_key, k), (num_trials - 1,), X.dtype)
        index = jax.vmap(lambda uniform: draw_index(score, uniform))(jnp.concatenate([uniforms[k][None], more]))
        candidates = rows.take(X, index)  # (T, D)
        offsets = candidates - first[None, :]
        products = jnp.matmul(offsets, about_first.T, precision=jax.lax.Precision.HIGHEST)  # (T, N)
        squared = jnp.sum(offsets * offsets, axis=-1)[:, None] - 2 * products + first_sq[None, :]
        potential = rows.sum(jnp.minimum(jnp.maximum(squared, 0), min_sq[None, :]) @ sample_weight)
        return candidates[jnp.argmin(jnp.where(counting, potential, jnp.inf))]

    def add_center(k, carry):
        centers, min_sq = carry
        score = sample_weight * (min_sq if distance_weighted else (min_sq > 0).astype(X.dtype))
        score = jnp.where(rows.sum(jnp.sum(score)) > 0, score, sample_weight)
        if greedy:
            center = best_candidate(k, score, min_sq)
        else:
            center = rows.take(X, draw_index(score, uniforms[k]))
        new_min_sq = jnp.minimum(min_sq, jnp.sum((X - center[None, :]) ** 2, axis=-1))
        if num_active is None:
            return centers.at[k].set(center), new_min_sq
        drawn = k < num_active
        return (centers.at[k].set(jnp.where(drawn, center, centers[k])), jnp.where(drawn, new_min_sq, min_sq))

    centers, _ = jax.lax.fori_loop(1, num_components, add_center, (centers, min_sq))
    return centers


def _ones_if_none(X: jax.Array, sample_weight: jax.Array | None) -> jax.Array:
    return jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight


def kmeans_plusplus(
    key: jax.Array,
    X: jax.Array,
    num_components: int,
    sample_weight: jax.Array | None = None,
    *,
    n_local_trials: int | None = None,
    num_active=None,
    by_value: bool = False,
    rows: RowAxis = LOCAL,
) -> jax.Array:
    """k-means++ seeding: ``(K, D)`` centers drawn from the data ``(N, D)``.

    Each further center is drawn with probability proportional to the weighted squared
    distance to the nearest center already chosen; greedy, as scikit-learn's
    ``kmeans_plusplus``: ``n_local_trials`` candidates are drawn so and the one that leaves
    the least potential ``Σ w · min D²`` is kept (``None``: ``2 + int(log K)``, scikit-learn's
    default; ``1``: plain k-means++, whose centers are the greedy variant's first candidates).
    Greedy seeding costs about ``n_local_trials`` distance passes per center (one product of
    the candidates with the data) against one.

    With ``num_active`` (an int, may be traced), only the first ``num_active`` centers are
    drawn, the same as ``kmeans_plusplus(key, X, num_active, ...)`` draws (with the default
    ``n_local_trials``, ``2 + int(log num_active)`` candidates count); the others repeat center
    0. With a given ``n_local_trials`` the first ``K`` centers of ``K' > K`` are those of ``K``.
    ``sample_weight`` ``None`` means ones. ``by_value``: rows are drawn in an order set by their
    values, so the centers do not depend on the order of the rows and a row of integer weight
    ``m`` draws as ``m`` copies of it (see :func:`_draw_index_by_value`).

    Example:
      >>> import jax, jax.numpy as jnp, gmmjax as gj
      >>> X = jnp.concatenate([jnp.zeros((50, 2)), jnp.full((50, 2), 10.0)])
      >>> centers = gj.kmeans_plusplus(jax.random.key(0), X, 2)
      >>> sorted(centers[:, 0].tolist())
      [0.0, 10.0]
    """
    X = jnp.asarray(X)
    weights = _ones_if_none(X, sample_weight)
    num_trials, lane_trials = resolve_local_trials(num_components, n_local_trials, num_active)
    return _sequential_seeding(
        key,
        X,
        num_components,
        weights,
        distance_weighted=True,
        num_active=num_active,
        by_value=by_value,
        rows=rows,
        num_trials=num_trials,
        lane_trials=lane_trials,
    )


def kmeans(
    key: jax.Array,
    X: jax.Array,
    num_components: int,
    sample_weight: jax.Array | None = None,
    max_steps: int = KMEANS_MAX_STEPS,
    *,
    chunk_size: int | None = None,
    n_local_trials: int | None = None,
    num_active=None,
    by_value: bool = False,
    rows: RowAxis = LOCAL,
) -> jax.Array:
    """k-means++ seeding followed by weighted Lloyd steps; returns ``(K, D)`` centers.
    ``n_local_trials`` (greedy seeding; ``None``: ``2 + int(log K)``) and ``by_value``: as in
    :func:`kmeans_plusplus`.

    A cluster that loses all its points keeps its previous center. Each Lloyd step is one
    chunked pass over ``X`` (memory ``O(chunk_size · K · D)``). With ``num_active`` (an int,
    may be traced), only the first ``num_active`` centers are seeded and receive points (as
    ``kmeans(key, X, num_active, ...)``); the others stay at center 0's seed.
    ``sample_weight`` ``None`` means ones. Sharded ``rows``: each Lloyd step's sums are one
    all-reduce.
    """
    X = jnp.asarray(X)
    sample_weight = _ones_if_none(X, sample_weight)
    centers = kmeans_plusplus(
        key,
        X,
        num_components,
        sample_weight,
        n_local_trials=n_local_trials,
        num_active=num_active,
        by_value=by_value,
        rows=rows,
    )
    chunk = resolve_chunk_size(chunk_size, X.shape[0], num_components, X.shape[1], X.dtype)

    def lloyd(state, operands):
        centers, _, step = state
        X, sample_weight, active = operands  # (the loop's rule under vmap needs no batched closures)

        def chunk_sums(X_chunk, w_chunk, _):
            # Sums about the old centers: precise for data far from the origin.
            residuals = residuals_about(X_chunk, centers)  # (K, c, D)
            onehot = _nearest_center_onehot(residuals, active) * w_chunk[None, :]
            return jnp.sum(onehot, axis=1), weighted_sums(residuals, onehot), weighted_sums(jnp.abs(residuals), onehot)

        counts, shifted, deviations = rows.sum(sum_over_chunks(chunk_sums, X, sample_weight, chunk))
        safe_counts = jnp.where(counts > 0, counts, 1.0)[:, None]
        new_centers = jnp.where((counts > 0)[:, None], centers + shifted / safe_counts, centers)
        # Unchanged assignments still move a center by rounding (it is re-derived from the
        # old one); a move below a few dozen ulps of its size and its cluster's spread is that.
        noise = _LLOYD_ULPS * jnp.finfo(X.dtype).eps * (jnp.abs(centers) + deviations / safe_counts)
        return new_centers, jnp.any(jnp.abs(new_centers - centers) > noise), step + 1

    def keep_going(state, operands):
        _, moved, step = state
        return moved & (step < max_steps)

    # Under vmap, k-means runs that have stopped no longer cost work (see _loops).
    centers, _, _ = compacting_while_loop(
        keep_going,
        lloyd,
        (centers, jnp.array(True), jnp.array(0)),
        (X, sample_weight, active_mask(num_components, num_active)),
        small_batch_tail=True,  # Lloyd runs of a few restarts differ most in their step counts
    )
    return centers


def initial_responsibility_fn(
    key,
    X,
    num_components,
    sample_weight,
    init_params,
    chunk_size=None,
    num_active=None,
    by_value=False,
    rows=LOCAL,
    n_local_trials=None,
):
    """Starting responsibilities for one of :data:`INIT_METHODS`, as a function of a chunk.

    ``"kmeans"``, ``"k-means++"`` and ``"random_from_data"`` (distinct data points drawn at
    random by weight) find ``K`` centers on :func:`seeding_sample` and assign each point to
    its nearest center (hard responsibilities; the k-means++ seeding of the first two is
    greedy with ``n_local_trials`` candidates, see :func:`kmeans_plusplus`); ``"random"`` draws uniform
    responsibilities per row (keyed by the row's index, so independent of chunking) and
    normalises them, as scikit-learn does.

    With ``num_active``, only the first ``num_active`` components get responsibility, and
    they get what ``K = num_active`` would give them: the centers are drawn with keys that do
    not depend on ``K``, and a row's ``(K,)`` uniform draw begins with its ``(num_active,)``
    draw (JAX's default ``jax_threefry_partitionable`` random bits depend on the element's
    index alone; ``test_model_selection`` checks it). The seeding sample is sized for ``K``
    though: for ``K > 256`` on more than ``2**14`` rows it is larger than for ``num_active``.

    Returns:
      ``(resp_fn, shift)``: ``resp_fn(X_chunk (c, D), row_offset) -> (c, K)`` and a
      ``(K, D)`` shift near the components' means (the centers, or the weighted data mean
      for ``"random"``) for accumulating their moments. Sharded ``rows`` (see
      :mod:`gmmjax._collectives`): ``row_offset`` is global, the centers replicated.
    """
    active = active_mask(num_components, num_active)
    if init_params == "random":

        def random_resp(X_chunk, row_offset):
            rows = row_offset + jnp.arange(X_chunk.shape[0])
            draw = lambda row: jax.random.uniform(jax.random.fold_in(key, row), (num_components,), X.dtype)
            resp = jax.vmap(draw)(rows)
            if active is not None:
                resp = jnp.where(active[None, :], resp, 0.0)
            return resp / jnp.sum(resp, axis=1, keepdims=True)

        if not rows.sharded:
            center = jnp.mean(X, axis=0) if sample_weight is None else (sample_weight @ X) / jnp.sum(sample_weight)
        else:
            weight = _ones_if_none(X, sample_weight)
            weighted_sum, total = rows.sum((weight @ X, jnp.sum(weight)))
            center = weighted_sum / total
        return random_resp, jnp.broadcast_to(center, (num_components, X.shape[1]))
    # Small data (the usual case) needs no sample: then the seeding's draw is the only
    # random-number call of the initialisation.
    sampled = needs_seeding_sample(X, num_components, rows)
    sample_key, seed_key = jax.random.split(key) if sampled else (key, key)
    X_seed, w_seed = seeding_sample(sample_key, X, sample_weight, num_components, rows)
    seed_rows = LOCAL if sampled else rows  # a drawn sample is replicated
    if init_params == "random_from_data":
        centers = _sequential_seeding(
            seed_key,
            X_seed,
            num_components,
            w_seed,
            distance_weighted=False,
            num_active=num_active,
            by_value=by_value,
            rows=seed_rows,
        )
    elif init_params == "k-means++":
        centers = kmeans_plusplus(
            seed_key,
            X_seed,
            num_components,
            w_seed,
            n_local_trials=n_local_trials,
            num_active=num_active,
            by_value=by_value,
            rows=seed_rows,
        )
    else:
        centers = kmeans(
            seed_key,
            X_seed,
            num_components,
            w_seed,
            chunk_size=chunk_size,
            n_local_trials=n_local_trials,
            num_active=num_active,
            by_value=by_value,
            rows=seed_rows,
        )
    return (lambda X_chunk, _: _nearest_center_onehot(residuals_about(X_chunk, centers), active).T), centers


def initialize(
    key: jax.Array,
    X: jax.Array,
    num_components: int,
    *,
    covariance_type: str,
    init_params: str,
    sample_weight: jax.Array | None,
    reg_covar,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    chunk_size: int | None = None,
    num_active=None,
    by_value: bool = False,
    rows: RowAxis = LOCAL,
    n_local_trials: int | None = None,
):
    """Starting parameters: from ``init_params`` and then any user-given ``*_init`` arrays
    (``by_value``: seeding independent of the rows' order; ``n_local_trials``: candidates per
    center of the greedy k-means++ seeding; see :func:`kmeans_plusplus`).

    When all three ``*_init`` are given they are used as they are; otherwise the missing
    ones come from an M-step on the initial responsibilities (as in scikit-learn).
    ``num_active`` (an int, may be traced; not with ``*_init``) starts only the first
    ``num_active`` components, as ``K = num_active`` would; the others get weight 0.

    Returns:
      ``(params, collapsed)``: :class:`GMMParams` and a ``(K,)`` boolean array of
      components that started empty or needed extra regularisation.
    """
    dtype = X.dtype
    if num_active is not None and not (weights_init is None and means_init is None and precisions_init is None):
        raise ValueError("num_active cannot be combined with weights_init, means_init or precisions_init.")
    if weights_init is not None and means_init is not None and precisions_init is not None:
        params = GMMParams(
            jnp.asarray(weights_init, dtype),
            jnp.asarray(means_init, dtype),
            covariance_kind(covariance_type).covariances_from_precisions(jnp.asarray(precisions_init, dtype)),
            covariance_type,
        )
        return params, jnp.zeros(num_components, bool)
    resp_fn, shift = initial_responsibility_fn(
        key, X, num_components, sample_weight, init_params, chunk_size, num_active, by_value, rows, n_local_trials
    )
    stats = stats_from_responsibilities(
        X, resp_fn, shift, covariance_type, sample_weight, chunk_size=chunk_size, rows=rows
    )
    params, collapsed = m_step_with_diagnostics(stats, shift, reg_covar, num_active)
    if weights_init is not None:
        params = params.replace(weights=jnp.asarray(weights_init, dtype))
    if means_init is not None:
        params = params.replace(means=jnp.asarray(means_init, dtype))
    if precisions_init is not None:
        params = params.replace(
            covariances=covariance_kind(covariance_type).covariances_from_precisions(
                jnp.asarray(precisions_init, dtype)
            )
        )
    return params, collapsed
