"""Input checks at the public boundary: clear ``ValueError``s instead of NaN or JAX tracebacks.

Checks on values (finiteness, positive definiteness) run only on concrete arrays; under
``jit``/``vmap`` the shape checks still run and the value checks are the caller's business.
"""

from __future__ import annotations

import math
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._covariance import covariance_kind
from gmmjax._params import check_covariance_type

# One fused max-reduction (NaN propagates through max); ``all(isfinite(a))`` would
# materialise an (N, D) boolean temporary.
_max_abs = jax.jit(lambda a: jnp.max(jnp.abs(a)))


def _concrete_max_abs(arr) -> float:
    """The largest magnitude in a concrete array (NaN if it holds one), also while the
    caller's ``jit`` is tracing (a concrete array closed over by a jitted function is checked
    then, not staged)."""
    with jax.ensure_compile_time_eval():
        return float(_max_abs(arr))


def largest_safe_magnitude(dtype, num_features: int) -> float:
    """The largest data magnitude whose squared distances (summed over ``num_features``, with
    a margin of 4 for differences) stay within ``dtype``'s range: ≈ 9e18 / √D in float32."""
    return math.sqrt(float(jnp.finfo(dtype).max) / (4 * num_features))


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def working_dtype(dtype) -> np.dtype:
    """Float dtype to compute in: float64 input stays float64 when ``jax_enable_x64`` is on;
    float32 stays float32; integers and half precision use JAX's default float."""
    dtype = np.dtype(dtype)
    default = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
    if dtype == np.float64:
        return default
    if dtype == np.float32:
        return np.dtype(np.float32)
    return default


def check_data(X, name: str = "X", *, num_features: int | None = None, min_samples: int = 1, allow_nan: bool = False):
    """Returns ``X`` as a 2-D float JAX array after checking shape and values.

    ``allow_nan``: NaN entries pass (missing values, ``missing="marginalize"``); infinity never does.

    Raises:
      ValueError: naming what is wrong and how to fix it.
      TypeError: an object array holds an entry that is not a number (as ``np.asarray`` does).
    """
    # Wording of the messages below follows scikit-learn's where it has one (its estimator
    # checks match them), so both libraries' users recognise them.
    if is_traced(X):
        arr = X
    else:
        if type(X).__module__.startswith("scipy.sparse"):
            raise ValueError(f"{name} is a sparse matrix, but gmmjax needs dense data: pass {name}.toarray().")
        if isinstance(X, (jax.Array, np.ndarray)):
            arr = X
        else:
            try:
                arr = np.asarray(X)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be a 2-D array of numbers: {exc}") from None
        if arr.dtype == object:  # numbers stored as Python objects, e.g. X.astype(object)
            try:
                arr = arr.astype(np.float64)
            except TypeError as exc:  # an entry that is no number at all (e.g. a dict)
                raise TypeError(f"{name} must be a 2-D array of numbers: {exc}") from None
            except ValueError as exc:  # e.g. a string that is no number
                raise ValueError(f"{name} must be a 2-D array of numbers: {exc}") from None
        if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
            raise ValueError(f"{name} must be a 2-D array of numbers, got dtype {arr.dtype}.")
        if np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{name} must be real-valued: Complex data not supported (got dtype {arr.dtype}).")
    if arr.ndim != 2:
        hint = " Reshape your data: X.reshape(-1, 1) for a single feature, X.reshape(1, -1) for a single sample."
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(arr.shape)}.{hint}")
    n, d = arr.shape
    if n == 0 or d == 0:
        what = "sample" if n == 0 else "feature"
        raise ValueError(
            f"{name} has 0 {what}(s) (shape={tuple(arr.shape)}) while a minimum of 1 is required: "
            "it needs at least one sample and one feature."
        )
    if num_features is not None and d != num_features:
        raise ValueError(
            f"{name} has {d} features, but GaussianMixtureModel is expecting {num_features} features as input: "
            "pass data with the features it was fitted on."
        )
    if n < min_samples:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {min_samples}, n_samples = {n}: "
            f"{name} has {n} samples, fewer than num_components={min_samples}: "
            "provide more samples or decrease num_components."
        )
    dtype = working_dtype(arr.dtype)
    arr = jnp.asarray(arr, dtype=dtype)
    if not is_traced(arr):
        if allow_nan:
            with jax.ensure_compile_time_eval():
                largest = _concrete_max_abs(jnp.where(jnp.isnan(arr), 0, arr))
        else:
            largest = _concrete_max_abs(arr)
        if allow_nan and not largest < math.inf:
            raise ValueError(
                f"{name} contains infinity: missing='marginalize' treats NaN entries as missing, but infinite "
                "values are data errors: replace them by NaN (missing) or by finite values."
            )
        if not largest < math.inf:
            raise ValueError(
                f"{name} contains NaN or infinity: remove or impute those entries before fitting or predicting "
                "(fit_em and GaussianMixtureModel treat NaN entries as missing values with missing='marginalize')."
            )
        limit = largest_safe_magnitude(dtype, arr.shape[1])
        if largest > limit:
            raise ValueError(
                f"{name} has values up to {largest:.3g} in magnitude: squared distances between such points overflow "
                f"{np.dtype(dtype).name} (safe up to {limit:.3g} with {arr.shape[1]} features). Rescale the data "
                "(e.g. standardise it) or compute in float64 (jax.config.update('jax_enable_x64', True))."
            )
    return arr


