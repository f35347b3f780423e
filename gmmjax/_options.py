"""The configuration of a fit: one options object that every way of fitting consumes.

:class:`FitOptions` holds what EM, the gradient fit, model selection, the estimator and the
command line share. It is a pytree: the settings that decide the compiled program's shape
(covariance type, iteration limit, restarts, initialisation method, chunk and restart batch
sizes) are static metadata, while ``tol``, ``reg_covar`` and the optional starting values
are leaves, so new values of those reuse the compiled program (and can even be traced, e.g.
``jax.vmap`` over ``reg_covar``). Static settings are checked when the object is built;
the leaves, whose checks need the data's shape, by :func:`check_fit_options` at the
boundary of every fit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from gmmjax import _validation as v
from gmmjax._init import check_init_params, check_local_trials
from gmmjax._missing import check_missing
from gmmjax._params import check_covariance_type

DEFAULT_MAX_ITER = 100

# The seed's names, accepted wherever the scikit-learn names are.
OPTION_ALIASES = {"num_iters": "max_iter"}


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Settings of a mixture fit (scikit-learn's names and defaults).

    Static (part of the compiled program; a new value compiles anew):

    Attributes:
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      max_iter: iteration limit (``≥ 0``; 0 returns the initialisation). The seed's name
        ``num_iters`` is accepted by ``fit_options`` and every front door.
      n_init: number of restarts (the best one is kept).
      init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
      chunk_size: rows of ``X`` per chunk in every pass over the data (``None``: sized
        automatically, see :func:`gmmjax.auto_chunk_size`); bounds memory, not results.
      restart_batch_size: restarts run together (vmapped); ``None``: all of them.
      row_order_invariant: seeding (k-means++, ``random_from_data``, the start of k-means)
        draws rows in an order set by their values, so a fit does not depend on the order of
        the rows (up to ``2**14`` rows: beyond, the seeding sample is drawn by position) and
        integer sample weights equal repeated rows, as scikit-learn's estimator checks ask.
        Each draw bisects over the rows' value keys (no sort): nothing next to a fit of any
        size, ≈1.2× the warm time of 1000 vmapped fits of 500 rows on a 2-core CPU;
        ``False`` draws by position (as gmmjax did before) for such batches of tiny fits.
      n_local_trials: candidates per center of the k-means++ seeding (``"kmeans"`` and
        ``"k-means++"``), of which the one leaving the least potential ``Σ w · min D²`` is kept
        (scikit-learn's greedy k-means++); ``None``: ``2 + int(log K)`` as scikit-learn; ``1``:
        plain k-means++ (as gmmjax did before), which reaches the best optimum for fewer seeds
        (``benchmarks/SEEDING.md``).
      missing: ``"raise"`` (default: NaN in ``X`` is an error) or ``"marginalize"``: NaN entries
        are missing at random and EM is exact on each row's observed features
        (:mod:`gmmjax._missing`, ``docs/guides/missing_data.md``); the seeding sees the data with
        NaN replaced by feature means.

    Leaves (new values reuse the compiled program):

    Attributes:
      tol: convergence threshold on the change of the mean log-likelihood.
      reg_covar: non-negative value added to covariance diagonals.
      weights_init: optional ``(K,)`` starting weights.
      means_init: optional ``(K, D)`` starting means.
      precisions_init: optional starting precisions in scikit-learn's shape for the
        covariance type (precisions, not covariances).
      lower_bound_init: optional ``()`` mean log-likelihood the convergence test starts
        from (a warm start continues from the previous fit's ``lower_bound``; ``None``: −∞).
      prior: optional :class:`~gmmjax.ConjugatePrior` (its hyperparameters are leaves):
        MAP EM with mclust's conjugate prior (:func:`gmmjax.fit_em` also takes
        ``"default"``, mclust's defaults for the data); ``None``: maximum likelihood.

    Example:
      >>> import gmmjax as gj
      >>> options = gj.FitOptions(covariance_type="diag", n_init=4)
      >>> options.replace(tol=1e-5).tol
      1e-05
    """

    covariance_type: str = "full"
    max_iter: int = DEFAULT_MAX_ITER
    n_init: int = 1
    init_params: str = "kmeans"
    chunk_size: int | None = None
    restart_batch_size: int | None = None
    row_order_invariant: bool = True
    n_local_trials: int | None = None
    missing: str = "raise"
    tol: Any = 1e-3
    reg_covar: Any = 1e-6
    weights_init: Any = None
    means_init: Any = None
    precisions_init: Any = None
    lower_bound_init: Any = None
    prior: Any = None

    def __post_init__(self):
        # Only the static fields are checked here: JAX rebuilds the object with placeholders
        # or tracers as leaves (flattening, vmap's in_axes), and leaves need the data's shape.
        normalise = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        normalise("covariance_type", check_covariance_type(self.covariance_type))
        normalise("max_iter", v.check_int("max_iter (num_iters)", self.max_iter, 0))
        normalise("n_init", v.check_int("n_init", self.n_init, 1))
        normalise("init_params", check_init_params(self.init_params))
        if not isinstance(self.row_order_invariant, (bool, np.bool_)):
            raise ValueError(f"row_order_invariant must be True or False, got {self.row_order_invariant!r}.")
        normalise("row_order_invariant", bool(self.row_order_invariant))
        if self.n_local_trials is not None:
            normalise("n_local_trials", check_local_trials(self.n_local_trials))
        for name in ("chunk_size", "restart_batch_size"):
            if getattr(self, name) is not None:
                normalise(name, v.check_int(name, getattr(self, name), 1))
        check_missing(self.missing)

    def replace(self, **changes) -> FitOptions:
        """A copy with the given fields replaced (checked again)."""
        return dataclasses.replace(self, **changes)

    @property
    def has_initial_parameters(self) -> bool:
        return not (self.weights_init is None and self.means_init is None and self.precisions_init is None)


