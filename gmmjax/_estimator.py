"""``GaussianMixtureModel``: a scikit-learn-style estimator over the functional core.

It validates input, converts arrays, calls :func:`gmmjax.fit_em` (or
:func:`gmmjax.fit_gradient`) and stores the results;
it contains no mixture maths of its own. It imports without scikit-learn.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind, precision_cholesky
from gmmjax._criteria import aic as _aic
from gmmjax._criteria import bic as _bic
from gmmjax._criteria import num_parameters
from gmmjax._density import log_prob, responsibilities
from gmmjax._em import fit_em
from gmmjax._gradient import DEFAULT_NUM_STEPS, fit_gradient
from gmmjax._missing import check_missing, impute, marginal_component_log_prob, marginal_log_prob
from gmmjax._options import FitOptions, fit_options
from gmmjax._params import GMMParams
from gmmjax._sampling import _sample_jit

if TYPE_CHECKING:
    from gmmjax._model_selection import SelectionResult


class ConvergenceWarning(UserWarning):
    """A fit stopped at its iteration limit before meeting ``tol``.

    Once scikit-learn is imported, the warning issued is also a
    ``sklearn.exceptions.ConvergenceWarning`` (see :func:`_convergence_warning`), so filters
    on either class apply to it.
    """


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit``.

    Once scikit-learn is imported, the error raised is also a
    ``sklearn.exceptions.NotFittedError`` (see :func:`_not_fitted_error`).
    """


# scikit-learn's sentence for an unfitted estimator (GaussianMixture, BayesianGaussianMixture), to
# the letter: code (and scikit-learn's own tests) match on it.
SKLEARN_NOT_FITTED = (
    "This {} instance is not fitted yet. Call 'fit' with appropriate arguments before using this estimator."
)


def _not_fitted(what_to_do: str, sklearn_name: str = "GaussianMixture") -> NotFittedError:
    """The :class:`NotFittedError` of a method called before ``fit``: scikit-learn's sentence for
    its estimator ``sklearn_name`` (gmmjax's is that name + ``Model``), then ``what_to_do``."""
    return _not_fitted_error(
        f"{SKLEARN_NOT_FITTED.format(sklearn_name)} ({sklearn_name}Model is not fitted yet: {what_to_do})"
    )


def _not_fitted_error(message: str) -> NotFittedError:
    """A :class:`NotFittedError`; when scikit-learn is loaded, one that is also scikit-learn's
    ``NotFittedError``, so that scikit-learn's tools and ``except`` clauses recognise it.
    (Code that catches scikit-learn's class has imported scikit-learn; gmmjax never does.)"""
    if "sklearn" not in sys.modules:
        return NotFittedError(message)
    from gmmjax._interop import sklearn_not_fitted_error_type

    return sklearn_not_fitted_error_type(NotFittedError, _not_fitted_error)(message)


def _convergence_warning() -> type:
    """The category of gmmjax's convergence warnings: :class:`ConvergenceWarning`; when
    scikit-learn is loaded, a subclass that is also scikit-learn's ``ConvergenceWarning``,
    so that ``warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)`` (or
    scikit-learn's ``ignore_warnings``) silences it too."""
    if "sklearn" not in sys.modules:
        return ConvergenceWarning
    from gmmjax._interop import sklearn_convergence_warning_type

    return sklearn_convergence_warning_type(ConvergenceWarning)


_log_prob = jax.jit(log_prob, static_argnames="chunk_size")
_responsibilities = jax.jit(responsibilities, static_argnames="chunk_size")
_marginal_component_log_prob = jax.jit(marginal_component_log_prob, static_argnames=("chunk_size", "tiers"))
_marginal_log_prob = jax.jit(marginal_log_prob, static_argnames=("chunk_size", "tiers"))
_impute = jax.jit(impute, static_argnames=("chunk_size", "tiers"))
_bic_jit = jax.jit(_bic)
_aic_jit = jax.jit(_aic)


# -- row buckets: one compiled program per bucket, not per number of rows ------------------------
# predict, predict_proba, score_samples, score, bic, aic and sample compile a program for each
# shape they see (0.4-3 s on the CPU). A long-lived process calls them with every row count
# (scikit-learn's own tests sample n = 1..99), so the rows are padded to a bucket and the
# results sliced: the next power of two (at least ROW_BUCKET_MIN) up to ROW_BUCKET_POW2_MAX
# rows, then the next multiple of a quarter of the power of two below (padding under 25%).
ROW_BUCKET_MIN = 32
ROW_BUCKET_POW2_MAX = 2**16


