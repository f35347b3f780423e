"""Model selection in one compiled program: every number of components (and covariance type)
fitted as one vmapped batch, scored by BIC, AIC and ICL.

A fit with ``K_max`` components of which only the first ``K`` are active (``num_active``,
traced) equals the fit with ``K`` components padded with components of weight 0: inactive
components are never seeded, never receive responsibility, and the random draws for
component ``k`` do not depend on how many components there are (see :mod:`gmmjax._init`).
So ``K = 1…K_max`` is one fit vmapped over ``num_active``, and each of its members equals
``fit_em(key, X, K)`` from the same key (up to floating-point summation order). The
covariance types have different shapes: they are a Python loop inside the same program. The
values of ``K`` may also run as a few such batches of consecutive values (``num_groups``,
:func:`size_groups`), each carrying its own largest ``K``, padded back to ``K_max`` after the
fit: less work per pass, one more loop body to compile per batch (benchmarks/SELECTION.md).
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._chunks import resolve_chunk_size
from gmmjax._collectives import LOCAL, RowAxis
from gmmjax._compile import is_small_program
from gmmjax._covariance import covariance_kind
from gmmjax._criteria import information_criteria
from gmmjax._driver import FitResult, call_compiled, check_fit_inputs, compiled
from gmmjax._em import fit_em_restarts
from gmmjax._loops import MIN_BATCH
from gmmjax._names import CRITERIA  # jax-free, for the command line
from gmmjax._options import FitOptions, fit_options
from gmmjax._params import COVARIANCE_TYPES, GMMParams, check_covariance_type
from gmmjax._prior import require_no_prior
from gmmjax._sharding import local_chunk_size, prepare, row_sharding, run_data_parallel


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """Result of :func:`select_num_components` (``T`` covariance types, ``J`` values of ``K``).

    A pytree: the arrays are leaves (under ``vmap`` over datasets each gains a leading
    axis); ``covariance_types`` and ``criterion`` are static metadata.

    Attributes:
      num_components: ``(J,)`` int, the numbers of components tried, increasing.
      bic, aic, icl: ``(T, J)`` criteria of the fitted mixture for each (type, ``K``); lower
        is better (see :func:`gmmjax.icl`).
      mean_log_likelihood: ``(T, J)`` ``log L / n`` of the fitted mixture (the one the
        criteria score; a fit's ``lower_bound`` is that of the parameters one M-step before).
      n_iter: ``(T, J)`` int, EM iterations of the best restart.
      converged: ``(T, J)`` bool.
      fits: one :class:`gmmjax.FitResult` per covariance type, each leaf with a leading
        ``(J,)`` axis and ``K_max = max(num_components)`` components, of which those beyond
        ``num_components[j]`` have weight exactly 0 (their means and covariances repeat
        component 0's, as placeholders).
      best_type_index: ``()`` int, index into ``covariance_types`` of the best model.
      best_index: ``()`` int, index into ``num_components`` of the best model.
      covariance_types: the covariance types tried (static).
      criterion: ``"bic"``, ``"aic"`` or ``"icl"``: what "best" minimises (static).
    """

    num_components: jax.Array
    bic: jax.Array
    aic: jax.Array
    icl: jax.Array
    mean_log_likelihood: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    fits: tuple
    best_type_index: jax.Array
    best_index: jax.Array
    covariance_types: tuple = ("full",)
    criterion: str = "bic"

    @property
    def scores(self) -> jax.Array:
        """``(T, J)`` the table of the selection criterion."""
        return getattr(self, self.criterion)

    @property
    def params(self) -> tuple:
        """One :class:`GMMParams` per covariance type, leaves with a leading ``(J,)`` axis."""
        return tuple(fit.params for fit in self.fits)

    @property
    def best_num_components(self) -> jax.Array:
        """``()`` the number of components of the best model."""
        return self.num_components[self.best_index]

    # The helpers below index with concrete values: call them outside jit, on an unbatched result.
    @property
    def best_covariance_type(self) -> str:
        """The covariance type of the best model."""
        return self.covariance_types[int(self.best_type_index)]

    def fit_for(self, covariance_type: str, num_components: int) -> FitResult:
        """The :class:`gmmjax.FitResult` of one (type, ``K``), trimmed to its ``K`` components:
        what ``fit_em(key, X, K, covariance_type=...)`` returns (up to rounding)."""
        if covariance_type not in self.covariance_types:
            raise ValueError(f"covariance_type {covariance_type!r} was not tried; tried: {self.covariance_types}.")
        tried = np.asarray(self.num_components).tolist()
        if num_components not in tried:
            raise ValueError(f"num_components={num_components!r} was not tried; tried: {tried}.")
        fit = self.fits[self.covariance_types.index(covariance_type)]
        index = tried.index(num_components)
        # Indexed and trimmed on the host: no small programs compiled for each leaf's shape.
        fit = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[index], fit)
        restarts = fit.restarts._replace(
            params=_first_components(fit.restarts.params, num_components),
            collapsed_components=fit.restarts.collapsed_components[..., :num_components],
        )
        fit = fit._replace(params=_first_components(fit.params, num_components), restarts=restarts)
        return jax.tree_util.tree_map(jnp.asarray, fit)

    def best_fit(self) -> FitResult:
        """The :class:`gmmjax.FitResult` of the best model, trimmed to its components."""
        return self.fit_for(self.best_covariance_type, int(self.best_num_components))

    def best_params(self) -> GMMParams:
        """The :class:`GMMParams` of the best model, trimmed to its components."""
        return self.best_fit().params


jax.tree_util.register_dataclass(
    SelectionResult,
    data_fields=[
        "num_components",
        "bic",
        "aic",
        "icl",
        "mean_log_likelihood",
        "n_iter",
        "converged",
        "fits",
        "best_type_index",
        "best_index",
    ],
    meta_fields=["covariance_types", "criterion"],
)


def _first_components(params: GMMParams, num_components: int) -> GMMParams:
    """The first ``num_components`` components of (possibly batched) parameters."""
    k = num_components
    covariances = covariance_kind(params.covariance_type).first_components(params.covariances, k)
    return params.replace(weights=params.weights[..., :k], means=params.means[..., :k, :], covariances=covariances)


def _pad_components(tree, num_components: int, component_axis: int):
    """``GMMParams`` (or a ``(…, K)`` bool array) with components appended up to
    ``num_components`` along ``component_axis``: weight 0 (``False``), means and covariances
    repeating component 0's, as the masked components of a larger fit have them."""

    def pad(leaf, fill=None):
        missing = num_components - leaf.shape[component_axis]
        if missing == 0:
            return leaf
        if fill is None:  # component 0's values, as placeholders
            first = jax.lax.slice_in_dim(leaf, 0, 1, axis=component_axis)
            extra = jnp.repeat(first, missing, axis=component_axis)
        else:
            shape = leaf.shape[:component_axis] + (missing,) + leaf.shape[component_axis + 1 :]
            extra = jnp.full(shape, fill, leaf.dtype)
        return jnp.concatenate([leaf, extra], axis=component_axis)

    if not isinstance(tree, GMMParams):
        return pad(tree, False)
    shared = covariance_kind(tree.covariance_type).shared
    return tree.replace(
        weights=pad(tree.weights, 0),
        means=pad(tree.means),
        covariances=tree.covariances if shared else pad(tree.covariances),
    )


def _pad_fit(fit: FitResult, num_components: int) -> FitResult:
    """A batch's ``(J_g,)`` fits of ``K_g`` components as fits of ``num_components``."""
    restarts = fit.restarts._replace(
        params=_pad_components(fit.restarts.params, num_components, 2),  # (J_g, R, K, ...)
        collapsed_components=_pad_components(fit.restarts.collapsed_components, num_components, 2),
    )
    return fit._replace(params=_pad_components(fit.params, num_components, 1), restarts=restarts)


def _fit_and_score_all(
    key,
    X,
    sample_weight,
    options: FitOptions,
    candidates,
    criterion_index,
    *,
    num_components,
    covariance_types,
    groups=None,
    rows: RowAxis = LOCAL,
) -> dict:
    """The compiled program (``num_components``: the largest ``K`` tried); the criterion is
    data (an index into CRITERIA), so that changing it does not compile again.

    ``groups`` (static): ``(size, largest, chunk_size)`` for each vmapped batch: the next
    ``size`` of the (increasing) ``candidates``, fitted with ``largest`` components (at least
    the largest of them) and that ``chunk_size`` (see :func:`batch_chunk_sizes`), e.g.
    ``((4, 4, c), (4, 8, c'))`` for ``K = 1..8`` in two batches; ``None``: one batch with
    ``num_components`` and ``options.chunk_size``. Each batch is padded to ``num_components``
    components afterwards, so the result does not depend on the grouping."""
    if groups is None:
        groups = ((candidates.shape[0], num_components, options.chunk_size),)
    bounds = np.cumsum((0,) + tuple(group[0] for group in groups))
    fits, tables = [], []
    for covariance_type in covariance_types:  # different shapes: one vmapped batch per type
        type_fits, type_scores = [], []
        for start, stop, (_, largest, chunk_size) in zip(bounds[:-1], bounds[1:], groups):  # one batch per group
            group_options = options.replace(covariance_type=covariance_type, chunk_size=chunk_size)

            def fit_and_score(num_active, largest=largest, group_options=group_options):
                fit = fit_em_restarts(
                    key, X, sample_weight, group_options, num_components=largest, num_active=num_active, rows=rows
                )
                return fit, information_criteria(
                    fit.params, X, sample_weight, num_active=num_active, chunk_size=group_options.chunk_size, rows=rows
                )

            fit, scores = jax.vmap(fit_and_score)(candidates[start:stop])
            type_fits.append(_pad_fit(fit, num_components))
            type_scores.append(scores)
        concatenate = lambda *leaves: jnp.concatenate(leaves, axis=0)
        fits.append(jax.tree_util.tree_map(concatenate, *type_fits))
        tables.append(jax.tree_util.tree_map(concatenate, *type_scores))
    table = lambda name: jnp.stack([getattr(scores, name) for scores in tables])
    chosen = jnp.stack([table(name) for name in CRITERIA])[criterion_index]
    best = jnp.argmin(jnp.where(jnp.isnan(chosen), jnp.inf, chosen))  # first of ties: smallest K of the first type
    return dict(
        num_components=candidates,
        bic=table("bic"),
        aic=table("aic"),
        icl=table("icl"),
        mean_log_likelihood=table("log_likelihood") / table("num_samples"),
        n_iter=jnp.stack([fit.n_iter for fit in fits]),
        converged=jnp.stack([fit.converged for fit in fits]),
        fits=tuple(fits),
        best_type_index=best // candidates.shape[0],
        best_index=best % candidates.shape[0],
    )


def size_groups(candidates: tuple, num_groups: int) -> tuple:
    """Splits the increasing ``candidates`` into at most ``num_groups`` runs of consecutive
    values, each fitted as one vmapped batch whose lanes carry the run's largest ``K``:
    the split that minimises the components computed per pass, ``Σ_groups size · largest``
    (for ``K = 1..16`` in two groups, ``1..8`` and ``9..16``: 192 against 256 for one).

    Returns:
      ``((size, largest), ...)`` in increasing order of ``K`` (the ``groups`` of the
      compiled program).
    """
    values = tuple(candidates)
    count = len(values)
    num_groups = max(1, min(num_groups, count))
    # cost[g][j]: the cheapest split of the first j candidates into g groups; cut: its last start.
    inf = float("inf")
    cost = [[inf] * (count + 1) for _ in range(num_groups + 1)]
    cut = [[0] * (count + 1) for _ in range(num_groups + 1)]
    cost[0][0] = 0
    for g in range(1, num_groups + 1):
        for j in range(1, count + 1):
            for i in range(g - 1, j):
                c = cost[g - 1][i] + (j - i) * values[j - 1]
                if c < cost[g][j]:
                    cost[g][j], cut[g][j] = c, i
    best = min(range(1, num_groups + 1), key=lambda g: (cost[g][count], g))  # fewest groups among ties
    groups, j = [], count
    for g in range(best, 0, -1):
        i = cut[g][j]
        groups.append((j - i, values[j - 1]))
        j = i
    return tuple(reversed(groups))


def batch_chunk_sizes(groups: tuple, chunk_size, size_for) -> tuple:
    """``groups`` (``(size, largest)`` pairs, :func:`size_groups`) with each batch's chunk size
    appended: ``chunk_size`` if the caller gave one, else ``size_for(largest, fits)``, sized
    for the batch's own lanes (``fits``: its number of ``K`` values, which pass over a chunk
    together), so a batch of small ``K`` reads larger chunks than one sized for ``K_max``. Every
    pass evens its chunks out over the rows (:func:`gmmjax._chunks.balanced_chunk`)."""
    if chunk_size is not None:
        return tuple((size, largest, chunk_size) for size, largest in groups)
    return tuple((size, largest, size_for(largest, size)) for size, largest in groups)


def check_num_components_range(num_components, num_samples: int) -> tuple:
    """The numbers of components to try, as an increasing tuple of ints in ``1..num_samples``."""
    if isinstance(num_components, numbers.Integral) and not isinstance(num_components, bool):
        candidates = tuple(range(1, int(num_components) + 1))
        if num_components < 1:
            raise ValueError(
                f"num_components must be at least 1 (it means trying K = 1..num_components), got {num_components}."
            )
    else:
        try:
            candidates = tuple(num_components)
        except TypeError:
            raise ValueError(
                "num_components must be an int K_max (to try K = 1..K_max) or a sequence of ints, "
                f"e.g. range(2, 9); got {num_components!r}."
            ) from None
        if not candidates or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in candidates):
            raise ValueError(
                "num_components must be an int K_max (to try K = 1..K_max) or a non-empty sequence "
                f"of ints, e.g. range(2, 9); got {num_components!r}."
            )
        candidates = tuple(int(k) for k in candidates)
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"num_components lists a value more than once: {list(candidates)}.")
        candidates = tuple(sorted(candidates))
    if candidates[0] < 1 or candidates[-1] > num_samples:
        raise ValueError(
            f"numbers of components must lie within 1..{num_samples} (the number of samples); "
            f"got {list(candidates)}: decrease num_components or provide more samples."
        )
    return candidates