STATIC_FIELDS = (
    "covariance_type",
    "max_iter",
    "n_init",
    "init_params",
    "chunk_size",
    "restart_batch_size",
    "row_order_invariant",
    "n_local_trials",
    "missing",
)
LEAF_FIELDS = ("tol", "reg_covar", "weights_init", "means_init", "precisions_init", "lower_bound_init", "prior")
OPTION_NAMES = STATIC_FIELDS + LEAF_FIELDS

jax.tree_util.register_dataclass(FitOptions, data_fields=list(LEAF_FIELDS), meta_fields=list(STATIC_FIELDS))


def fit_options(options: FitOptions | None = None, /, **keywords) -> FitOptions:
    """``options`` (default ``FitOptions()``) with the given fields replaced: the keyword
    form of every front door (``fit_em(key, X, K, covariance_type="diag")``).

    Accepts the seed's alias ``num_iters`` for ``max_iter``; ``None`` for ``max_iter`` (or
    ``num_iters``) means "not given". Unknown names are a ``TypeError`` listing the valid ones.
    """
    if options is None:
        options = FitOptions()
    elif not isinstance(options, FitOptions):
        raise TypeError(f"options must be a gmmjax.FitOptions (or None), got {options!r}.")
    unknown = sorted(set(keywords) - set(OPTION_NAMES) - set(OPTION_ALIASES))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}; fit options are {list(OPTION_NAMES)} "
            f"(and {list(OPTION_ALIASES)})."
        )
    for alias, name in OPTION_ALIASES.items():
        if alias in keywords:
            value = v.resolve_alias(alias, keywords.pop(alias), name, keywords.get(name), None)
            keywords[name] = value
    if keywords.get("max_iter", 0) is None:
        keywords.pop("max_iter")
    return options.replace(**keywords) if keywords else options


def check_fit_options(options: FitOptions, num_components: int | None, num_features: int) -> FitOptions:
    """``options`` with its leaves checked for a fit of ``num_components`` components (``None``:
    several, e.g. model selection, which takes no starting values) on ``num_features`` features.

    Concrete values are checked as scikit-learn does (messages include its phrases); traced
    leaves pass through (their values are the caller's business under ``jit``).
    """
    tol = v.check_nonnegative_float("tol", options.tol)
    reg_covar = v.check_nonnegative_float("reg_covar", options.reg_covar)
    if num_components is None:
        if options.has_initial_parameters:
            raise ValueError(
                "weights_init, means_init and precisions_init need one number of components; "
                "model selection fits several: leave them None."
            )
    else:
        if options.weights_init is not None:
            v.check_weights("weights_init", options.weights_init, num_components)
        if options.means_init is not None:
            v.check_means("means_init", options.means_init, num_components, num_features)
        if options.precisions_init is not None:
            v.check_covariance_like(
                "precisions_init",
                options.precisions_init,
                num_components,
                num_features,
                options.covariance_type,
                kind="precision",
            )
    lower_bound_init = options.lower_bound_init
    if lower_bound_init is not None and not v.is_traced(lower_bound_init):
        lower_bound_init = float(lower_bound_init)
    prior = options.prior
    if prior is not None:
        from gmmjax._prior import check_prior

        prior = check_prior(prior, options.covariance_type, num_features)
    return options.replace(tol=tol, reg_covar=reg_covar, lower_bound_init=lower_bound_init, prior=prior)
