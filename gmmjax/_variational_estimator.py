"""``BayesianGaussianMixtureModel``: scikit-learn's ``BayesianGaussianMixture`` interface over
:func:`gmmjax.fit_variational`.

It validates, converts, calls the front door and stores scikit-learn's fitted attributes; the
mathematics lives in :mod:`gmmjax._variational`. It imports without scikit-learn, and reuses the
boundary helpers of :mod:`gmmjax._estimator` (the ``num_components``/``n_components`` alias pair,
seeds, row buckets, not-fitted errors, warnings).
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._estimator import (
    MixtureParameters,
    _convergence_warning,
    _key_from_seed,
    _log_prob,
    _not_fitted,
    _padded_to_bucket,
    _responsibilities,
    _row_bucket,
)
from gmmjax._options import FitOptions
from gmmjax._sampling import _sample_jit
from gmmjax._variational import VariationalPosterior, effective_params, fit_variational


class BayesianGaussianMixtureModel(MixtureParameters):
    """Variational Bayesian Gaussian mixture, with scikit-learn's ``BayesianGaussianMixture``
    parameters, defaults and fitted attributes (see :func:`gmmjax.fit_variational`).

    Args:
      n_components: the largest number of components ``K`` (default 1); alias ``num_components``
        (``GaussianMixtureModel``'s name). Giving both with different values is an error at
        ``fit``; setting one later (``set_params`` or assignment) clears the other, as in
        ``GaussianMixtureModel``.
      covariance_type: ``"full"`` (default), ``"tied"``, ``"diag"`` or ``"spherical"``.
      tol: convergence threshold on the change of the lower bound (default 1e-3).
      reg_covar: non-negative value added to the covariance diagonals (default 1e-6).
      max_iter: iteration limit (default 100).
      n_init: restarts, run as one vmapped batch; the one with the highest lower bound is kept.
      init_params: ``"kmeans"`` (default), ``"k-means++"``, ``"random"``, ``"random_from_data"``.
      weight_concentration_prior_type: ``"dirichlet_process"`` (default) or
        ``"dirichlet_distribution"``.
      weight_concentration_prior: the prior's hyperparameters (``None``: scikit-learn's
        defaults), as in :func:`gmmjax.fit_variational`; so are ``mean_precision_prior``,
        ``mean_prior``, ``degrees_of_freedom_prior`` and ``covariance_prior``.
      random_state: int or ``jax.random`` key (``None`` means 0: reproducible by default).
      warm_start: when true, a ``fit`` after the first continues from the previous posterior
        (one restart; ``posterior_init`` of :func:`gmmjax.fit_variational`) and its
        convergence test starts from the previous ``lower_bound_``, as scikit-learn's: fitting
        ``max_iter=1`` at a time converges when one long fit does. It needs the same
        ``n_components``, ``covariance_type``, ``weight_concentration_prior_type`` and number
        of features.
      verbose: show the fit's progress on stderr, as ``GaussianMixtureModel``'s (see
        :func:`gmmjax.fit_em`); default off.
      verbose_interval: iterations between progress reports (default 10).
      chunk_size: rows per chunk in every pass over the data (``None``: automatic).
      restart_batch_size: restarts run together (``None``: all ``n_init``).

    Fitted attributes: ``weight_concentration_`` (a tuple of two ``(K,)`` arrays for the
    Dirichlet process, else ``(K,)``), ``weight_concentration_prior_``, ``mean_precision_``,
    ``mean_precision_prior_``, ``mean_prior_``, ``means_``, ``degrees_of_freedom_``,
    ``degrees_of_freedom_prior_``, ``covariance_prior_`` (the ``*_prior_`` are the given
    hyperparameters as given, float64, or else the defaults computed for the data in its
    dtype), ``covariances_``, ``precisions_``,
    ``precisions_cholesky_``, ``weights_``, ``converged_``, ``n_iter_``, ``lower_bound_``,
    ``lower_bounds_``, ``n_features_in_``, ``posterior_`` (a :class:`VariationalPosterior`)
    and ``fit_result_``.

    ``predict``, ``predict_proba`` and ``score_samples`` use the variational expected
    log-terms, as scikit-learn's (``score_samples`` is then not a normalised density);
    ``sample`` draws from the point estimate ``(weights_, means_, covariances_)``.

    Example:
      >>> import numpy as np, gmmjax as gj
      >>> X = gj.generate_gmm_data(400, np.array([0.5, 0.5]), np.array([[0.0, 0.0], [6.0, 6.0]]),
      ...                          np.stack([np.eye(2)] * 2))
      >>> model = gj.BayesianGaussianMixtureModel(n_components=5, random_state=0).fit(X)
      >>> int((model.weights_ > 0.05).sum())
      2
    """

    def __init__(
        self,
        *,
        n_components=None,
        num_components=None,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        chunk_size=None,
        restart_batch_size=None,
    ):
        self.n_components = n_components
        self.num_components = num_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.chunk_size = chunk_size
        self.restart_batch_size = restart_batch_size

    def __sklearn_is_fitted__(self) -> bool:
        return "posterior_" in self.__dict__

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fits the variational posterior to ``X`` ``(N, D)`` (``sample_weight`` ``(N,)`` optional,
        as repeated rows); returns ``self``."""
        num_components = self._resolved_num_components()
        options = FitOptions(
            covariance_type=self.covariance_type,
            max_iter=self.max_iter,
            n_init=self.n_init,
            init_params=self.init_params,
            chunk_size=self.chunk_size,
            restart_batch_size=self.restart_batch_size,
            tol=self.tol,
            reg_covar=self.reg_covar,
        )
        posterior_init = None
        if self.warm_start and "posterior_" in self.__dict__:
            # scikit-learn's warm start: one restart from the previous posterior, the
            # convergence test continuing from the previous lower bound.
            posterior_init = self.posterior_
            options = options.replace(n_init=1, lower_bound_init=self.lower_bound_)
        result = fit_variational(
            _key_from_seed(self.random_state),
            X,
            num_components,
            options,
            weight_concentration_prior_type=self.weight_concentration_prior_type,
            weight_concentration_prior=self.weight_concentration_prior,
            mean_precision_prior=self.mean_precision_prior,
            mean_prior=self.mean_prior,
            degrees_of_freedom_prior=self.degrees_of_freedom_prior,
            covariance_prior=self.covariance_prior,
            sample_weight=sample_weight,
            posterior_init=posterior_init,
            verbose=self.verbose,
            verbose_interval=self.verbose_interval,
        )
        self._store(result)
        if not self.converged_ and options.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init parameters, or increase "
                f"max_iter, tol, or check for degenerate data. The lower bound did not converge within "
                f"{options.max_iter} iterations (tol={self.tol}).",
                _convergence_warning(),
                stacklevel=2,
            )
        return self

    def _store(self, result):
        posterior: VariationalPosterior = result.params
        best = int(result.best_restart)
        self.fit_result_ = result
        self.posterior_ = posterior
        concentration = posterior.weight_concentration
        if isinstance(concentration, tuple):
            self.weight_concentration_ = tuple(np.asarray(part) for part in concentration)
        else:
            self.weight_concentration_ = np.asarray(concentration)
        # The given hyperparameters as given (float64, as scikit-learn stores them; the fit used
        # them in the data's dtype), the defaults as the fit computed them.
        prior = posterior.prior

        def resolved(given, fitted):
            value = np.asarray(fitted if given is None else given, None if given is None else np.float64)
            return float(value) if value.ndim == 0 else value

        self.weight_concentration_prior_ = resolved(self.weight_concentration_prior, prior.weight_concentration)
        self.mean_precision_prior_ = resolved(self.mean_precision_prior, prior.mean_precision)
        self.mean_prior_ = resolved(self.mean_prior, prior.mean)
        self.degrees_of_freedom_prior_ = resolved(self.degrees_of_freedom_prior, prior.degrees_of_freedom)
        self.covariance_prior_ = resolved(self.covariance_prior, prior.covariance)
        self.mean_precision_ = np.asarray(posterior.mean_precision)
        self.means_ = np.asarray(posterior.means)
        self.degrees_of_freedom_ = np.asarray(posterior.degrees_of_freedom)
        self.covariances_ = np.asarray(posterior.covariances)
        self.precisions_cholesky_ = np.asarray(posterior.precisions_cholesky)
        self.precisions_ = np.asarray(
            covariance_kind(posterior.covariance_type).precisions_from_precision_cholesky(posterior.precisions_cholesky)
        )
        self.weights_ = np.asarray(posterior.weights)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.lower_bound)
        self.lower_bounds_ = np.asarray(result.lower_bound_history[best, : self.n_iter_])
        self.n_features_in_ = posterior.num_features
        self._effective_params = effective_params(posterior)

    # -- inference -------------------------------------------------------------------------
    def _fitted_posterior(self, method) -> VariationalPosterior:
        if "posterior_" not in self.__dict__:
            raise _not_fitted(f"call fit(X) before {method}().", "BayesianGaussianMixture")
        return self.posterior_

    def _check_input(self, X, method):
        self._fitted_posterior(method)
        params = self._effective_params
        X, num_rows = _padded_to_bucket(X)
        X = v.check_data(X, "X", num_features=params.num_features)
        return params, X.astype(params.means.dtype), num_rows

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fits and returns the component of each sample (same as ``fit(X).predict(X)``)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def predict_proba(self, X):
        """Posterior component probabilities ``(N, K)`` (scikit-learn's: from the expected log-terms)."""
        params, X, n = self._check_input(X, "predict_proba")
        return np.asarray(_responsibilities(params, X, chunk_size=self.chunk_size))[:n]

    def predict(self, X):
        """Most probable component of each sample: ``(N,)`` int."""
        return np.argmax(self.predict_proba(X), axis=1)

    def score_samples(self, X):
        """scikit-learn's ``score_samples``: ``log Σ_k exp(E[log π_k] + E[log N(x | μ_k, Λ_k)])`` ``(N,)``."""
        params, X, n = self._check_input(X, "score_samples")
        return np.asarray(_log_prob(params, X, chunk_size=self.chunk_size))[:n]

    def score(self, X, y=None):
        """Mean of :meth:`score_samples`."""
        self._fitted_posterior("score")  # so that the not-fitted message names score(), not score_samples()
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, key=None):
        """Draws ``n_samples`` points from ``(weights_, means_, covariances_)``; returns ``(X, labels)``."""
        params = self._fitted_posterior("sample").to_gmm_params()
        n_samples = v.check_int("n_samples", n_samples, 1)
        v.check_sample_memory(n_samples, params)
        if key is None:
            key = jax.random.fold_in(_key_from_seed(self.random_state), 1)
        X, labels = _sample_jit(key, params, _row_bucket(n_samples))
        return np.asarray(X)[:n_samples], np.asarray(labels)[:n_samples]
