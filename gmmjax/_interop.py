"""Moving mixtures between gmmjax and the tools people already use.

- scikit-learn: :func:`params_to_sklearn` / :func:`params_from_sklearn` convert parameters to
  and from a fitted ``sklearn.mixture.GaussianMixture`` (the estimator's ``to_sklearn`` /
  ``from_sklearn`` add its hyperparameters and fit diagnostics), and :func:`sklearn_tags`
  describes the estimator to scikit-learn's tag machinery.
- numpyro and distrax: :func:`to_numpyro` / :func:`to_distrax` build a ``MixtureSameFamily``
  distribution whose ``log_prob`` is :func:`gmmjax.log_prob`.

Every third-party library is imported inside the function that needs it: ``import gmmjax``
works without any of them.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._params import GMMParams, check_covariance_type


def _require(module: str, package: str, extra: str, purpose: str):
    """Imports ``module`` or raises an ImportError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs {package}, which is not installed: pip install 'gmmjax[{extra}]' "
            f"(or pip install {package}). ({exc})"
        ) from exc


def _check_params(params) -> GMMParams:
    if not isinstance(params, GMMParams):
        raise ValueError(f"params must be a gmmjax.GMMParams (e.g. model.params), got {type(params).__name__}.")
    return params


# -- scikit-learn ---------------------------------------------------------------------------------
def _sklearn_gaussian_mixture():
    return _require("sklearn.mixture", "scikit-learn", "sklearn", "Converting to or from scikit-learn").GaussianMixture


def _sklearn_precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """scikit-learn's ``precisions_cholesky_`` from covariances, in float64 NumPy (as scikit-learn
    computes it), so that the converted model predicts with scikit-learn's own numbers."""
    return covariance_kind(covariance_type).sklearn_precision_cholesky(covariances)


def params_to_sklearn(params: GMMParams, **gaussian_mixture_kwargs):
    """A fitted ``sklearn.mixture.GaussianMixture`` holding ``params``.

    Its ``predict``, ``predict_proba``, ``score_samples``, ``sample``, ``bic`` and ``aic``
    work at once and agree with gmmjax's on the same parameters (to the rounding of the
    dtype gmmjax computed in); its arrays are float64, as scikit-learn fits them.

    Args:
      params: unbatched :class:`GMMParams` (``K`` components, ``D`` features).
      **gaussian_mixture_kwargs: constructor arguments of ``GaussianMixture`` (``tol``,
        ``random_state``...); ``n_components`` and ``covariance_type`` come from ``params``.

    Returns:
      A ``GaussianMixture`` with ``weights_``, ``means_``, ``covariances_``,
      ``precisions_``, ``precisions_cholesky_`` and ``n_features_in_`` set (and
      ``converged_``/``n_iter_``/``lower_bound_`` placeholders: ``True``, ``0``, ``-inf``).

    Raises:
      ImportError: scikit-learn is not installed.
      ValueError: ``params`` is not a single (unbatched) mixture.
    """
    params = _check_params(params)
    GaussianMixture = _sklearn_gaussian_mixture()
    if np.ndim(params.means) != 2:
        raise ValueError(
            f"params must hold one mixture (means of shape (K, D)), got means of shape "
            f"{np.shape(params.means)}: convert one element of a batch at a time."
        )
    covariance_type = params.covariance_type
    gm = GaussianMixture(n_components=params.num_components, covariance_type=covariance_type, **gaussian_mixture_kwargs)
    covariances = np.asarray(params.covariances, np.float64)
    prec_chol = _sklearn_precision_cholesky(covariances, covariance_type)
    gm.weights_ = np.asarray(params.weights, np.float64)
    gm.means_ = np.asarray(params.means, np.float64)
    gm.covariances_ = covariances
    gm.precisions_cholesky_ = prec_chol
    gm.precisions_ = covariance_kind(covariance_type).precisions_from_precision_cholesky(prec_chol, xp=np)
    gm.n_features_in_ = params.num_features
    gm.converged_, gm.n_iter_, gm.lower_bound_ = True, 0, -np.inf
    return gm