def check_covariance_types(covariance_types) -> tuple:
    """A covariance type, ``"all"`` or a sequence of types, as a tuple of distinct names."""
    if isinstance(covariance_types, str):
        types = COVARIANCE_TYPES if covariance_types == "all" else (covariance_types,)
    else:
        try:
            types = tuple(covariance_types)
        except TypeError:
            types = (covariance_types,)
    if not types:
        raise ValueError(f"covariance_types must name at least one of {COVARIANCE_TYPES} (or be 'all').")
    for covariance_type in types:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_types must be 'all', one of {COVARIANCE_TYPES} or a sequence of them; "
                f"got {covariance_type!r}."
            )
    if len(set(types)) != len(types):
        raise ValueError(f"covariance_types lists a type more than once: {list(types)}.")
    return tuple(check_covariance_type(t) for t in types)


def check_criterion(criterion) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    return criterion


_fit_and_score_all_for_size = compiled(
    _fit_and_score_all, static_argnames=("num_components", "covariance_types", "groups")
)

# At most this many batches by default (see default_num_groups).
DEFAULT_MAX_GROUPS = 2


def default_num_groups(candidates: tuple, num_samples: int, num_features: int, n_init: int) -> int:
    """How many batches :func:`select_num_components` splits the values of ``K`` into by default.

    Measured on a 2-core CPU (benchmarks/SELECTION.md): every batch is one more loop body to
    compile (≈ +30–70% cold each), and a batch of fewer than ``_loops.MIN_BATCH`` lanes steps
    as a plain vmapped loop (every lane until the slowest is done): K = 1..8 in two batches
    ran 1.3× slower warm on 100,000 × 8 than in one, while K = 1..16 in two batches of 8 lanes
    ran 1.7× faster warm on 10,000 × 2. So: one batch for a compile-bound program
    (:func:`gmmjax._compile.is_small_program`, where compilation is most of a call), else
    batches of at least ``MIN_BATCH`` lanes, at most :data:`DEFAULT_MAX_GROUPS`.
    """
    if is_small_program(num_samples, num_features, candidates[-1], len(candidates) * n_init):
        return 1
    return max(1, min(DEFAULT_MAX_GROUPS, len(candidates) // MIN_BATCH))


def select_num_components(
    key: jax.Array,
    X: jax.typing.ArrayLike,
    num_components,
    options: FitOptions | None = None,
    *,
    covariance_types="full",
    criterion: str = "bic",
    sample_weight: jax.typing.ArrayLike | None = None,
    mesh=None,
    data_axis=None,
    num_groups: int | None = None,
    **option_keywords,
) -> SelectionResult:
    """Fits every number of components (and covariance type) in one compiled program and
    scores each fit by BIC, AIC and ICL.

    All values of ``K`` run as one batch vmapped over the number of active components of a
    ``K_max``-component fit (unused components masked out with weight exactly 0); the
    covariance types run one after another inside the same program. The fit for each
    (type, ``K``) equals ``fit_em(key, X, K, covariance_type=type, ...)`` with the same
    arguments (same ``n_iter``, same parameters up to floating-point rounding), and its BIC
    and AIC equal :func:`gmmjax.bic` / :func:`gmmjax.aic` of those parameters. Works under
    ``jit`` (mark ``num_components`` and the other configuration static) and ``vmap`` (e.g.
    over equally shaped datasets). Changing ``criterion`` or ``tol``/``reg_covar`` reuses the
    compiled program.

    Args:
      key: ``jax.random`` key, used as :func:`gmmjax.fit_em` uses it for every (type, ``K``).
      X: ``(N, D)`` data.
      num_components: an int ``K_max`` (tries ``K = 1..K_max``) or a sequence of ints
        (e.g. ``range(2, 9)``), each within ``1..N``.
      covariance_types: one of ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``, a
        sequence of them, or ``"all"``.
      criterion: ``"bic"`` (default), ``"aic"`` or ``"icl"``; the best model minimises it
        (ties: the first type, then the smallest ``K``).
      options: a :class:`~gmmjax.FitOptions` used for every fit (its ``covariance_type`` is
        replaced by each of ``covariance_types``; no ``*_init``).
      **option_keywords: fields of :class:`~gmmjax.FitOptions` replacing those of
        ``options``, as in :func:`gmmjax.fit_em`: ``n_init``, ``max_iter``, ``tol``,
        ``reg_covar``, ``init_params``, ``chunk_size`` (bounds the memory of each pass, which
        holds all ``J`` fits' temporaries at once), ``restart_batch_size``.
      sample_weight: optional ``(N,)`` non-negative weights; the criteria count them as
        repetitions (``log L`` weighted, ``n = Σ_n s_n``).
      mesh, data_axis: fit data-parallel with the rows sharded over a mesh axis, as in
        :func:`gmmjax.fit_em` (also for a row-sharded ``X``): one all-reduce per pass, the
        same selection as on one device.
      num_groups: the values of ``K`` run as at most this many vmapped batches of
        consecutive values (per covariance type), each batch's lanes carrying that batch's
        largest ``K`` rather than ``K_max`` (the split with the fewest components per pass):
        less work per pass, one more loop body to compile per batch. ``None`` (default): one
        batch for a compile-bound program (small data), else at most two batches of at least
        8 values each (see ``docs/scaling/model_selection_batches.md``). The results do not
        depend on it (up to floating-point rounding).

    Returns:
      A :class:`SelectionResult`; ``result.best_params()`` / ``result.best_fit()`` give
      the winner trimmed to its components.

    Example:
      >>> import jax, numpy as np, gmmjax as gj
      >>> means = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])   # three round clusters
      >>> X = gj.generate_gmm_data(150, np.ones(3) / 3, means, np.stack([np.eye(2)] * 3))
      >>> result = gj.select_num_components(jax.random.key(0), X, 3, covariance_types=("full", "diag"))
      >>> result.bic.shape                                          # (types, K = 1..3)
      (2, 3)
      >>> int(result.best_num_components), result.best_covariance_type
      (3, 'diag')
    """
    covariance_types = check_covariance_types(covariance_types)
    criterion = check_criterion(criterion)
    options = fit_options(options, **option_keywords)
    require_no_prior(options.prior, "model selection")
    if "covariance_type" in option_keywords:
        raise ValueError(
            "select_num_components tries covariance_types; pass covariance_types=..., not covariance_type."
        )
    num_samples = np.shape(X)[0] if np.ndim(X) == 2 else 1  # check_fit_inputs explains other shapes
    candidates = check_num_components_range(num_components, num_samples)
    if num_groups is None:
        num_features = np.shape(X)[1] if np.ndim(X) == 2 else 1
        num_groups = default_num_groups(candidates, num_samples, num_features, options.n_init)
    groups = size_groups(candidates, v.check_int("num_groups", num_groups, 1))
    if mesh is not None or row_sharding(X) is not None:
        key, sharded, leaves = prepare(
            key,
            X,
            None,
            options,
            sample_weight,
            mesh,
            data_axis,
            max_components=candidates[-1],
            fits_per_pass=len(candidates),
        )
        rows_per_device = lambda largest, fits: local_chunk_size(  # noqa: E731
            options.chunk_size, sharded, largest, fits * (leaves.restart_batch_size or 1)
        )
        groups = batch_chunk_sizes(groups, options.chunk_size, rows_per_device)
        fields = run_data_parallel(
            _fit_and_score_all,
            key,
            sharded,
            leaves,
            jnp.asarray(candidates, jnp.int32),
            jnp.asarray(CRITERIA.index(criterion), jnp.int32),
            num_components=candidates[-1],
            covariance_types=covariance_types,
            groups=groups,
        )
        return SelectionResult(**fields, covariance_types=covariance_types, criterion=criterion)
    # All J fits share each pass over a chunk: size chunks for the whole batch.
    inputs = check_fit_inputs(
        key, X, None, options, sample_weight, max_components=candidates[-1], fits_per_pass=len(candidates)
    )
    rows_per_chunk = lambda largest, fits: resolve_chunk_size(  # noqa: E731
        None,
        inputs.X.shape[0],
        largest,
        inputs.X.shape[1],
        inputs.X.dtype,
        batch=fits * inputs.options.restart_batch_size,
    )
    groups = batch_chunk_sizes(groups, options.chunk_size, rows_per_chunk)
    fields = call_compiled(
        _fit_and_score_all_for_size,
        inputs,
        jnp.asarray(candidates, jnp.int32),
        jnp.asarray(CRITERIA.index(criterion), jnp.int32),
        num_components=candidates[-1],
        fits=len(candidates) * len(covariance_types),
        covariance_types=covariance_types,
        groups=groups,
    )
    return SelectionResult(**fields, covariance_types=covariance_types, criterion=criterion)
