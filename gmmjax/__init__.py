"""gmmjax: Gaussian mixture models in JAX.

Pure functional EM (jitted, vmapped over restarts and datasets) with a scikit-learn-style
estimator on top. See ``README.md`` for examples.
"""

from gmmjax._cache import enable_compilation_cache
from gmmjax._chunks import auto_chunk_size
from gmmjax._covariance import precision_cholesky
from gmmjax._criteria import aic, bic, icl, num_parameters
from gmmjax._density import component_log_prob, log_prob, responsibilities
from gmmjax._driver import FitResult, FitState, restart_keys
from gmmjax._em import fit_em
from gmmjax._estimator import ConvergenceWarning, GaussianMixtureModel, NotFittedError
from gmmjax._gradient import fit_gradient
from gmmjax._init import INIT_METHODS, kmeans, kmeans_plusplus
from gmmjax._interop import params_from_sklearn, params_to_sklearn, to_distrax, to_numpyro
from gmmjax._missing import impute, marginal_log_prob
from gmmjax._model_selection import SelectionResult, select_num_components
from gmmjax._online import OnlineEMState, online_em_init, online_em_update
from gmmjax._options import FitOptions
from gmmjax._params import COVARIANCE_TYPES, GMMParams
from gmmjax._prior import ConjugatePrior, log_prior
from gmmjax._sampling import generate_gmm_data, sample
from gmmjax._sharding import ShardedRows, shard_rows
from gmmjax._stats import SufficientStats, e_step, em_step, m_step
from gmmjax._streaming import ParquetSource, ZarrSource, fit_em_streaming
from gmmjax._unconstrained import UnconstrainedParams, from_unconstrained, to_unconstrained, unconstrained_log_prob
from gmmjax._variational import VariationalPosterior, VariationalPrior, fit_variational
from gmmjax._variational_estimator import BayesianGaussianMixtureModel

__version__ = "0.1.0"

__all__ = [
    "BayesianGaussianMixtureModel",
    "COVARIANCE_TYPES",
    "ConjugatePrior",
    "ConvergenceWarning",
    "FitOptions",
    "FitResult",
    "FitState",
    "GMMParams",
    "GaussianMixtureModel",
    "INIT_METHODS",
    "NotFittedError",
    "OnlineEMState",
    "ParquetSource",
    "SelectionResult",
    "ShardedRows",
    "SufficientStats",
    "UnconstrainedParams",
    "VariationalPosterior",
    "VariationalPrior",
    "ZarrSource",
    "aic",
    "auto_chunk_size",
    "bic",
    "component_log_prob",
    "e_step",
    "em_step",
    "enable_compilation_cache",
    "fit_em",
    "fit_em_streaming",
    "fit_gradient",
    "fit_variational",
    "from_unconstrained",
    "generate_gmm_data",
    "icl",
    "impute",
    "kmeans",
    "kmeans_plusplus",
    "log_prior",
    "log_prob",
    "m_step",
    "marginal_log_prob",
    "num_parameters",
    "online_em_init",
    "online_em_update",
    "params_from_sklearn",
    "params_to_sklearn",
    "precision_cholesky",
    "responsibilities",
    "restart_keys",
    "sample",
    "select_num_components",
    "shard_rows",
    "to_distrax",
    "to_numpyro",
    "to_unconstrained",
    "unconstrained_log_prob",
]


def __getattr__(name):
    """``gmmjax.plot`` is imported on first access (it needs matplotlib, an optional extra):
    ``import gmmjax`` alone never imports matplotlib."""
    if name == "plot":
        import importlib

        return importlib.import_module("gmmjax.plot")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