def _row_bucket(num_rows: int) -> int:
    """The number of rows the compiled program is built for when a method gets ``num_rows``."""
    if num_rows <= ROW_BUCKET_POW2_MAX:
        return max(ROW_BUCKET_MIN, 1 << (num_rows - 1).bit_length())
    step = 1 << (num_rows.bit_length() - 3)
    return -(-num_rows // step) * step


@functools.partial(jax.jit, static_argnums=1)
def _pad_rows_on_device(X, size):
    return jnp.concatenate([X, jnp.broadcast_to(X[-1:], (size - X.shape[0], X.shape[1]))])


def _padded_to_bucket(X):
    """``(X', n)``: a 2-D ``X`` with ``n >= 1`` rows, padded to :func:`_row_bucket` rows by
    repeating its last row (so the padding is as valid as the data: the checks that follow
    see the same values). NumPy data (and JAX arrays on the CPU) are padded on the host,
    which compiles nothing; JAX arrays elsewhere by a small program per row count. Anything
    else comes back unchanged with ``n = None`` (no slicing) for the checks to report."""
    if type(X).__module__.startswith("scipy.sparse") or v.is_traced(X):
        return X, None
    if isinstance(X, jax.Array):
        if X.ndim != 2 or X.shape[0] == 0:
            return X, None
        if any(device.platform != "cpu" for device in X.devices()):
            num_rows = X.shape[0]
            size = _row_bucket(num_rows)
            return (X if size == num_rows else _pad_rows_on_device(X, size)), num_rows
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError):
        return X, None
    if arr.ndim != 2 or arr.shape[0] == 0:
        return X, None
    num_rows = arr.shape[0]
    size = _row_bucket(num_rows)
    if size > num_rows:
        arr = np.concatenate([arr, np.repeat(arr[-1:], size - num_rows, axis=0)])
    return arr, num_rows


def _real_rows(X, num_rows):
    """Sample weights ``(N,)``: 1 for the first ``num_rows`` rows of ``X``, 0 for the padding
    (all ones when ``num_rows`` is ``None``), built on the host (nothing to compile)."""
    return (np.arange(X.shape[0]) < (X.shape[0] if num_rows is None else num_rows)).astype(X.dtype)


MAX_SEED = 2**63 - 1  # jax.random.key takes a signed 64-bit seed

# Two names for one setting: setting one of them (alone) clears the other, so that
# ``set_params(n_components=3)`` (as GridSearchCV does) replaces a positional num_components.
# Every mixture estimator has the number of components under the seed's name and scikit-learn's
# (MixtureParameters); GaussianMixtureModel also has the iteration limit and the seed.
COMPONENT_ALIASES = {"num_components": "n_components", "n_components": "num_components"}
_ALIASES = {
    **COMPONENT_ALIASES,
    "num_iters": "max_iter",
    "max_iter": "num_iters",
    "seed": "random_state",
    "random_state": "seed",
}


def _key_from_seed(seed) -> jax.Array:
    if seed is None:
        seed = 0
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if isinstance(seed, (jax.Array, np.ndarray)) and seed.dtype == np.uint32 and seed.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(seed))  # a legacy jax.random.PRNGKey
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if not 0 <= int(seed) <= MAX_SEED:
            raise ValueError(f"seed (random_state) must be an integer from 0 to 2**63 - 1, got {int(seed)}.")
        return jax.random.key(int(seed))
    # scikit-learn's semantics for a NumPy generator: each fit draws from it (and advances it).
    if isinstance(seed, np.random.RandomState):
        return jax.random.key(int(seed.randint(np.iinfo(np.int32).max)))
    if isinstance(seed, np.random.Generator):
        return jax.random.key(int(seed.integers(np.iinfo(np.int32).max)))
    raise ValueError(
        f"seed (random_state) must be an int, None or a jax.random key (or a NumPy RandomState or "
        f"Generator), got {seed!r}."
    )


