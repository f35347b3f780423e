"""Variational Bayesian Gaussian mixtures (scikit-learn's ``BayesianGaussianMixture``) on the EM engine.

The model: a Dirichlet (``"dirichlet_distribution"``) or stick-breaking Dirichlet-process
(``"dirichlet_process"``) prior on the weights, and a Gaussian–Wishart prior on each
component's mean and precision. Mean-field variational inference alternates

- a variational E-step: the EM E-step (:func:`gmmjax._stats.e_step`, chunked, GEMM-shaped)
  on *effective* parameters whose log-weights are ``E[log π_k] + ½(E[log|Λ_k|] − D log ν_k)
  − D / (2 κ_k)`` (so the joint log-densities are scikit-learn's ``_estimate_weighted_log_prob``).
  It yields the same additive :class:`~gmmjax.SufficientStats` and ``Σ_n s_n log Σ_k e^{…}``;
- a variational "M-step": the posterior hyperparameters from the summed statistics
  (:func:`variational_m_step`), scikit-learn's ``_estimate_weights``/``_means``/``_precisions``.

The lower bound (scikit-learn's ``lower_bound_``, not divided by ``N``) needs the
responsibilities' entropy ``−Σ_n s_n Σ_k r_nk log r_nk``; it follows from the same statistics:
``Σ_n s_n Σ_k r_nk log r_nk = Σ_k (N_k c_k − ½ tr(Λ̃_k S_k)) − Σ_n s_n log Σ_k e^{…}``
(``c_k`` the component's log-scale ``log w_k + log det P_k − D/2 log 2π``, ``S_k`` the
second moments about the means, ``Λ̃_k`` the precision ``P_k P_kᵀ``), so no second pass over
the data and no extra statistic.
In float32 this difference loses about ``eps · N · |log p|`` (small next to the bound).

Restarts run through :func:`gmmjax._driver.run_restarts` (vmapped), the loop is the
engine's :func:`gmmjax._loops.compacting_while_loop`; the result is a
:class:`~gmmjax.FitResult` whose ``params`` (and ``restarts.params``) are
:class:`VariationalPosterior`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, digamma, gammaln

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._driver import (
    FitResult,
    FitState,
    call_compiled,
    check_fit_inputs,
    compiled,
    initial_state,
    run_restarts,
)
from gmmjax._init import initial_responsibility_fn
from gmmjax._loops import compacting_while_loop
from gmmjax._options import FitOptions, fit_options
from gmmjax._params import GMMParams
from gmmjax._prior import require_no_prior
from gmmjax._progress import DEFAULT_VERBOSE_INTERVAL, check_verbose, reporting_step
from gmmjax._stats import SufficientStats, e_step, stats_from_responsibilities

WEIGHT_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


@dataclasses.dataclass(frozen=True)
class VariationalPrior:
    """Hyperparameters of the prior (scikit-learn's ``*_prior_`` attributes, resolved).

    Attributes:
      weight_concentration: ``()`` ``γ`` (default ``1 / K``).
      mean_precision: ``()`` ``κ₀`` (default 1).
      mean: ``(D,)`` ``m₀`` (default: the (weighted) data mean).
      degrees_of_freedom: ``()`` ``ν₀`` (default ``D``).
      covariance: ``W₀⁻¹``: ``(D, D)`` for full/tied, ``(D,)`` diag, ``()`` spherical
        (default: the data's covariance with ``ddof=1``, its diagonal, or the diagonal's mean).
    """

    weight_concentration: Any = None
    mean_precision: Any = None
    mean: Any = None
    degrees_of_freedom: Any = None
    covariance: Any = None


jax.tree_util.register_dataclass(
    VariationalPrior,
    data_fields=["weight_concentration", "mean_precision", "mean", "degrees_of_freedom", "covariance"],
    meta_fields=[],
)


@dataclasses.dataclass(frozen=True)
class VariationalPosterior:
    """The variational posterior of a Bayesian Gaussian mixture (scikit-learn's fitted names).

    A pytree; ``covariance_type`` and ``weight_concentration_prior_type`` are static.

    Attributes:
      weight_concentration: ``"dirichlet_process"``: a tuple ``(a, b)`` of ``(K,)`` Beta
        parameters of the sticks; ``"dirichlet_distribution"``: ``(K,)`` Dirichlet parameters.
      mean_precision: ``(K,)`` ``κ_k``.
      means: ``(K, D)`` ``m_k``.
      degrees_of_freedom: ``(K,)`` ``ν_k`` (``()`` for tied).
      covariances: ``W_k⁻¹ / ν_k`` in scikit-learn's shapes for the covariance type.
      precisions_cholesky: Cholesky factors of the inverses of ``covariances``.
      weights: ``(K,)`` expected weights ``E[π_k]`` (scikit-learn's ``weights_``).
      prior: the resolved :class:`VariationalPrior` the posterior was computed with.
    """

    weight_concentration: Any
    mean_precision: jax.Array
    means: jax.Array
    degrees_of_freedom: jax.Array
    covariances: jax.Array
    precisions_cholesky: jax.Array
    weights: jax.Array
    prior: VariationalPrior
    covariance_type: str = "full"
    weight_concentration_prior_type: str = "dirichlet_process"

    @property
    def num_components(self) -> int:
        return self.means.shape[-2]

    @property
    def num_features(self) -> int:
        return self.means.shape[-1]

    def to_gmm_params(self) -> GMMParams:
        """The point estimate ``(E[π], m, W⁻¹/ν)`` as :class:`GMMParams` (what ``sample`` draws from)."""
        return GMMParams(self.weights, self.means, self.covariances, self.covariance_type)


jax.tree_util.register_dataclass(
    VariationalPosterior,
    data_fields=[
        "weight_concentration",
        "mean_precision",
        "means",
        "degrees_of_freedom",
        "covariances",
        "precisions_cholesky",
        "weights",
        "prior",
    ],
    meta_fields=["covariance_type", "weight_concentration_prior_type"],
)


# --------------------------------------------------------------------------- the maths


def default_prior(
    X: jax.Array, sample_weight: jax.Array | None, num_components: int, covariance_type: str, given: VariationalPrior
) -> VariationalPrior:
    """``given`` with its ``None`` fields replaced by scikit-learn's defaults for ``X`` (traced:
    works under ``jit``/``vmap``; with sample weights, the moments are weighted, frequency
    weights as repeated rows: ``Σ s (x − m)(x − m)ᵀ / (Σ s − 1)``)."""
    dtype = X.dtype
    num_features = X.shape[1]
    weight = jnp.ones(X.shape[0], dtype) if sample_weight is None else sample_weight
    total = jnp.sum(weight)
    data_mean = (weight @ X) / total
    as_dtype = lambda value: jnp.asarray(value, dtype)  # noqa: E731

    def data_covariance():
        centred = X - data_mean[None, :]
        if covariance_kind(covariance_type).matrix:
            cov = (centred * weight[:, None]).T @ centred / (total - 1.0)
            return 0.5 * (cov + cov.T)
        variances = (weight @ (centred * centred)) / (total - 1.0)
        return variances if covariance_type == "diag" else jnp.mean(variances)

    return VariationalPrior(
        weight_concentration=as_dtype(
            1.0 / num_components if given.weight_concentration is None else given.weight_concentration
        ),
        mean_precision=as_dtype(1.0 if given.mean_precision is None else given.mean_precision),
        mean=data_mean if given.mean is None else as_dtype(given.mean),
        degrees_of_freedom=as_dtype(num_features if given.degrees_of_freedom is None else given.degrees_of_freedom),
        covariance=data_covariance() if given.covariance is None else as_dtype(given.covariance),
    )


def _expected_weights(weight_concentration, prior_type: str) -> jax.Array:
    if prior_type == "dirichlet_process":
        a, b = weight_concentration
        total = a + b
        sticks = jnp.concatenate([jnp.ones(1, a.dtype), jnp.cumprod(b / total)[:-1]])
        weights = a / total * sticks
        return weights / jnp.sum(weights)
    return weight_concentration / jnp.sum(weight_concentration)


def expected_log_weights(posterior: VariationalPosterior) -> jax.Array:
    """``(K,)`` ``E[log π_k]`` (scikit-learn's ``_estimate_log_weights``)."""
    if posterior.weight_concentration_prior_type == "dirichlet_process":
        a, b = posterior.weight_concentration
        digamma_sum = digamma(a + b)
        sticks = jnp.cumsum(digamma(b) - digamma_sum)[:-1]
        return digamma(a) - digamma_sum + jnp.concatenate([jnp.zeros(1, a.dtype), sticks])
    concentration = posterior.weight_concentration
    return digamma(concentration) - digamma(jnp.sum(concentration))


def _feature_range(degrees_of_freedom: jax.Array, num_features: int) -> jax.Array:
    """``0.5 (ν − i)`` for ``i < D``: ``(D, K)`` (or ``(D,)`` for a scalar ``ν``)."""
    offsets = jnp.arange(num_features, dtype=degrees_of_freedom.dtype)
    dof = jnp.expand_dims(degrees_of_freedom, -1)
    return 0.5 * (dof - offsets.reshape((1,) * (dof.ndim - 1) + (num_features,))).T


def effective_log_weights(posterior: VariationalPosterior) -> jax.Array:
    """``(K,)`` the per-component terms the variational E-step adds to ``log N(x | m_k, W_k⁻¹/ν_k)``:
    ``E[log π_k] + ½(E[log|Λ_k|] − D log ν_k) − D / (2 κ_k)`` with ``E[log|Λ_k|] − log|ν W|
    = D log 2 + Σ_i ψ((ν_k − i)/2) − D log ν_k``; of order one (the two large terms cancel here)."""
    num_features = posterior.num_features
    dof = posterior.degrees_of_freedom
    log_lambda = num_features * math.log(2.0) + jnp.sum(digamma(_feature_range(dof, num_features)), axis=0)
    per_component = 0.5 * (log_lambda - num_features * jnp.log(dof)) - 0.5 * num_features / posterior.mean_precision
    return expected_log_weights(posterior) + per_component


def effective_params(posterior: VariationalPosterior) -> GMMParams:
    """:class:`GMMParams` whose joint log-densities ``log w_k + log N(x | μ_k, Σ_k)`` are the
    variational E-step's (scikit-learn's ``_estimate_weighted_log_prob``): the weights are
    ``exp`` of :func:`effective_log_weights` and do not sum to one. ``log_prob`` of them is
    scikit-learn's ``score_samples``, ``responsibilities`` its ``predict_proba``."""
    return GMMParams(
        jnp.exp(effective_log_weights(posterior)), posterior.means, posterior.covariances, posterior.covariance_type
    )


def variational_m_step(
    stats: SufficientStats,
    shift: jax.Array,
    prior: VariationalPrior,
    reg_covar,
    weight_concentration_prior_type: str,
) -> VariationalPosterior:
    """The posterior hyperparameters from summed statistics about ``shift`` ``(K, D)``
    (scikit-learn's ``_m_step``: ``_estimate_gaussian_parameters`` then ``_estimate_weights``,
    ``_estimate_means``, ``_estimate_precisions``)."""
    covariance_type = stats.covariance_type
    kind = covariance_kind(covariance_type)
    dtype = stats.first_moments.dtype
    num_components = stats.counts.shape[0]
    nk = stats.counts + 10 * jnp.finfo(dtype).eps
    offsets = stats.first_moments / nk[:, None]
    xk = shift + offsets
    sk = kind.add_to_diagonal(kind.covariances_from_moments(stats.second_moments, nk, offsets), reg_covar)

    if weight_concentration_prior_type == "dirichlet_process":
        after = jnp.concatenate([jnp.cumsum(nk[::-1])[::-1][1:], jnp.zeros(1, dtype)])  # Σ_{j>k} N_j
        weight_concentration: Any = (1.0 + nk, prior.weight_concentration + after)
    else:
        weight_concentration = prior.weight_concentration + nk

    kappa0 = prior.mean_precision
    mean_precision = kappa0 + nk
    means = (kappa0 * prior.mean[None, :] + nk[:, None] * xk) / mean_precision[:, None]

    diff = xk - prior.mean[None, :]
    shrink = kappa0 / mean_precision  # (K,)
    if covariance_type == "full":
        dof = prior.degrees_of_freedom + nk
        scatter = nk[:, None, None] * (sk + shrink[:, None, None] * diff[:, :, None] * diff[:, None, :])
        covariances = (prior.covariance[None] + scatter) / dof[:, None, None]
    elif covariance_type == "tied":
        dof = prior.degrees_of_freedom + jnp.sum(nk) / num_components
        between = kappa0 / num_components * ((nk / mean_precision)[None, :] * diff.T) @ diff
        covariances = (prior.covariance + sk * jnp.sum(nk) / num_components + between) / dof
    elif covariance_type == "diag":
        dof = prior.degrees_of_freedom + nk
        covariances = (prior.covariance[None, :] + nk[:, None] * (sk + shrink[:, None] * diff**2)) / dof[:, None]
    else:
        dof = prior.degrees_of_freedom + nk
        covariances = (prior.covariance + nk * (sk + shrink * jnp.mean(diff**2, axis=1))) / dof
    if kind.matrix:
        covariances = 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))
    return VariationalPosterior(
        weight_concentration=weight_concentration,
        mean_precision=mean_precision,
        means=means,
        degrees_of_freedom=dof,
        covariances=covariances,
        precisions_cholesky=kind.precision_cholesky(covariances),
        weights=_expected_weights(weight_concentration, weight_concentration_prior_type),
        prior=prior,
        covariance_type=covariance_type,
        weight_concentration_prior_type=weight_concentration_prior_type,
    )


def _weighted_log_resp(stats: SufficientStats, params: GMMParams, prec_chol, log_norm_total) -> jax.Array:
    """``Σ_n s_n Σ_k r_nk log r_nk`` from the E-step's statistics about ``params.means``."""
    kind = covariance_kind(params.covariance_type)
    num_features = params.num_features
    log_det = kind.log_det_precision_cholesky(prec_chol, num_features)
    log_scale = jnp.log(params.weights) + log_det - 0.5 * num_features * math.log(2.0 * math.pi)
    precisions = kind.precisions_from_precision_cholesky(prec_chol)
    second = stats.second_moments
    if params.covariance_type == "full":
        trace = jnp.einsum("kij,kij->k", precisions, second)
    elif params.covariance_type == "tied":
        trace = jnp.einsum("ij,kij->k", precisions, second)
    elif params.covariance_type == "diag":
        trace = jnp.sum(precisions * second, axis=1)
    else:
        trace = precisions * jnp.sum(second, axis=1)
    # A component of weight exp(−∞) = 0 has no responsibility (and would give 0 · −∞).
    joint = jnp.where(stats.counts > 0, stats.counts * log_scale - 0.5 * trace, 0.0)
    return jnp.sum(joint) - log_norm_total


def lower_bound_terms(posterior: VariationalPosterior) -> jax.Array:
    """``− log_wishart − log_norm_weight − ½ D Σ log κ_k``: the part of scikit-learn's
    ``_compute_lower_bound`` that depends on the posterior alone."""
    num_features = posterior.num_features
    kind = covariance_kind(posterior.covariance_type)
    dof = posterior.degrees_of_freedom
    log_det = kind.log_det_precision_cholesky(posterior.precisions_cholesky, num_features)
    log_det = log_det - 0.5 * num_features * jnp.log(dof)
    log_wishart_norm = -(
        dof * log_det
        + dof * num_features * 0.5 * math.log(2.0)
        + jnp.sum(gammaln(_feature_range(dof, num_features)), axis=0)
    )
    if posterior.covariance_type == "tied":
        log_wishart = posterior.num_components * log_wishart_norm
    else:
        log_wishart = jnp.sum(log_wishart_norm)
    if posterior.weight_concentration_prior_type == "dirichlet_process":
        log_norm_weight = -jnp.sum(betaln(*posterior.weight_concentration))
    else:
        concentration = posterior.weight_concentration
        log_norm_weight = gammaln(jnp.sum(concentration)) - jnp.sum(gammaln(concentration))
    return -log_wishart - log_norm_weight - 0.5 * num_features * jnp.sum(jnp.log(posterior.mean_precision))


def variational_step(posterior: VariationalPosterior, X, sample_weight, reg_covar, *, chunk_size=None):
    """One variational iteration: ``(new_posterior, lower_bound)``, the bound as scikit-learn's
    (the E-step's entropy with the new posterior's terms)."""
    params = effective_params(posterior)
    stats, log_norm_total = e_step(params, X, sample_weight, chunk_size=chunk_size)
    new = variational_m_step(
        stats, posterior.means, posterior.prior, reg_covar, posterior.weight_concentration_prior_type
    )
    neg_entropy = _weighted_log_resp(stats, params, posterior.precisions_cholesky, log_norm_total)
    return new, -neg_entropy + lower_bound_terms(new)


class VariationalOperands(NamedTuple):
    """What the loop reads but never changes."""

    X: jax.Array
    sample_weight: jax.Array | None
    tol: jax.Array
    reg_covar: jax.Array
    restart: jax.Array | None = None  # ``()`` int32 index for progress reports, or ``None``


def run_variational(
    start: FitState, operands: VariationalOperands, *, max_iter: int, chunk_size=None, report_every: int = 0
) -> FitState:
    """Iterations from ``start`` until the lower bound changes by less than ``tol`` (absolute,
    as scikit-learn) or ``max_iter`` have run: one ``lax.while_loop`` on the device.
    ``report_every`` (static; 0: off) sends progress to the host as :func:`gmmjax._em.run_em`
    does (:mod:`gmmjax._progress`)."""

    def keep_going(state: FitState, operands: VariationalOperands):
        return (state.n_iter < max_iter) & ~state.converged

    def step(state: FitState, operands: VariationalOperands) -> FitState:
        posterior = cast(VariationalPosterior, state.params)
        new, bound = variational_step(
            posterior, operands.X, operands.sample_weight, operands.reg_covar, chunk_size=chunk_size
        )
        return FitState(
            params=cast(Any, new),
            lower_bound=bound,
            n_iter=state.n_iter + 1,
            converged=jnp.abs(bound - state.lower_bound) < operands.tol,
            lower_bound_history=state.lower_bound_history.at[state.n_iter].set(bound),
            collapsed_components=state.collapsed_components,
        )

    return compacting_while_loop(keep_going, reporting_step(step, keep_going, report_every), start, operands)


def _resp_init_fn(resp: jax.Array):
    return lambda X_chunk, row_offset: jax.lax.dynamic_slice_in_dim(resp, row_offset, X_chunk.shape[0], axis=0)


def fit_variational_restarts(
    key,
    X,
    sample_weight,
    options: FitOptions,
    given_prior: VariationalPrior,
    resp_init=None,
    posterior_init: VariationalPosterior | None = None,
    *,
    num_components: int,
    weight_concentration_prior_type: str,
    report_every: int = 0,
) -> FitResult:
    """The body of :func:`fit_variational` (inputs checked, sizes resolved)."""
    prior = default_prior(X, sample_weight, num_components, options.covariance_type, given_prior)

    def start_posterior(restart_key) -> VariationalPosterior:
        if posterior_init is not None:  # a warm start: the priors are this data's, as scikit-learn's
            return dataclasses.replace(posterior_init, prior=prior)
        if resp_init is None:
            resp_fn, shift = initial_responsibility_fn(
                restart_key,
                X,
                num_components,
                sample_weight,
                options.init_params,
                options.chunk_size,
                None,
                options.row_order_invariant,
                n_local_trials=options.n_local_trials,
            )
        else:
            resp_fn, shift = _resp_init_fn(resp_init), jnp.broadcast_to(prior.mean, (num_components, X.shape[1]))
        stats = stats_from_responsibilities(
            X, resp_fn, shift, options.covariance_type, sample_weight, chunk_size=options.chunk_size
        )
        return variational_m_step(stats, shift, prior, options.reg_covar, weight_concentration_prior_type)

    def fit_one(restart_key, restart_index) -> FitState:
        posterior = cast(Any, start_posterior(restart_key))  # initial_state reads its dtype and K only
        start = initial_state(posterior, None, options.max_iter, options.lower_bound_init)
        if options.max_iter == 0:
            return start
        operands = VariationalOperands(
            X, sample_weight, options.tol, options.reg_covar, restart_index if report_every else None
        )
        return run_variational(
            start, operands, max_iter=options.max_iter, chunk_size=options.chunk_size, report_every=report_every
        )

    return run_restarts(key, options, fit_one)


_fit_variational_for_size = compiled(
    fit_variational_restarts, static_argnames=("num_components", "weight_concentration_prior_type", "report_every")
)


# --------------------------------------------------------------------------- the boundary


def _check_positive(name: str, value):
    if value is None or v.is_traced(value):
        return value
    if isinstance(value, bool) or np.ndim(value) != 0 or not np.issubdtype(np.asarray(value).dtype, np.number):
        raise ValueError(f"{name} must be a positive number (or None for scikit-learn's default), got {value!r}.")
    if not (np.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a positive finite number (or None for scikit-learn's default), got {value}.")
    return float(value)


def check_prior(prior: VariationalPrior, num_features: int, covariance_type: str) -> VariationalPrior:
    """The user's prior hyperparameters checked (scikit-learn's rules and phrases); ``None``s stay."""
    mean = prior.mean
    if mean is not None and not v.is_traced(mean):
        arr = np.asarray(mean, dtype=float)
        if arr.shape != (num_features,):
            raise ValueError(
                f"The parameter 'means' should have the shape of ({num_features},), but got {arr.shape}: "
                f"mean_prior must be a ({num_features},) array (one value per feature)."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError("mean_prior must be finite.")
    dof = prior.degrees_of_freedom
    if dof is not None and not v.is_traced(dof):
        dof = _check_positive("degrees_of_freedom_prior", dof)
        if not dof > num_features - 1.0:
            raise ValueError(
                f"The parameter 'degrees_of_freedom_prior' should be greater than {num_features - 1}, but got "
                f"{dof:.3f}: the Wishart prior needs more than D - 1 degrees of freedom."
            )
    covariance = prior.covariance
    if covariance is not None and not v.is_traced(covariance):
        if covariance_type == "spherical":
            covariance = _check_positive("covariance_prior (spherical: one variance)", covariance)
        elif covariance_type == "diag":
            arr = np.asarray(covariance, dtype=float)
            if arr.shape != (num_features,):
                raise ValueError(
                    f"The parameter 'diag covariance_prior' should have the shape of ({num_features},), but got "
                    f"{arr.shape}: covariance_prior must be one variance per feature."
                )
            if not np.all(np.isfinite(arr) & (arr > 0)):
                raise ValueError("'diag covariance_prior' should be positive: covariance_prior must be positive.")
        else:
            arr = np.asarray(covariance, dtype=float)
            if arr.shape != (num_features, num_features):
                raise ValueError(
                    f"The parameter '{covariance_type} covariance_prior' should have the shape of "
                    f"({num_features}, {num_features}), but got {arr.shape}: covariance_prior must be a D x D matrix."
                )
            v.check_covariance_like("covariance_prior", arr, 1, num_features, "tied")
    return VariationalPrior(
        weight_concentration=_check_positive("weight_concentration_prior", prior.weight_concentration),
        mean_precision=_check_positive("mean_precision_prior", prior.mean_precision),
        mean=mean,
        degrees_of_freedom=dof,
        covariance=covariance,
    )


def check_weight_prior_type(weight_concentration_prior_type) -> str:
    if weight_concentration_prior_type not in WEIGHT_PRIOR_TYPES:
        raise ValueError(
            f"weight_concentration_prior_type must be one of {WEIGHT_PRIOR_TYPES}, got "
            f"{weight_concentration_prior_type!r}."
        )
    return weight_concentration_prior_type


def fit_variational(
    key: jax.Array,
    X: jax.typing.ArrayLike,
    num_components: int,
    options: FitOptions | None = None,
    *,
    weight_concentration_prior_type: str = "dirichlet_process",
    weight_concentration_prior=None,
    mean_precision_prior=None,
    mean_prior=None,
    degrees_of_freedom_prior=None,
    covariance_prior=None,
    sample_weight: jax.typing.ArrayLike | None = None,
    posterior_init: VariationalPosterior | None = None,
    verbose: bool | int = False,
    verbose_interval: int = DEFAULT_VERBOSE_INTERVAL,
    _resp_init=None,
    **option_keywords,
) -> FitResult:
    """Fits a variational Bayesian Gaussian mixture (scikit-learn's ``BayesianGaussianMixture``),
    ``n_init`` restarts in one vmapped, jitted call.

    Each restart starts from its initial responsibilities (``init_params``, as
    :func:`gmmjax.fit_em`), computes the posterior from them, then alternates the variational
    E-step (the EM E-step on expected log-terms: chunked, GEMM-shaped, additive statistics)
    and the posterior update until the lower bound changes by less than ``tol`` (absolute, as
    scikit-learn; the bound is not divided by ``N``) or ``max_iter`` iterations have run. The
    restart with the highest lower bound is kept. Works under ``jit`` (``num_components`` and
    ``weight_concentration_prior_type`` static) and ``vmap`` (e.g. over equally shaped datasets).

    With the Dirichlet-process prior (the default) and a small ``weight_concentration_prior``,
    components the data does not need get expected weights near zero: fit a generous ``K``.

    Args:
      key: ``jax.random`` key.
      X: ``(N, D)`` data; float64 is kept when ``jax_enable_x64`` is on, else float32.
      num_components: ``K``, the largest number of components.
      options: a :class:`~gmmjax.FitOptions` (``weights_init``/``means_init``/``precisions_init``
        are not used by this model and must stay ``None``).
      weight_concentration_prior_type: ``"dirichlet_process"`` (stick breaking) or
        ``"dirichlet_distribution"``.
      weight_concentration_prior: ``γ > 0`` (``None``: ``1 / K``).
      mean_precision_prior: ``κ₀ > 0`` (``None``: 1).
      mean_prior: ``(D,)`` (``None``: the data mean).
      degrees_of_freedom_prior: ``ν₀ > D − 1`` (``None``: ``D``).
      covariance_prior: ``(D, D)`` for full/tied, ``(D,)`` diag, a number for spherical
        (``None``: the data covariance with ``ddof=1``, its diagonal, or the diagonal's mean).
      sample_weight: optional ``(N,)`` non-negative weights (scikit-learn has none; here they
        act as repeated rows, also in the default priors).
      posterior_init: a :class:`VariationalPosterior` to continue from (scikit-learn's
        ``warm_start``) instead of initial responsibilities: one restart (``n_init`` must be 1)
        whose first E-step uses it; its ``K``, ``D``, covariance type and weight prior type
        must be this fit's. The prior is resolved for this ``X`` as in any fit (scikit-learn
        recomputes it too). With ``options.lower_bound_init`` (the previous ``lower_bound``)
        the convergence test continues from the previous fit, so fitting ``max_iter=1`` at a
        time converges when one long fit does.
      verbose: show progress on stderr, as :func:`gmmjax.fit_em` (iteration, best lower
        bound, restarts converged, time left); not under the caller's ``jit``/``vmap``.
      verbose_interval: iterations between progress reports (and each restart's last one).
      **option_keywords: fields of :class:`~gmmjax.FitOptions`: ``covariance_type``,
        ``max_iter`` (default 100), ``tol`` (1e-3), ``reg_covar`` (1e-6), ``n_init``,
        ``init_params``, ``chunk_size``, ``restart_batch_size``, ...

    Returns:
      A :class:`~gmmjax.FitResult` whose ``params`` is the best restart's
      :class:`VariationalPosterior` (``restarts.params`` every restart's), ``lower_bound``
      scikit-learn's ``lower_bound_`` and ``lower_bound_history`` its ``lower_bounds_``.

    Example:
      >>> import jax, numpy as np, gmmjax as gj
      >>> X = gj.generate_gmm_data(400, np.array([0.5, 0.5]), np.array([[0.0, 0.0], [6.0, 6.0]]),
      ...                          np.stack([np.eye(2)] * 2))
      >>> result = gj.fit_variational(jax.random.key(0), X, 5)
      >>> int((result.params.weights > 0.05).sum())  # the Dirichlet process keeps two components
      2
    """
    prior_type = check_weight_prior_type(weight_concentration_prior_type)
    options = fit_options(options, **option_keywords)
    require_no_prior(options.prior, "fit_variational (its priors are its own arguments)")
    if options.has_initial_parameters:
        raise ValueError(
            "fit_variational starts from initial responsibilities (init_params): weights_init, means_init and "
            "precisions_init are not used by the variational model; leave them None."
        )
    inputs = check_fit_inputs(key, X, num_components, options, sample_weight)
    prior = check_prior(
        VariationalPrior(
            weight_concentration_prior, mean_precision_prior, mean_prior, degrees_of_freedom_prior, covariance_prior
        ),
        inputs.X.shape[1],
        inputs.options.covariance_type,
    )
    resp = None if _resp_init is None else jnp.asarray(_resp_init, inputs.X.dtype)
    if posterior_init is not None:
        posterior_init = check_posterior_init(posterior_init, inputs, int(num_components), prior_type, resp)
    report_every = check_verbose(verbose, verbose_interval, inputs.key, inputs.X)
    return call_compiled(
        _fit_variational_for_size,
        inputs,
        prior,
        resp,
        posterior_init,
        num_components=int(num_components),
        weight_concentration_prior_type=prior_type,
        report_every=report_every,
    )


def check_posterior_init(posterior, inputs, num_components: int, prior_type: str, resp) -> VariationalPosterior:
    """``posterior`` (a warm start's) checked against this fit, its leaves in the data's dtype."""
    if not isinstance(posterior, VariationalPosterior):
        raise ValueError(
            f"posterior_init must be a gmmjax.VariationalPosterior (e.g. a previous fit's params), got "
            f"{type(posterior).__name__}."
        )
    if resp is not None or inputs.options.n_init != 1:
        raise ValueError("posterior_init continues one fit: use n_init=1 (and no initial responsibilities).")
    expected = (num_components, inputs.X.shape[1], inputs.options.covariance_type, prior_type)
    found = (
        *np.shape(posterior.means)[-2:],
        posterior.covariance_type,
        posterior.weight_concentration_prior_type,
    )
    if np.ndim(posterior.means) != 2 or found != expected:
        raise ValueError(
            f"posterior_init has (K, D, covariance_type, weight_concentration_prior_type) = {found}, but this "
            f"fit has {expected}: continue a fit with the same settings and features, or start afresh "
            "(warm_start=False)."
        )
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, inputs.X.dtype), posterior)
