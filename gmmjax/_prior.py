"""MAP estimation: mclust's conjugate prior on the means and covariances.

The prior of Fraley & Raftery (2007), "Bayesian regularization for normal mixture estimation
and model-based clustering", J. Classification 24:155–181, as mclust's ``priorControl()``
implements it. Given the covariance, each mean is normal about ``μ_P`` with covariance
``Σ_k / κ_P``; the covariances are inverse-Wishart (full, tied) or inverse-gamma (each
variance of diag, the variance of spherical). The mixing weights have no prior and keep
the maximum-likelihood update, as in mclust.

MAP EM is EM with an M-step that adds the prior's *pseudo-statistics* to the summed
statistics (:func:`prior_stats`: ``κ_P`` pseudo-observations at ``μ_P`` and the scatter
``Λ_P``, in the same :class:`~gmmjax._stats.SufficientStats` monoid) and divides the
scatter by the posterior mode's denominator instead of the count. The formulas follow
mclust 6.1.3's Fortran M-steps with a prior, ``src/mclust.f``: ``msvvvp`` (VVV, full),
``mseeep`` (EEE, tied), ``msvvip`` (VVI, diag), ``msviip`` (VII, spherical); the default
hyperparameters follow ``defaultPrior`` in ``R/mclust.R``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._params import GMMParams, check_covariance_type

# mclust's defaultPrior: shrinkage 0.01; dof = D + 2.
DEFAULT_SHRINKAGE = 0.01


@dataclasses.dataclass(frozen=True)
class ConjugatePrior:
    """mclust's conjugate prior for MAP EM (``prior=`` of :func:`gmmjax.fit_em`).

    A pytree: the four hyperparameters are leaves (a new prior of the same shapes reuses the
    compiled fit; they may be traced, e.g. ``vmap`` over priors), ``covariance_type`` static.
    Build mclust's defaults with :meth:`ConjugatePrior.default`.

    The prior density, with ``κ = shrinkage``, ``μ_P = mean``, ``ν = dof``, ``Λ = scale``:

    - full: ``μ_k | Σ_k ~ N(μ_P, Σ_k / κ)``, ``Σ_k ~ IW(ν, Λ)`` (density ``∝ |Σ|^{-(ν+D+1)/2}
      exp(−tr(Σ⁻¹Λ)/2)``), independently per component;
    - tied: one ``Σ ~ IW(ν, Λ)``, each ``μ_k | Σ ~ N(μ_P, Σ / κ)``;
    - diag: each variance ``σ²_kj ~ IG(ν/2, Λ_j/2)``, ``μ_kj ~ N(μ_Pj, σ²_kj / κ)``;
    - spherical: ``σ²_k ~ IG(ν/2, Λ/2)``, ``μ_k ~ N(μ_P, σ²_k I / κ)``.

    ``shrinkage = 0`` drops the prior on the means (a flat one, as mclust).

    Attributes:
      shrinkage: ``()`` ``κ_P ≥ 0``.
      mean: ``(D,)`` ``μ_P``.
      dof: ``()`` ``ν_P`` (``> D − 1`` for full/tied, ``> 0`` otherwise).
      scale: ``Λ_P``: ``(D, D)`` positive definite for full/tied, ``(D,)`` positive for
        diag, ``()`` positive for spherical.
      covariance_type: static; the covariance type of the fits it applies to.
    """

    shrinkage: Any
    mean: Any
    dof: Any
    scale: Any
    covariance_type: str = "full"

    def __post_init__(self):
        check_covariance_type(self.covariance_type)

    def replace(self, **changes) -> ConjugatePrior:
        return dataclasses.replace(self, **changes)

    @classmethod
    def default(
        cls,
        X: jax.typing.ArrayLike,
        num_components: int,
        covariance_type: str = "full",
        *,
        shrinkage=DEFAULT_SHRINKAGE,
        mean=None,
        dof=None,
        scale=None,
    ) -> ConjugatePrior:
        """mclust's default prior (``priorControl()`` → ``defaultPrior``) for data ``X``.

        From mclust 6.1.3 ``R/mclust.R``, ``defaultPrior(data, G, modelName)``, with
        ``G = num_components``, ``D`` features, ``var`` the sample variance (divisor
        ``N − 1``):

        - ``shrinkage = 0.01``, ``mean`` = the column means of ``X``, ``dof = D + 2``;
        - full ("VVV") and tied ("EEE"): ``scale = var(X) / G^(2/D)`` (the ``D × D`` sample
          covariance; its diagonal when ``N ≤ D``);
        - diag ("VVI") and spherical ("VII"): the scalar ``Σ_j var(X_j) / D / G^(2/D)``
          (for diag the same value for every feature).

        Keywords replace the defaults (``None``: keep). Works under ``jit`` (with
        ``num_components`` and ``covariance_type`` static) and ``vmap``.

        Example:
          >>> import jax.numpy as jnp, gmmjax as gj
          >>> X = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
          >>> prior = gj.ConjugatePrior.default(X, 2, "spherical")
          >>> float(prior.dof), round(float(prior.scale), 4)
          (4.0, 0.6667)
        """
        check_covariance_type(covariance_type)
        num_components = v.check_int("num_components", num_components, 1)
        X = jnp.asarray(X)
        if not jnp.issubdtype(X.dtype, jnp.floating):
            X = X.astype(v.working_dtype(X.dtype))
        if X.ndim != 2 or X.shape[0] < 2:
            raise ValueError(f"ConjugatePrior.default needs X of shape (N, D) with N >= 2, got {X.shape}.")
        num_samples, num_features = X.shape
        dtype = X.dtype
        column_mean = jnp.mean(X, axis=0)
        factor = (1.0 / num_components) ** (2.0 / num_features)
        centred = X - column_mean[None, :]
        if covariance_kind(covariance_type).matrix:
            if num_samples > num_features:
                default_scale = factor * (centred.T @ centred) / (num_samples - 1)
            else:
                default_scale = factor * jnp.diag(jnp.sum(centred**2, axis=0) / (num_samples - 1))
        else:
            total_variance = jnp.sum(jnp.sum(centred**2, axis=0) / (num_samples - 1))
            default_scale = factor * total_variance / num_features
            if covariance_type == "diag":
                default_scale = jnp.full((num_features,), default_scale)
        as_array = lambda value: jnp.asarray(value, dtype)  # noqa: E731
        return cls(
            shrinkage=as_array(shrinkage),
            mean=column_mean if mean is None else as_array(mean),
            dof=as_array(num_features + 2 if dof is None else dof),
            scale=default_scale if scale is None else as_array(scale),
            covariance_type=covariance_type,
        )


jax.tree_util.register_dataclass(
    ConjugatePrior, data_fields=["shrinkage", "mean", "dof", "scale"], meta_fields=["covariance_type"]
)


def scale_shape(covariance_type: str, num_features: int) -> tuple[int, ...]:
    """The shape of ``ConjugatePrior.scale`` for a covariance type."""
    if covariance_kind(covariance_type).matrix:
        return (num_features, num_features)
    return (num_features,) if covariance_type == "diag" else ()


def check_prior(prior, covariance_type: str, num_features: int, dtype=None) -> ConjugatePrior:
    """``prior`` checked against a fit (covariance type, number of features), its leaves as
    arrays of ``dtype`` (default: kept). Traced leaves pass unchecked."""
    if not isinstance(prior, ConjugatePrior):
        raise TypeError(
            f"prior must be a gmmjax.ConjugatePrior (e.g. gj.ConjugatePrior.default(X, K, covariance_type)), "
            f"'default' (mclust's defaults) or None, got {prior!r}."
        )
    if prior.covariance_type != covariance_type:
        raise ValueError(
            f"the prior is for covariance_type={prior.covariance_type!r} but the fit uses {covariance_type!r}: "
            "build it with the fit's covariance type."
        )
    shapes = {"shrinkage": (), "mean": (num_features,), "dof": (), "scale": scale_shape(covariance_type, num_features)}
    leaves = {}
    for name, shape in shapes.items():
        value = getattr(prior, name)
        if v.is_traced(value):
            leaves[name] = value if dtype is None else value.astype(dtype)
            continue
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != shape:
            raise ValueError(
                f"prior.{name} must have shape {shape} for {covariance_type!r} covariances, got {arr.shape}."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"prior.{name} must be finite, got {value!r}.")
        leaves[name] = value if dtype is None else jnp.asarray(value, dtype)
    concrete = lambda name: None if v.is_traced(getattr(prior, name)) else np.asarray(getattr(prior, name), float)  # noqa: E731
    shrinkage, dof, scale = concrete("shrinkage"), concrete("dof"), concrete("scale")
    if shrinkage is not None and shrinkage < 0:
        raise ValueError(f"prior.shrinkage must be non-negative (0: no prior on the means), got {float(shrinkage)}.")
    matrix = covariance_kind(covariance_type).matrix
    least_dof = num_features - 1 if matrix else 0
    if dof is not None and dof <= least_dof:
        raise ValueError(
            f"prior.dof must be greater than {least_dof} for {covariance_type!r} covariances "
            f"(a proper prior; mclust's default is D + 2 = {num_features + 2}), got {float(dof)}."
        )
    if scale is not None:
        if matrix:
            try:
                np.linalg.cholesky(0.5 * (scale + scale.T))
            except np.linalg.LinAlgError:
                raise ValueError("prior.scale must be a symmetric positive definite (D, D) matrix.") from None
            if not np.allclose(scale, scale.T, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(scale).max())):
                raise ValueError("prior.scale must be a symmetric positive definite (D, D) matrix.")
        elif np.any(scale <= 0):
            raise ValueError(f"prior.scale must be positive for {covariance_type!r} covariances.")
    return prior.replace(**leaves)


def resolve_prior(prior, X, num_components: int, covariance_type: str):
    """``prior`` for a fit: ``None`` stays ``None``; ``"default"`` becomes
    :meth:`ConjugatePrior.default` of ``X``; a :class:`ConjugatePrior` is checked."""
    if prior is None:
        return None
    if isinstance(prior, str):
        if prior != "default":
            raise ValueError(f"prior must be None, 'default' or a gmmjax.ConjugatePrior, got {prior!r}.")
        return ConjugatePrior.default(X, num_components, covariance_type)
    return check_prior(prior, covariance_type, jnp.shape(X)[1])


def require_no_prior(prior, where: str) -> None:
    """Raises where a way of fitting does not support ``prior=`` (yet)."""
    if prior is not None:
        raise ValueError(
            f"prior= (MAP EM) is supported by fit_em on one device and the estimator, not by {where}: leave prior=None."
        )


def _indicator(shrinkage):
    """``1`` where the means have a prior (``κ > 0``), else ``0``: the mean prior's share of
    the posterior mode's denominator (mclust's ``if (pshrnk .gt. zero)``)."""
    return jnp.where(shrinkage > 0, 1.0, 0.0).astype(jnp.result_type(shrinkage))


def prior_stats(prior: ConjugatePrior, shift: jax.Array):
    """The prior's pseudo-statistics about ``shift`` ``(K, D)``, in the shape of
    :class:`~gmmjax._stats.SufficientStats`: ``κ`` pseudo-observations at ``μ_P`` per
    component and the scatter ``Λ`` (for tied, ``Λ / K`` per component: ``Λ`` in total; for
    spherical, ``Λ / D`` per feature: ``Λ`` in the trace)."""
    from gmmjax._stats import SufficientStats

    kind = covariance_kind(prior.covariance_type)
    num_components, num_features = shift.shape
    dtype = shift.dtype
    shrinkage = jnp.asarray(prior.shrinkage, dtype)
    offsets = jnp.asarray(prior.mean, dtype)[None, :] - shift  # (K, D)
    scale = jnp.asarray(prior.scale, dtype)
    if kind.shared:
        scale = scale / num_components
    elif prior.covariance_type == "spherical":
        scale = jnp.full((num_features,), scale / num_features)
    second = shrinkage * kind.outer(offsets, offsets) + scale[None]
    return SufficientStats(
        counts=jnp.full((num_components,), shrinkage),
        first_moments=shrinkage * offsets,
        second_moments=second,
        covariance_type=prior.covariance_type,
    )


def map_offsets_and_covariances(stats, counts: jax.Array, shift: jax.Array, prior: ConjugatePrior):
    """The MAP means (as offsets from ``shift``) and unregularised covariances from summed
    statistics ``stats`` about ``shift`` and guarded ``counts`` ``(K,)`` (see
    :func:`gmmjax._stats.m_step_with_diagnostics`).

    With the statistics plus the prior's pseudo-statistics (``n' = n + κ``), the means are
    ``(n_k x̄_k + κ μ_P) / (n_k + κ)`` and the posterior scatter is
    ``Λ + W_k + κ n_k / (n_k + κ) (x̄_k − μ_P)(x̄_k − μ_P)ᵀ`` (``W_k`` the within scatter),
    divided by (``δ = 1`` if ``κ > 0`` else 0; mclust ``src/mclust.f``):

    - full (``msvvvp``): ``ν + n_k + D + 1 + δ``;
    - tied (``mseeep``): the scatters summed over components, ``ν + n + D + 1 + K δ``;
    - diag (``msvvip``): ``ν + n_k + 2 + δ`` per feature;
    - spherical (``msviip``): the trace, ``ν + n_k D + 2 + D δ``.
    """
    kind = covariance_kind(stats.covariance_type)
    pseudo = prior_stats(prior, shift)
    post_counts = counts + pseudo.counts
    post_first = stats.first_moments + pseudo.first_moments
    post_second = stats.second_moments + pseudo.second_moments
    offsets = post_first / post_counts[:, None]
    # covariances_from_moments divides the scatter by the counts; rescale to the mode's denominator.
    cov = kind.covariances_from_moments(post_second, post_counts, offsets)
    dtype = cov.dtype
    dof = jnp.asarray(prior.dof, dtype)
    delta = _indicator(jnp.asarray(prior.shrinkage, dtype))
    num_components, num_features = shift.shape
    if stats.covariance_type == "full":
        cov = cov * (post_counts / (dof + counts + num_features + 1 + delta))[:, None, None]
    elif stats.covariance_type == "tied":
        cov = cov * (jnp.sum(post_counts) / (dof + jnp.sum(counts) + num_features + 1 + num_components * delta))
    elif stats.covariance_type == "diag":
        cov = cov * (post_counts / (dof + counts + 2 + delta))[:, None]
    else:
        cov = cov * (post_counts * num_features / (dof + counts * num_features + 2 + num_features * delta))
    return offsets, cov


def _log_inverse_wishart(covariance, dof, scale):
    """``log IW(Σ | ν, Λ)`` for one ``(D, D)`` ``Σ``."""
    num_features = covariance.shape[-1]
    chol = jnp.linalg.cholesky(covariance)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    _, log_det_scale = jnp.linalg.slogdet(scale)
    trace = jnp.trace(jax.scipy.linalg.cho_solve((chol, True), scale))
    return (
        0.5 * dof * log_det_scale
        - 0.5 * dof * num_features * math.log(2.0)
        - jax.scipy.special.multigammaln(0.5 * dof, num_features)
        - 0.5 * (dof + num_features + 1) * log_det
        - 0.5 * trace
    )


def _log_inverse_gamma(variance, dof, scale):
    """``log IG(σ² | ν/2, Λ/2)`` elementwise."""
    alpha, beta = 0.5 * dof, 0.5 * scale
    return alpha * jnp.log(beta) - jax.scipy.special.gammaln(alpha) - (alpha + 1) * jnp.log(variance) - beta / variance


def log_prior(params: GMMParams, prior: ConjugatePrior) -> jax.Array:
    """``()`` the log-density of the prior at ``params`` (normalised; the weights have none).

    The mean term is left out when ``shrinkage = 0`` (a flat prior). The penalised objective
    of MAP EM is ``Σ_n s_n log p(x_n) + log_prior(params, prior)``; it never decreases.
    Differentiable in ``params`` and in the prior's leaves.
    """
    dtype = params.means.dtype
    shrinkage = jnp.asarray(prior.shrinkage, dtype)
    dof = jnp.asarray(prior.dof, dtype)
    scale = jnp.asarray(prior.scale, dtype)
    offsets = params.means - jnp.asarray(prior.mean, dtype)[None, :]  # (K, D)
    num_components, num_features = params.means.shape
    has_mean_prior = shrinkage > 0
    log_shrinkage = jnp.log(jnp.where(has_mean_prior, shrinkage, 1.0))
    cov = params.covariances
    kind = params.covariance_type
    if kind in ("full", "tied"):
        covs = cov if kind == "full" else jnp.broadcast_to(cov, (num_components, num_features, num_features))
        chol = jnp.linalg.cholesky(covs)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # (K,)
        solved = jax.vmap(lambda c, o: jax.scipy.linalg.solve_triangular(c, o, lower=True))(chol, offsets)
        mahalanobis = jnp.sum(solved**2, axis=-1)
        if kind == "full":
            log_cov_prior = jnp.sum(jax.vmap(lambda c: _log_inverse_wishart(c, dof, scale))(cov))
        else:
            log_cov_prior = _log_inverse_wishart(cov, dof, scale)
    else:
        variances = cov if kind == "diag" else cov[:, None] * jnp.ones((1, num_features), dtype)  # (K, D)
        log_det = jnp.sum(jnp.log(variances), axis=-1)
        mahalanobis = jnp.sum(offsets**2 / variances, axis=-1)
        log_cov_prior = jnp.sum(_log_inverse_gamma(cov, dof, scale[None, :] if kind == "diag" else scale))
    log_mean_prior = jnp.sum(
        -0.5 * num_features * math.log(2.0 * math.pi)
        + 0.5 * num_features * log_shrinkage
        - 0.5 * log_det
        - 0.5 * shrinkage * mahalanobis
    )
    return log_cov_prior + jnp.where(has_mean_prior, log_mean_prior, 0.0)