def params_from_sklearn(gaussian_mixture) -> GMMParams:
    """The :class:`GMMParams` of a fitted ``sklearn.mixture.GaussianMixture``.

    The arrays keep scikit-learn's float64 when ``jax_enable_x64`` is on, else become
    float32 (gmmjax's usual rule: :func:`gmmjax._validation.working_dtype`).

    Raises:
      ValueError: ``gaussian_mixture`` is not a fitted ``GaussianMixture`` (a
        ``BayesianGaussianMixture`` is refused: its predictions use posterior expectations,
        not the plain mixture density).
    """
    GaussianMixture = _sklearn_gaussian_mixture()
    if not isinstance(gaussian_mixture, GaussianMixture):
        raise ValueError(f"Expected a sklearn.mixture.GaussianMixture, got {type(gaussian_mixture).__name__}.")
    if not hasattr(gaussian_mixture, "means_"):
        raise ValueError("This GaussianMixture is not fitted yet: call its fit(X) before converting it.")
    covariance_type = check_covariance_type(gaussian_mixture.covariance_type)

    def leaf(value):
        value = np.asarray(value)
        return jnp.asarray(value, dtype=v.working_dtype(value.dtype))

    return GMMParams(
        leaf(gaussian_mixture.weights_),
        leaf(gaussian_mixture.means_),
        leaf(gaussian_mixture.covariances_),
        covariance_type,
    )


# Constructor arguments that mean the same in both estimators (same names, same values).
_SHARED_HYPERPARAMETERS = (
    "tol",
    "reg_covar",
    "n_init",
    "init_params",
    "weights_init",
    "means_init",
    "precisions_init",
    "warm_start",
)


def model_to_sklearn(model):
    """``GaussianMixtureModel.to_sklearn``: parameters, hyperparameters and fit diagnostics."""
    params = model._fitted_params("to_sklearn")
    hyper = {name: getattr(model, name) for name in _SHARED_HYPERPARAMETERS}
    hyper["max_iter"] = model._resolved_max_iter()
    seed = model._resolved_seed()
    # An int seed carries over (scikit-learn draws differently from it); a jax key cannot.
    hyper["random_state"] = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
    gm = params_to_sklearn(params, **hyper)
    gm.converged_ = bool(model.converged_)
    gm.n_iter_ = int(model.n_iter_)
    gm.lower_bound_ = float(model.lower_bound_)
    gm.lower_bounds_ = [float(b) for b in np.asarray(model.lower_bounds_)]
    return gm


def model_from_sklearn(cls, gaussian_mixture):
    """``GaussianMixtureModel.from_sklearn``: a fitted estimator with the same parameters,
    hyperparameters and fit diagnostics (``random_state`` carries over when it is an int)."""
    params = params_from_sklearn(gaussian_mixture)
    sk = gaussian_mixture.get_params()
    hyper = {name: sk[name] for name in _SHARED_HYPERPARAMETERS}
    random_state = sk["random_state"]
    seed = (
        int(random_state)
        if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool)
        else None
    )
    model = cls(
        n_components=params.num_components,
        max_iter=sk["max_iter"],
        covariance_type=params.covariance_type,
        random_state=seed,
        **hyper,
    )
    model._set_params_attributes(params)
    lower_bound = float(getattr(gaussian_mixture, "lower_bound_", np.nan))
    model.converged_ = bool(getattr(gaussian_mixture, "converged_", True))
    model.n_iter_ = int(getattr(gaussian_mixture, "n_iter_", 0))
    model.lower_bound_ = lower_bound
    model.lower_bounds_ = np.asarray(getattr(gaussian_mixture, "lower_bounds_", [lower_bound]), np.float64)
    model.collapsed_components_ = np.zeros(params.num_components, bool)
    model.n_features_in_ = params.num_features
    return model


def sklearn_tags():
    """scikit-learn's ``Tags`` for :class:`GaussianMixtureModel`: an unsupervised density
    estimator on dense 2-D numeric data without NaN (scikit-learn's ``GaussianMixture`` tags)."""
    from sklearn.utils import Tags, TargetTags

    return Tags(
        estimator_type="density_estimator",
        target_tags=TargetTags(required=False),
        transformer_tags=None,
        regressor_tags=None,
        classifier_tags=None,
    )