def check_key(key, name: str = "key"):
    """Accepts a typed ``jax.random.key`` or a legacy ``jax.random.PRNGKey`` (uint32 ``(2,)``)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and jnp.ndim(key) == 0:
        return key
    if dtype is not None and dtype == np.uint32 and jnp.shape(key) == (2,):
        return key
    raise ValueError(f"{name} must be a single jax.random key, e.g. jax.random.key(0); got {key!r}.")


def resolve_alias(primary_name: str, primary, alias_name: str, alias, default):
    """One value for a parameter that has two accepted names (e.g. ``num_iters``/``max_iter``)."""
    if primary is not None and alias is not None and primary != alias:
        raise ValueError(f"{primary_name}={primary!r} and {alias_name}={alias!r} disagree: give only one of them.")
    if primary is not None:
        return primary
    return default if alias is None else alias


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)


def check_nonnegative_float(name: str, value) -> float:
    if is_traced(value):
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        and not (np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number))
    ):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value}.")
    return value


def check_sample_weight(sample_weight, num_samples: int, dtype):
    """``(N,)`` non-negative finite weights with a positive sum, or ones when ``None``."""
    if sample_weight is None:
        return jnp.ones(num_samples, dtype=dtype)
    if not is_traced(sample_weight):
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.ndim == 0:
            sw = np.full(num_samples, float(sw))
        if sw.shape != (num_samples,):
            raise ValueError(f"sample_weight must have shape ({num_samples},), got {sw.shape}.")
        if not np.all(np.isfinite(sw)) or np.any(sw < 0):
            raise ValueError("sample_weight must be finite and non-negative.")
        if not sw.sum() > 0:
            raise ValueError(
                "sample_weight must have a positive sum, but all weights are zero: give at least one "
                "sample a positive weight."
            )
        return jnp.asarray(sw, dtype=dtype)
    return jnp.broadcast_to(jnp.asarray(sample_weight, dtype), (num_samples,))


# The messages about starting parameters begin with scikit-learn's own sentence for the same
# condition (its _check_weights, _check_means, _check_precisions), so that code matching on
# scikit-learn's messages keeps working; gmmjax's explanation follows. scikit-learn calls the
# parameters 'weights', 'means' and '<covariance_type> precision'.
def _sklearn_name(name: str) -> str:
    return name[: -len("_init")] if name.endswith("_init") else name


def _concrete(name, value, shape, sklearn_name=None):
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"The parameter '{sklearn_name or _sklearn_name(name)}' should have the shape of "
            f"{tuple(shape)}, but got {arr.shape}: {name} must have shape {tuple(shape)}, got {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity.")
    return arr


def check_weights(name: str, weights, num_components: int, atol: float = 1e-6):
    if is_traced(weights):
        return weights
    w = _concrete(name, weights, (num_components,))
    if np.any(w < 0) or np.any(w > 1):
        # scikit-learn's sentence prints the minimum as "max value" and the maximum as "min
        # value"; it is reproduced as it is so that code matching it keeps working.
        raise ValueError(
            f"The parameter '{_sklearn_name(name)}' should be in the range [0, 1], but got max value "
            f"{w.min():.5f}, min value {w.max():.5f}: {name} must be non-negative and at most 1, "
            f"got {w} (from {w.min():.6g} to {w.max():.6g})."
        )
    if abs(w.sum() - 1.0) > atol:
        raise ValueError(
            f"The parameter '{_sklearn_name(name)}' should be normalized, but got sum(weights) = "
            f"{w.sum():.5f}: {name} must sum to 1, got sum {w.sum():.8g}: divide by the sum to normalise."
        )
    return weights


def check_means(name: str, means, num_components: int, num_features: int):
    if is_traced(means):
        return means
    _concrete(name, means, (num_components, num_features))
    return means


def check_covariance_like(
    name: str, value, num_components: int, num_features: int, covariance_type: str, kind: str = "covariance"
):
    """Checks a covariance (or precision) array in scikit-learn's shape for ``covariance_type``:
    symmetric and positive definite for the matrix types, positive otherwise."""
    check_covariance_type(covariance_type)
    if is_traced(value):
        return value
    sklearn_name = f"{covariance_type} {kind}"  # scikit-learn's name, e.g. 'full precision'
    covariance = covariance_kind(covariance_type)
    arr = _concrete(name, value, covariance.shape(num_components, num_features), sklearn_name)
    if covariance.matrix:
        mats = arr.reshape((-1, num_features, num_features))
        for k, mat in enumerate(mats):
            where = "" if covariance.shared else f" (component {k})"
            sklearn_says = f"'{sklearn_name}' should be symmetric, positive-definite: "
            if not np.allclose(mat, mat.T, rtol=1e-5, atol=1e-8 * max(1.0, np.abs(mat).max())):
                raise ValueError(f"{sklearn_says}{name}{where} must be a symmetric matrix.")
            try:
                np.linalg.cholesky(mat)
            except np.linalg.LinAlgError:
                raise ValueError(f"{sklearn_says}{name}{where} must be positive definite.") from None
    elif np.any(arr <= 0):
        raise ValueError(
            f"'{sklearn_name}' should be positive: {name} must be positive ({kind}s of '{covariance_type}' components)."
        )
    return value


def _memory_limit_bytes() -> int | None:
    """The memory a draw may use: physical RAM (``os.sysconf``), or a smaller cgroup limit
    (containers) or accelerator memory."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    try:  # an accelerator's own memory, where it holds less (the CPU backend reports none)
        stats = jax.local_devices()[0].memory_stats()
    except (RuntimeError, AttributeError, NotImplementedError):
        stats = None
    if stats and stats.get("bytes_limit"):
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def sample_memory_bytes(num_samples: int, params) -> int:
    """Peak memory of drawing ``num_samples`` points from ``params`` (:func:`gmmjax.sample`):
    the ``(n, D)`` result and ``(n,)`` int32 labels, the normal draws, the ``(n, K)`` one-hot
    and Gumbel arrays, and for full covariances the ``(K, n, D)`` transformed draws."""
    k, d = params.num_components, params.num_features
    itemsize = np.dtype(params.dtype).itemsize
    temporaries = covariance_kind(params.covariance_type).sample_temporaries_per_row(k, d)
    per_sample = itemsize * (3 * d + temporaries + 2 * k) + 8
    return int(num_samples) * per_sample


def check_sample_memory(num_samples: int, params, *, available: int | None = None) -> None:
    """Refuses (``MemoryError``, before allocating anything) to draw more samples than memory
    holds; a too-large request would otherwise abort the process inside XLA.

    Args:
      num_samples: the number of points asked for.
      params: the mixture (:class:`GMMParams`).
      available: bytes to compare with; default: the machine's physical memory, or its cgroup
        limit or the accelerator's memory when smaller. Where none is known, nothing is checked.
    """
    available = _memory_limit_bytes() if available is None else available
    needed = sample_memory_bytes(num_samples, params)
    if available is not None and needed > available:
        result = int(num_samples) * (params.num_features * np.dtype(params.dtype).itemsize + 4)
        raise MemoryError(
            f"Drawing {num_samples} samples of {params.num_features} features needs about {_bytes(needed)} "
            f"of memory ({_bytes(result)} for the samples and labels alone), more than the {_bytes(available)} "
            "available: draw fewer samples, or draw them in batches (one call per batch, each with its "
            "own key)."
        )


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