class ParameterProtocol:
    """scikit-learn's parameter protocol for an estimator whose constructor stores each
    argument under its own name: ``get_params``, ``set_params`` and a ``repr`` of the
    arguments that differ from their defaults; and its estimator tags (a density estimator).

    ``_aliases`` maps each name of an alias pair (two constructor arguments for one setting,
    both defaulting to ``None``) to the other: setting one name alone, by :meth:`set_params` or
    by assignment after construction, clears the other, so that the new value is the one used.
    """

    _aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep=True):
        """Constructor arguments as a dict (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def _check_param_names(self, params) -> None:
        valid = self._param_names()
        for name in params:
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for {type(self).__name__}; valid ones: {valid}.")

    def set_params(self, **params):
        """Sets constructor arguments (scikit-learn protocol); returns ``self``.

        Setting one name of an alias pair (such as ``num_components``/``n_components``) without
        the other clears the other, so the new value is the one used.
        """
        self._check_param_names(params)
        for name, value in params.items():
            object.__setattr__(self, name, value)  # both names of a pair given: kept as given
            other = self._aliases.get(name)
            if other is not None and other not in params:
                object.__setattr__(self, other, None)
        return self

    def __setattr__(self, name, value):
        """Assigning one name of an alias pair after construction (``model.n_components = 1``,
        as scikit-learn's estimator checks do) clears the other, as :meth:`set_params` does,
        so the new value is the one used. Assignments in ``__init__`` (each name's first)
        keep both names as given, so a conflicting construction still raises at ``fit``."""
        other = self._aliases.get(name)
        if other is not None and value is not None and name in self.__dict__:
            object.__setattr__(self, other, None)
        object.__setattr__(self, name, value)

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if not (v is defaults[k] or (isinstance(v, (int, float, str)) and v == defaults[k]))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (called by scikit-learn only, so it may import it)."""
        from gmmjax._interop import sklearn_tags

        return sklearn_tags()


class MixtureParameters(ParameterProtocol):
    """The parameter protocol of a mixture estimator: the number of components is the alias pair
    ``num_components`` (the seed's name) / ``n_components`` (scikit-learn's), resolved by
    :meth:`_resolved_num_components`."""

    _aliases: ClassVar[dict[str, str]] = COMPONENT_ALIASES

    def _resolved_num_components(self) -> int:
        """``K`` from ``num_components`` or ``n_components`` (default 1); giving both with different
        values is a ``ValueError`` (``"num_components=2 and n_components=3 disagree"``)."""
        k = v.resolve_alias("num_components", self.num_components, "n_components", self.n_components, 1)
        return v.check_int("num_components (n_components)", k, 1)

    # Declared for the type checker: the subclass's constructor sets them.
    num_components: int | None
    n_components: int | None


class GaussianMixtureModel(MixtureParameters):
    """Gaussian mixture fitted by EM, with scikit-learn's interface and the original names.

    Args:
      num_components: number of components ``K`` (alias ``n_components``; default 1).
      num_iters: EM iteration limit (alias ``max_iter``; default 100); ``0`` keeps the
        initialisation (scikit-learn's way to read initial means).
      covariance_type: ``"full"`` (default), ``"tied"``, ``"diag"`` or ``"spherical"``.
      tol: convergence threshold on the change of the mean log-likelihood (default 1e-3).
      reg_covar: non-negative value added to covariance diagonals (default 1e-6).
      n_init: number of restarts, run as one vmapped batch; the best is kept.
      init_params: ``"kmeans"`` (default), ``"k-means++"``, ``"random"``, ``"random_from_data"``.
      weights_init, means_init, precisions_init: optional starting parameters
        (scikit-learn's shapes).
      warm_start: when true, a second ``fit`` starts from the previous solution (one restart).
      seed: int or ``jax.random.key`` (alias ``random_state``). ``None`` means 0, so fits are
        reproducible by default. A NumPy ``RandomState``/``Generator`` is drawn from at each
        fit (scikit-learn's semantics).
      chunk_size: rows per chunk in every pass over the data (bounds memory to
        ``O(chunk_size · K · D)`` beyond the data); ``None`` chooses automatically.
      restart_batch_size: restarts run together (vmapped); ``None``: all ``n_init``.
      verbose: show the fit's progress on stderr (see :func:`gmmjax.fit_em`); default off.
      verbose_interval: iterations between progress reports (default 10).
      n_components, max_iter, random_state: scikit-learn's names for the above. Setting one
        name of a pair later (``set_params`` or assignment) clears the other.
      fit_method: ``"em"`` (default) or ``"gradient"``: maximise the log-likelihood with an
        optax optimizer (:func:`gmmjax.fit_gradient`) from the same initialisation. A
        gradient fit runs ``num_steps`` steps; ``num_iters``/``max_iter`` and ``tol`` apply
        to EM only, and ``converged_`` is false for a gradient fit (no convergence test).
      optimizer: optax ``GradientTransformation`` for ``fit_method="gradient"``
        (``None``: ``optax.adam(1e-2)``). :meth:`save` does not store it (see there).
      num_steps: optimizer steps for ``fit_method="gradient"`` (``None``: 1000).
      batch_size: rows per step for ``fit_method="gradient"`` (``None``: all of them).
      mesh, data_axis: a ``jax.sharding.Mesh`` (and its axis for rows): ``fit`` runs
        data-parallel with the rows sharded over it (see :func:`gmmjax.fit_em`); a row-sharded
        ``jax.Array`` is fitted so without them; ``fit`` on a path or an iterable streams each
        batch over the mesh (:func:`gmmjax._streaming.fit_em_streaming`). :meth:`save` does
        not store the mesh.
      missing: ``"raise"`` (default: NaN in ``X`` is an error) or ``"marginalize"``: NaN
        entries are missing at random; ``fit`` runs exact EM on each row's observed features,
        and ``predict``, ``predict_proba``, ``score_samples`` and ``score`` marginalise the
        missing ones; :meth:`impute` fills them with conditional means
        (``docs/guides/missing_data.md``). EM fits only (``fit_method="em"``, in memory).
      prior: ``None`` (maximum likelihood, default), ``"default"`` (mclust's default
        conjugate prior for the data being fitted, :meth:`gmmjax.ConjugatePrior.default`) or a
        :class:`~gmmjax.ConjugatePrior`: MAP EM (see ``prior`` in :func:`gmmjax.fit_em`;
        ``lower_bound_`` is then the penalised objective per sample). EM on in-memory data
        only. :meth:`save` stores ``"default"`` but not a ``ConjugatePrior`` object.
      learning_decay, learning_offset: ``partial_fit``'s step sizes
        ``γ_t = (t + learning_offset)^(−learning_decay)`` for update ``t = 1, 2, ...``
        (scikit-learn's ``LatentDirichletAllocation`` names; ``α`` and ``t0`` of
        :func:`gmmjax.online_em_init`): ``learning_decay`` in ``(0.5, 1]`` (default 0.6; larger
        forgets the early batches faster), ``learning_offset >= 0`` (default 0: the first update
        is one EM step on its batch; larger damps the early updates).
      average: ``partial_fit`` reports the Polyak–Ruppert average of the running statistics
        (default ``True``) rather than the last iterate.
      average_start: updates before that average starts (default 100), so that it leaves out
        the early iterates. These four are read at every ``partial_fit`` call (a change
        applies to the later updates); ``fit`` does not use them.

    Fitted attributes: ``weights_``, ``means_``, ``covariances_``, ``precisions_``,
    ``precisions_cholesky_``, ``converged_``, ``n_iter_``, ``lower_bound_``,
    ``lower_bounds_`` (history of the best restart), ``collapsed_components_``,
    ``n_features_in_``, ``params_`` (a :class:`GMMParams`, also ``params``), ``fit_result_``;
    and the original names ``weights``, ``means``, ``covariances``.

    scikit-learn: the estimator follows its protocol without inheriting from it (so it imports
    without scikit-learn): ``clone``, ``Pipeline``, ``GridSearchCV`` and ``check_estimator``
    work; ``to_sklearn()``/``from_sklearn()`` convert to and from ``GaussianMixture``.

    Example:
      >>> import numpy as np, gmmjax as gj
      >>> X = gj.generate_gmm_data(500, np.array([0.5, 0.5]), np.array([[0.0, 0.0], [4.0, 4.0]]),
      ...                          np.stack([np.eye(2)] * 2))
      >>> model = gj.GaussianMixtureModel(num_components=2, num_iters=100).fit(X)
      >>> bool(model.converged_)
      True
    """

    # Set by select() only (not by fit); declared for the type checker.
    selection_: SelectionResult

    def __init__(
        self,
        num_components=None,
        num_iters=None,
        *,
        n_components=None,
        max_iter=None,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        warm_start=False,
        seed=None,
        random_state=None,
        chunk_size=None,
        restart_batch_size=None,
        verbose=0,
        verbose_interval=10,
        fit_method="em",
        optimizer=None,
        num_steps=None,
        batch_size=None,
        mesh=None,
        data_axis=None,
        missing="raise",
        prior=None,
        learning_decay=0.6,
        learning_offset=0.0,
        average=True,
        average_start=100,
    ):
        self.num_components = num_components
        self.num_iters = num_iters
        self.n_components = n_components
        self.max_iter = max_iter
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.warm_start = warm_start
        self.seed = seed
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.restart_batch_size = restart_batch_size
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.fit_method = fit_method
        self.optimizer = optimizer
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.mesh = mesh
        self.data_axis = data_axis
        self.missing = missing
        self.prior = prior
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.average = average
        self.average_start = average_start

    # scikit-learn's parameter protocol (MixtureParameters) with three alias pairs:
    # num_components/n_components, num_iters/max_iter and seed/random_state.
    _aliases: ClassVar[dict[str, str]] = _ALIASES

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` has run (scikit-learn's ``check_is_fitted`` protocol)."""
        return "params_" in self.__dict__

    # -- resolved configuration (and MixtureParameters._resolved_num_components) -------------
    def _resolved_max_iter(self) -> int:
        return fit_options(max_iter=self.max_iter, num_iters=self.num_iters).max_iter

    def _chunk_size(self):
        return None if self.chunk_size is None else v.check_int("chunk_size", self.chunk_size, 1)

    def _fit_options(self) -> FitOptions:
        """The constructor's fit settings as one :class:`~gmmjax.FitOptions` (checked there)."""
        return FitOptions(
            covariance_type=self.covariance_type,
            max_iter=self._resolved_max_iter(),
            n_init=self.n_init,
            init_params=self.init_params,
            chunk_size=self.chunk_size,
            restart_batch_size=self.restart_batch_size,
            tol=self.tol,
            reg_covar=self.reg_covar,
            weights_init=self.weights_init,
            means_init=self.means_init,
            precisions_init=self.precisions_init,
            missing=self.missing,
            prior=self.prior,
        )

    def _resolved_fit_method(self) -> str:
        if self.fit_method not in ("em", "gradient"):
            raise ValueError(f"fit_method must be 'em' or 'gradient', got {self.fit_method!r}.")
        if self.fit_method == "em":
            given = [
                f"{name}={getattr(self, name)!r}"
                for name in ("optimizer", "num_steps", "batch_size")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given, but optimizer, num_steps and batch_size are used only "
                    "by fit_method='gradient': set fit_method='gradient' or leave them None."
                )
        return self.fit_method

    def _resolved_seed(self):
        return v.resolve_alias("seed", self.seed, "random_state", self.random_state, None)

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fits the mixture to ``X`` ``(N, D)``; ``sample_weight`` ``(N,)`` optional. Returns ``self``."""
        fit_method = self._resolved_fit_method()
        num_components = self._resolved_num_components()
        max_iter = self._resolved_max_iter()
        key = _key_from_seed(self._resolved_seed())
        options = self._fit_options()
        if self.warm_start and hasattr(self, "params"):
            # X itself is validated once, by the fit; only its width matters here.
            num_features = np.shape(X)[-1] if np.ndim(X) == 2 else self.n_features_in_
            if self.params.covariance_type != self.covariance_type or self.means_.shape != (
                num_components,
                num_features,
            ):
                raise ValueError(
                    "warm_start needs the same num_components, covariance_type and number of "
                    "features as the previous fit: set warm_start=False to start afresh."
                )
            # One restart from the previous solution; the convergence test continues from the
            # previous fit's lower bound (scikit-learn's warm start), so that fitting one
            # iteration at a time converges.
            options = options.replace(
                weights_init=self.weights_,
                means_init=self.means_,
                precisions_init=self.precisions_,
                n_init=1,
                lower_bound_init=self.lower_bound_,
            )
        from gmmjax._streaming import is_streamable  # the stream route: a path, shards or an iterable

        if options.missing == "marginalize" and (fit_method != "em" or is_streamable(X)):
            raise ValueError(
                "missing='marginalize' fits by EM on data in memory: use fit_method='em' and pass an array."
            )
        if is_streamable(X):
            if fit_method != "em":
                raise ValueError("fit on a path or an iterable streams EM: use fit_method='em' (the default).")
            sharded = {} if self.mesh is None else {"mesh": self.mesh, "data_axis": self.data_axis}
            return self._fit_stream(X, sample_weight, options, key, max_iter, **sharded)
        if fit_method == "gradient":
            result = fit_gradient(
                key,
                X,
                num_components,
                options,
                optimizer=self.optimizer,
                num_steps=DEFAULT_NUM_STEPS if self.num_steps is None else self.num_steps,
                batch_size=self.batch_size,
                sample_weight=sample_weight,
                mesh=self.mesh,
                data_axis=self.data_axis,
            )
        else:
            result = fit_em(
                key,
                X,
                num_components,
                options,
                sample_weight=sample_weight,
                verbose=self.verbose,
                verbose_interval=self.verbose_interval,
                mesh=self.mesh,
                data_axis=self.data_axis,
            )
        return self._finish_fit(result, fit_method, max_iter)

    def _fit_stream(self, data, sample_weight, options=None, key=None, max_iter=None, **stream_keywords):
        """``fit`` on a ``.npy`` path, a folder or list of shards, a Parquet file or folder, a Zarr
        array (or a :class:`gmmjax.ParquetSource` / :class:`gmmjax.ZarrSource`), or an iterable of
        batches: exact out-of-core EM (:func:`gmmjax.fit_em_streaming`); ``stream_keywords``
        (``batch_size``, ``checkpoint``, ``resume``, ...) go to it."""
        from gmmjax._streaming import fit_em_streaming

        options = self._fit_options() if options is None else options
        key = _key_from_seed(self._resolved_seed()) if key is None else key
        max_iter = self._resolved_max_iter() if max_iter is None else max_iter
        result = fit_em_streaming(
            key,
            data,
            self._resolved_num_components(),
            options,
            sample_weight=sample_weight,
            verbose=self.verbose,
            **stream_keywords,
        )
        return self._finish_fit(result, "em", max_iter)

    def _finish_fit(self, result, fit_method, max_iter):
        self._store(result, result.params.num_features)
        # max_iter=0 asks for the initialisation itself (scikit-learn's convention): no warning.
        if fit_method == "em" and not self.converged_ and max_iter > 0:
            warnings.warn(
                # scikit-learn's sentence first (code matches on it), then what gmmjax knows
                "Best performing initialization did not converge. Try different init parameters, or increase "
                f"max_iter, tol, or check for degenerate data. EM did not converge within {max_iter} iterations "
                f"(tol={self.tol}): increase num_iters (max_iter) or tol, or try more restarts (n_init).",
                _convergence_warning(),
                stacklevel=3,
            )
        if self.collapsed_components_.any():
            warnings.warn(
                f"Components {np.flatnonzero(self.collapsed_components_).tolist()} became empty or singular "
                "during the fit and were regularised: decrease num_components, increase reg_covar, or scale "
                "the data.",
                UserWarning,
                stacklevel=3,
            )
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """One online (stepwise) EM update on the batch ``X`` ``(B, D)`` (see
        :func:`gmmjax.online_em_update`); returns ``self``.

        The first call (on an unfitted model) initialises from this batch with the
        estimator's settings (``init_params``, ``n_init``, ``*_init``, ``seed``, as ``fit``
        with ``max_iter=0``), then updates on it; on a model fitted by ``fit`` (or loaded),
        the first call starts from the fitted parameters. Later calls update the running
        statistics with the step sizes ``γ_t = (t + learning_offset)^(−learning_decay)`` and the
        averaging (``average``, ``average_start``) set on the estimator (the defaults are
        :func:`gmmjax.online_em_init`'s; with ``learning_offset=0``, ``γ_1 = 1``: the first
        update is one EM step on that batch). ``n_features_in_`` is checked; ``weights_``, ``means_``,
        ``covariances_``, ``precisions_``, ``precisions_cholesky_`` hold the current
        (averaged) estimate; ``n_iter_`` counts the updates, ``lower_bound_`` is the last
        batch's mean log-likelihood under the parameters before its update (``lower_bounds_``
        all of them), ``converged_`` is false (online EM has no convergence test). The
        running state is ``online_state_`` (an :class:`gmmjax.OnlineEMState`).
        """
        import dataclasses

        from gmmjax._online import online_em_init, online_em_update_jit
        from gmmjax._prior import require_no_prior

        if self._resolved_fit_method() != "em":
            raise ValueError("partial_fit runs online EM: set fit_method='em'.")
        require_no_prior(self.prior, "partial_fit (online EM)")
        settings = self._online_settings()
        state = self.__dict__.get("online_state_")
        if state is None and "params_" in self.__dict__:
            state = online_em_init(self.params_, reg_covar=self.reg_covar, **settings)
            history = []
        elif state is not None:
            history = list(self.lower_bounds_)
            dtype = state.alpha.dtype  # the settings as they are now (set_params between calls)
            state = dataclasses.replace(
                state,
                alpha=jnp.asarray(settings["alpha"], dtype),
                t0=jnp.asarray(settings["t0"], dtype),
                average_start=jnp.asarray(settings["average_start"], jnp.int32),
                averaging=settings["averaging"],
            )
        if state is None:
            num_components = self._resolved_num_components()
            X = v.check_data(X, "X", min_samples=num_components)
            if sample_weight is not None:
                sample_weight = v.check_sample_weight(sample_weight, X.shape[0], X.dtype)
            options = self._fit_options().replace(max_iter=0)
            start = fit_em(
                _key_from_seed(self._resolved_seed()), X, num_components, options, sample_weight=sample_weight
            )
            state = online_em_init(start.params, options=options, **settings)
            history = []
        else:
            X = v.check_data(X, "X", num_features=state.params.num_features).astype(state.params.dtype)
            if sample_weight is not None:
                sample_weight = v.check_sample_weight(sample_weight, X.shape[0], X.dtype)
        chunking = {} if self.chunk_size is None else {"chunk_size": self._chunk_size()}
        state, params = online_em_update_jit(state, X, sample_weight, **chunking)
        self._set_params_attributes(params)
        self.online_state_ = state
        self.__dict__.pop("fit_result_", None)  # describes a batch fit, no longer this model
        self.converged_ = False
        self.n_iter_ = int(state.step)
        self.lower_bound_ = float(state.log_likelihood)
        self.lower_bounds_ = np.asarray(history + [self.lower_bound_])
        self.collapsed_components_ = np.zeros(params.num_components, bool)
        self.n_features_in_ = params.num_features
        return self

    def _online_settings(self) -> dict:
        """``partial_fit``'s schedule and averaging as :func:`gmmjax.online_em_init`'s
        arguments, checked with messages that name the estimator's parameters."""
        decay = v.check_nonnegative_float("learning_decay", self.learning_decay)
        if not 0.5 < decay <= 1.0:
            raise ValueError(
                f"learning_decay (the exponent of the step sizes (t + learning_offset)^-learning_decay) must be "
                f"in (0.5, 1], got {self.learning_decay!r}: online EM converges only there (default 0.6)."
            )
        if not isinstance(self.average, (bool, np.bool_)):
            raise ValueError(f"average (Polyak averaging in partial_fit) must be True or False, got {self.average!r}.")
        return {
            "alpha": decay,
            "t0": v.check_nonnegative_float("learning_offset", self.learning_offset),
            "averaging": bool(self.average),
            "average_start": v.check_int("average_start", self.average_start, 0),
        }

    def _store(self, result, num_features):
        self.__dict__.pop("online_state_", None)  # a fit starts afresh: partial_fit continues from it
        self.fit_result_ = result
        self._set_params_attributes(result.params)
        best = int(result.best_restart)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.lower_bound)
        self.lower_bounds_ = np.asarray(result.lower_bound_history[best, : self.n_iter_])
        self.collapsed_components_ = np.asarray(result.collapsed_components[best])
        self.n_features_in_ = num_features

    def _set_params_attributes(self, params: GMMParams):
        self.params_ = params
        self.weights_ = np.asarray(params.weights)
        self.means_ = np.asarray(params.means)
        self.covariances_ = np.asarray(params.covariances)
        prec_chol = precision_cholesky(params.covariances, params.covariance_type)
        self.precisions_cholesky_ = np.asarray(prec_chol)
        self.precisions_ = np.asarray(
            covariance_kind(params.covariance_type).precisions_from_precision_cholesky(prec_chol)
        )

    # The parameter pytree; a property over ``params_`` because scikit-learn requires that fit
    # add only attributes ending in "_".
    params = property(lambda self: self._fitted("params_"), doc="The fitted :class:`GMMParams` (= ``params_``).")
    # The original example's attribute names.
    weights = property(lambda self: self._fitted("weights_"), doc="Mixing weights ``(K,)`` (= ``weights_``).")
    means = property(lambda self: self._fitted("means_"), doc="Means ``(K, D)`` (= ``means_``).")
    covariances = property(lambda self: self._fitted("covariances_"), doc="Covariances (= ``covariances_``).")

    def _fitted(self, name):
        if name not in self.__dict__:
            raise _not_fitted(f"call fit(X) before using {name.rstrip('_')}.")
        return self.__dict__[name]

    def _check_input(self, X, method):
        """``(params, X, n)``: ``X`` validated and padded to a row bucket (see
        :func:`_row_bucket`), ``n`` its number of real rows (``result[:n]`` drops the padding)."""
        params = self._fitted_params(method)
        X, num_rows = _padded_to_bucket(X)
        X = v.check_data(X, "X", num_features=params.num_features, allow_nan=self._marginalizes())
        return params, X.astype(params.means.dtype), num_rows

    def _marginalizes(self) -> bool:
        return check_missing(self.missing) == "marginalize"

    def _component_log_prob(self, params, X):
        """``(N, K)`` joint log-densities, marginalised over NaN entries with ``missing="marginalize"``."""
        return _marginal_component_log_prob(params, X, chunk_size=self._chunk_size())

    def _fitted_params(self, method):
        if "params_" not in self.__dict__:
            raise _not_fitted(f"call fit(X) before {method}().")
        return self.params_

    # -- inference -------------------------------------------------------------------------
    def fit_predict(self, X, y=None, sample_weight=None):
        """Fits and returns the component of each sample (same as ``fit(X).predict(X)``)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def predict_proba(self, X):
        """Posterior probability of each component: ``(N, K)``."""
        params, X, n = self._check_input(X, "predict_proba")
        if self._marginalizes():
            return np.asarray(jax.nn.softmax(self._component_log_prob(params, X), axis=1))[:n]
        return np.asarray(_responsibilities(params, X, chunk_size=self._chunk_size()))[:n]

    def predict(self, X):
        """Most probable component of each sample: ``(N,)`` int."""
        params, X, n = self._check_input(X, "predict")
        if self._marginalizes():
            return np.argmax(np.asarray(self._component_log_prob(params, X))[:n], axis=1)
        return np.argmax(np.asarray(_responsibilities(params, X, chunk_size=self._chunk_size()))[:n], axis=1)

    def score_samples(self, X):
        """Log-density of each sample: ``(N,)``."""
        params, X, n = self._check_input(X, "score_samples")
        if self._marginalizes():
            return np.asarray(_marginal_log_prob(params, X, chunk_size=self._chunk_size()))[:n]
        return np.asarray(_log_prob(params, X, chunk_size=self._chunk_size()))[:n]

    def impute(self, X):
        """``X`` ``(N, D)`` with each NaN entry replaced by its conditional mean under the fitted
        mixture, ``E[x_M | x_O]`` (see :func:`gmmjax.impute`); observed entries unchanged. Needs
        ``missing="marginalize"``."""
        if not self._marginalizes():
            raise ValueError("impute() needs missing='marginalize': set_params(missing='marginalize').")
        params, X, n = self._check_input(X, "impute")
        return np.asarray(_impute(params, X, chunk_size=self._chunk_size()))[:n]

    def score(self, X, y=None):
        """Mean log-likelihood of ``X``."""
        self._fitted_params("score")  # so that the not-fitted message names score(), not score_samples()
        return float(np.mean(self.score_samples(X)))

    def _n_parameters(self) -> int:
        """Number of free parameters of the fitted mixture (scikit-learn's ``GaussianMixture``
        has this private method; its tests and some user code call it)."""
        params = self._fitted_params("_n_parameters")
        return num_parameters(params.num_components, params.num_features, params.covariance_type)

    def bic(self, X):
        """Bayesian information criterion on ``X`` (lower is better)."""
        params, X, n = self._check_input(X, "bic")
        return float(_bic_jit(params, X, _real_rows(X, n)))

    def aic(self, X):
        """Akaike information criterion on ``X`` (lower is better)."""
        params, X, n = self._check_input(X, "aic")
        return float(_aic_jit(params, X, _real_rows(X, n)))

    def sample(self, n_samples=1, key=None):
        """Draws ``n_samples`` points; returns ``(X, labels)`` as NumPy arrays.

        Without ``key``, a key derived from ``seed`` is used (same samples on each call).
        """
        params = self._fitted_params("sample")
        try:
            n_samples = v.check_int("n_samples", n_samples, 1)
        except ValueError as exc:  # scikit-learn's sentence first (code matches on it), then ours
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least one sample: {exc}"
            ) from None
        v.check_sample_memory(n_samples, params)  # MemoryError before XLA would abort the process
        if key is None:
            key = jax.random.fold_in(_key_from_seed(self._resolved_seed()), 1)
        # One program per row bucket: draw the bucket's rows and keep the first n_samples. With
        # JAX's default jax_threefry_partitionable, each row's draws depend on its index alone,
        # so these are the rows gmmjax.sample(key, params, n_samples) draws.
        X, labels = _sample_jit(key, params, _row_bucket(n_samples))
        return np.asarray(X)[:n_samples], np.asarray(labels)[:n_samples]

    # -- interoperability (gmmjax/_interop.py; each library imported only when used) -------
    def to_sklearn(self):
        """A fitted ``sklearn.mixture.GaussianMixture`` with this model's parameters, shared
        hyperparameters and fit diagnostics; its predictions equal this model's (float64).

        Raises:
          ImportError: scikit-learn is not installed.
        """
        from gmmjax._interop import model_to_sklearn

        return model_to_sklearn(self)

    @classmethod
    def from_sklearn(cls, gaussian_mixture) -> GaussianMixtureModel:
        """A fitted model from a fitted ``sklearn.mixture.GaussianMixture`` (same predictions)."""
        from gmmjax._interop import model_from_sklearn

        return model_from_sklearn(cls, gaussian_mixture)

    def to_numpyro(self):
        """The fitted mixture as a ``numpyro.distributions.MixtureSameFamily`` (see :func:`gmmjax.to_numpyro`)."""
        from gmmjax._interop import to_numpyro

        return to_numpyro(self._fitted_params("to_numpyro"))

    def to_distrax(self):
        """The fitted mixture as a ``distrax.MixtureSameFamily`` (see :func:`gmmjax.to_distrax`)."""
        from gmmjax._interop import to_distrax

        return to_distrax(self._fitted_params("to_distrax"))

    # -- model selection ---------------------------------------------------------------------
    @classmethod
    def select(
        cls, X, num_components, *, covariance_types="full", criterion="bic", sample_weight=None, **estimator_kwargs
    ) -> GaussianMixtureModel:
        """Fits every number of components (and covariance type) in one compiled program
        (:func:`gmmjax.select_num_components`) and returns the best model, fitted.

        Args:
          X: ``(N, D)`` data.
          num_components: an int ``K_max`` (tries ``1..K_max``) or a sequence of ints.
          covariance_types: a covariance type, a sequence of them, or ``"all"``.
          criterion: ``"bic"`` (default), ``"aic"`` or ``"icl"`` (lower is better).
          sample_weight: optional ``(N,)`` weights.
          **estimator_kwargs: other constructor arguments (``n_init``, ``max_iter``, ``tol``,
            ``reg_covar``, ``init_params``, ``seed``, ``chunk_size``, ...), used for every fit.

        Returns:
          A fitted estimator of the winning type and ``K`` (as ``fit`` would give it with the
          same seed), with ``selection_`` holding the :class:`gmmjax.SelectionResult` table.
        """
        from gmmjax._model_selection import select_num_components

        chosen_elsewhere = {
            "num_components",
            "n_components",
            "covariance_type",
            "weights_init",
            "means_init",
            "precisions_init",
            "warm_start",
        } & set(estimator_kwargs)
        if chosen_elsewhere:
            raise ValueError(
                f"select() chooses or does not use {sorted(chosen_elsewhere)}: pass num_components "
                "(the values to try) and covariance_types instead."
            )
        model = cls(**estimator_kwargs)
        if model.fit_method != "em":
            raise ValueError(f"select() fits by EM; fit_method={model.fit_method!r} is not supported there.")
        selection = select_num_components(
            _key_from_seed(model._resolved_seed()),
            X,
            num_components,
            model._fit_options(),
            covariance_types=covariance_types,
            criterion=criterion,
            sample_weight=sample_weight,
        )
        best = selection.best_fit()
        model.set_params(
            num_components=best.params.num_components, n_components=None, covariance_type=selection.best_covariance_type
        )
        model._store(best, best.params.num_features)
        model.selection_ = selection
        if not model.converged_ and model._resolved_max_iter() > 0:
            warnings.warn(
                f"EM did not converge within {model._resolved_max_iter()} iterations for the selected "
                f"model (K={best.params.num_components}, "
                f"{selection.best_covariance_type}): increase max_iter or tol.",
                _convergence_warning(),
                stacklevel=2,
            )
        return model

    # -- persistence -----------------------------------------------------------------------
    def save(self, path):
        """Saves the fitted model to a ``.npz`` file (see :mod:`gmmjax._io` for the format; no pickle).

        An ``optimizer`` object (a pair of functions) cannot be stored without pickle: it is
        saved as ``None`` with a warning, so the loaded model refits with the default
        optimizer unless you ``set_params(optimizer=...)``.
        """
        from gmmjax._io import save_model

        self._fitted_params("save")
        save_model(self, path)

    @classmethod
    def load(cls, path) -> GaussianMixtureModel:
        """Loads a model written by :meth:`save`."""
        from gmmjax._io import load_model

        return load_model(cls, path)