@functools.cache
def sklearn_not_fitted_error_type(gmmjax_not_fitted_error: type, reconstruct) -> type:
    """A subclass of both gmmjax's and scikit-learn's ``NotFittedError`` (made on first use,
    once scikit-learn is loaded), so ``except`` clauses of either library catch it.
    ``reconstruct(message)`` rebuilds an instance when it is unpickled (e.g. across joblib
    workers), since a class made at run time cannot be found by name."""
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    return type(
        "NotFittedError",
        (gmmjax_not_fitted_error, SklearnNotFittedError),
        {
            "__module__": gmmjax_not_fitted_error.__module__,
            "__doc__": gmmjax_not_fitted_error.__doc__,
            "__reduce__": lambda self: (reconstruct, self.args),
        },
    )


@functools.cache
def sklearn_convergence_warning_type(gmmjax_convergence_warning: type) -> type:
    """A subclass of both gmmjax's and scikit-learn's ``ConvergenceWarning`` (made on first use,
    once scikit-learn is loaded), so that warning filters naming either class apply to it
    (e.g. ``warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)``)."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    return type(
        "ConvergenceWarning",
        (gmmjax_convergence_warning, SklearnConvergenceWarning),
        {
            "__module__": gmmjax_convergence_warning.__module__,
            "__doc__": gmmjax_convergence_warning.__doc__,
        },
    )


# -- numpyro and distrax --------------------------------------------------------------------------
def _component_scales(params: GMMParams):
    """Lower Cholesky factors ``(..., K, D, D)`` (full, tied) or standard deviations
    ``(..., K, D)`` (diag, spherical), broadcast to one per component."""
    factor = covariance_kind(params.covariance_type).cholesky_factor(params.covariances)
    return covariance_kind(params.covariance_type).component_scales(factor, params.means)


def to_numpyro(params: GMMParams):
    """The mixture as a ``numpyro.distributions.MixtureSameFamily``.

    Components are ``MultivariateNormal(loc, scale_tril=L)`` for ``"full"`` and ``"tied"``
    (the tied factor repeated per component) and ``Normal(loc, scale).to_event(1)`` for
    ``"diag"`` and ``"spherical"``; the mixing distribution is ``Categorical(probs=weights)``.
    Its ``log_prob`` equals :func:`gmmjax.log_prob` (to rounding); it can be built inside
    ``jit``/``grad``, and leading batch axes of ``params`` become batch dimensions.

    Args:
      params: :class:`GMMParams` (optionally with leading batch axes on every leaf).

    Returns:
      ``numpyro.distributions.MixtureSameFamily`` with event shape ``(D,)``.

    Raises:
      ImportError: numpyro is not installed (``pip install 'gmmjax[numpyro]'``).
    """
    params = _check_params(params)
    ndist = _require("numpyro.distributions", "numpyro", "numpyro", "to_numpyro")
    components = covariance_kind(params.covariance_type).numpyro_components(
        ndist, params.means, _component_scales(params)
    )
    return ndist.MixtureSameFamily(ndist.Categorical(probs=params.weights), components)


def to_distrax(params: GMMParams):
    """The mixture as a ``distrax.MixtureSameFamily``.

    Components are ``MultivariateNormalTri(loc, scale_tri=L)`` for ``"full"`` and ``"tied"``
    and ``MultivariateNormalDiag(loc, scale_diag)`` for ``"diag"`` and ``"spherical"``; the
    mixing distribution is ``Categorical(probs=weights)``. Its ``log_prob`` equals
    :func:`gmmjax.log_prob` (to rounding).

    Args:
      params: :class:`GMMParams` (optionally with leading batch axes on every leaf).

    Returns:
      ``distrax.MixtureSameFamily`` with event shape ``(D,)``.

    Raises:
      ImportError: distrax is not installed (``pip install 'gmmjax[distrax]'``).
    """
    params = _check_params(params)
    distrax = _require("distrax", "distrax", "distrax", "to_distrax")
    components = covariance_kind(params.covariance_type).distrax_components(
        distrax, params.means, _component_scales(params)
    )
    return distrax.MixtureSameFamily(distrax.Categorical(probs=params.weights), components)
