"""Saving and loading fitted models as plain ``.npz`` array files (never pickle).

File format (``format_version`` 1), one NumPy ``.npz`` archive with these arrays:

- ``format``: the string ``"gmmjax.GaussianMixtureModel"``; ``format_version``: ``1``;
- ``covariance_type``: string; ``weights`` ``(K,)``, ``means`` ``(K, D)``, ``covariances``
  (scikit-learn's shape for the type), in the dtype they were fitted in;
- ``converged``, ``n_iter``, ``lower_bound``, ``lower_bounds`` (history of the best restart),
  ``collapsed_components``;
- ``hyperparameters``: a JSON object with the constructor's scalar arguments (objects that
  JSON cannot hold — an optax ``optimizer``, a NumPy ``RandomState``/``Generator`` as
  ``random_state`` — are stored as ``null``, with a warning: they would need pickle);
- optionally ``weights_init``, ``means_init``, ``precisions_init`` and ``seed_key_data``
  (when the seed was a ``jax.random.key``).

Any tool that reads ``.npz`` (``numpy.load(path, allow_pickle=False)``) can read it.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._params import GMMParams, check_covariance_type

FORMAT_NAME = "gmmjax.GaussianMixtureModel"
FORMAT_VERSION = 1
_INIT_ARRAYS = ("weights_init", "means_init", "precisions_init")


def _json_storable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def save_model(model, path) -> None:
    hyper: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.get_params().items():
        if name in _INIT_ARRAYS:
            if value is not None:
                arrays[name] = np.asarray(value)
        elif isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            arrays["seed_key_data"] = np.asarray(jax.random.key_data(value))
            hyper[name] = None
        elif isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
            hyper[name] = np.asarray(value).item()  # NumPy/JAX scalars (e.g. tol=jnp.float32(1e-3)) as JSON numbers
        else:
            hyper[name] = value
        if not _json_storable(hyper.get(name)):
            # Objects (an optax optimizer, a NumPy RandomState/Generator as random_state) would need pickle.
            what = (
                "optimizer object (a pair of functions)"
                if name == "optimizer"
                else f"{name} object ({type(value).__name__})"
            )
            warnings.warn(
                f"The {what} is not saved: the loaded model has {name}=None; set_params({name}=...) before refitting.",
                UserWarning,
                stacklevel=3,
            )
            hyper[name] = None
    np.savez(
        os.fspath(path) if not hasattr(path, "write") else path,
        format=np.str_(FORMAT_NAME),
        format_version=np.int64(FORMAT_VERSION),
        covariance_type=np.str_(model.params.covariance_type),
        weights=model.weights_,
        means=model.means_,
        covariances=model.covariances_,
        converged=np.bool_(model.converged_),
        n_iter=np.int64(model.n_iter_),
        lower_bound=np.float64(model.lower_bound_),
        lower_bounds=model.lower_bounds_,
        collapsed_components=model.collapsed_components_,
        hyperparameters=np.str_(json.dumps(hyper)),
        **arrays,  # type: ignore[arg-type]  # array names only: mypy cannot tell that none is savez's allow_pickle
    )


def _label(path) -> str:
    """How messages name the model file."""
    return repr(path) if isinstance(path, str) else f"the model file object {getattr(path, 'name', path)!r}"


class _Archive:
    """Reads fields of an open model archive; every failure is one ``ValueError`` naming file and field."""

    def __init__(self, archive, label: str):
        self.archive, self.label = archive, label

    def error(self, detail: str) -> ValueError:
        return ValueError(f"{self.label} is a damaged gmmjax model file: {detail}")

    def __contains__(self, name) -> bool:
        return name in self.archive.files

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.archive[name]
        except ValueError as exc:
            if "pickle" in str(exc) or "Object arrays" in str(exc):
                # NumPy's own message would suggest allow_pickle=True, i.e. running the file's code.
                raise ValueError(
                    f"{self.label} is not a valid gmmjax model file: its field {name!r} is an array of Python "
                    "objects (stored with pickle). gmmjax model files hold only numbers and strings, and gmmjax "
                    "never unpickles a file (unpickling can run arbitrary code): re-create the model file with "
                    "GaussianMixtureModel.save or gmmjax fit -o."
                ) from None
            raise self.error(f"its field {name!r} cannot be read ({exc}).") from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise self.error(f"its field {name!r} cannot be read ({exc}).") from None

    def string(self, name: str) -> str:
        value = self[name]
        if value.ndim != 0 or value.dtype.kind != "U":
            raise self.error(f"{name} must be a string, got an array of dtype {value.dtype} and shape {value.shape}.")
        return str(value)

    def scalar(self, name: str, kinds: str, what: str):
        value = self[name]
        if value.ndim != 0 or value.dtype.kind not in kinds:
            raise self.error(f"{name} must be {what}, got an array of dtype {value.dtype} and shape {value.shape}.")
        return value.item()

    def floats(self, name: str) -> np.ndarray:
        value = self[name]
        if value.dtype.kind != "f":
            raise self.error(f"{name} must be an array of floating-point numbers, got dtype {value.dtype}.")
        return value

    def check(self, check, *args, **kwargs):
        """Runs one of :mod:`gmmjax._validation`'s checks; its message (which names the field) gets the file's."""
        try:
            return check(*args, **kwargs)
        except ValueError as exc:
            raise self.error(str(exc)) from None


_JSON_SCALARS = (type(None), bool, int, float, str)


def load_model(cls, path):
    """Reads a model written by :func:`save_model` and checks every field as the library checks
    ``weights_init``/``means_init``/``precisions_init`` (shapes, finiteness, weights summing to 1,
    positive-definite covariances), so that a damaged or hand-edited file fails here with one
    ``ValueError`` naming the file and the field, never later as NaN."""
    if not hasattr(path, "read"):
        path = os.fspath(path)
        # ``np.savez`` appends ".npz" to a name without it, so ``save("m"); load("m")`` must find "m.npz".
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path = path + ".npz"
    label = _label(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ValueError(f"Cannot read a gmmjax model from {label}: {exc}") from None
    except (ValueError, EOFError):  # NumPy's own message would suggest unpickling the file
        raise ValueError(
            f"{label} is not a gmmjax model file: not a NumPy .npz archive (models are written "
            "by GaussianMixtureModel.save or gmmjax fit -o)."
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array
        raise ValueError(f"{label} is not a gmmjax model file (a single .npy array, not an .npz archive).")
    with archive:
        fields = _Archive(archive, label)
        if "format" not in fields or fields["format"].dtype.kind != "U" or str(fields["format"]) != FORMAT_NAME:
            raise ValueError(f"{label} is not a gmmjax model file (no format={FORMAT_NAME!r} entry).")
        required = (
            "format_version",
            "covariance_type",
            "weights",
            "means",
            "covariances",
            "converged",
            "n_iter",
            "lower_bound",
            "lower_bounds",
            "collapsed_components",
            "hyperparameters",
        )
        missing = [name for name in required if name not in fields]
        if missing:
            raise fields.error(f"it lacks {missing}.")
        version = fields.scalar("format_version", "iu", "an integer")
        if version < 1:
            raise fields.error(
                f"format_version must be a positive integer ({FORMAT_VERSION} for this gmmjax), got {version}."
            )
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{label} has format_version {version}; this gmmjax reads up to {FORMAT_VERSION}: upgrade gmmjax."
            )
        covariance_type = fields.check(check_covariance_type, fields.string("covariance_type"))

        # The mixture: the checks the library applies to weights_init, means_init and precisions_init.
        weights, means, covariances = (fields.floats(name) for name in ("weights", "means", "covariances"))
        if means.ndim != 2 or 0 in means.shape:
            raise fields.error(f"means must be a 2-D array (num_components, num_features), got shape {means.shape}.")
        num_components, num_features = means.shape
        dtype = np.result_type(weights, means, covariances)
        # A float32 sum of K weights is 1 up to a few K·eps.
        fields.check(
            v.check_weights,
            "weights",
            weights,
            num_components,
            atol=max(1e-6, 4 * num_components * float(np.finfo(weights.dtype).eps)),
        )
        fields.check(v.check_means, "means", means, num_components, num_features)
        fields.check(v.check_covariance_like, "covariances", covariances, num_components, num_features, covariance_type)

        converged = fields.scalar("converged", "b", "true or false (a NumPy bool)")
        n_iter = fields.scalar("n_iter", "iu", "an integer")
        if n_iter < 0:
            raise fields.error(f"n_iter must be a non-negative integer, got {n_iter}.")
        lower_bound = fields.scalar("lower_bound", "fiu", "a number")
        lower_bounds = fields["lower_bounds"]
        if lower_bounds.ndim != 1 or lower_bounds.dtype.kind not in "fiu":
            raise fields.error(
                f"lower_bounds must be a 1-D array of numbers, got dtype {lower_bounds.dtype} and "
                f"shape {lower_bounds.shape}."
            )
        collapsed = fields["collapsed_components"]
        if collapsed.dtype.kind != "b" or collapsed.shape != (num_components,):
            raise fields.error(
                f"collapsed_components must be {num_components} booleans (one per component), got "
                f"dtype {collapsed.dtype} and shape {collapsed.shape}."
            )

        hyper = _hyperparameters(cls, fields)
        for name in _INIT_ARRAYS:
            if name in fields:
                value = fields[name]
                if value.dtype.kind not in "fiu":
                    raise fields.error(f"{name} must be an array of numbers, got dtype {value.dtype}.")
                hyper[name] = value
        if "seed_key_data" in fields:
            key_data = fields["seed_key_data"]
            try:
                hyper["seed"] = jax.random.wrap_key_data(jnp.asarray(key_data))
            except (TypeError, ValueError) as exc:
                raise fields.error(f"seed_key_data is not the data of a jax.random key ({_first_line(exc)}).") from None
        model = cls(**hyper)
        params = GMMParams(
            jnp.asarray(weights, dtype), jnp.asarray(means, dtype), jnp.asarray(covariances, dtype), covariance_type
        )
        model._set_params_attributes(params)
        model.converged_ = bool(converged)
        model.n_iter_ = int(n_iter)
        model.lower_bound_ = float(lower_bound)
        model.lower_bounds_ = lower_bounds
        model.collapsed_components_ = collapsed
        model.n_features_in_ = params.num_features
    return model


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hyperparameters(cls, fields: _Archive) -> dict:
    """The constructor's arguments from the ``hyperparameters`` JSON object, checked by name and type."""
    text = fields.string("hyperparameters")
    try:
        hyper = json.loads(text)
    except ValueError as exc:
        raise fields.error(f"hyperparameters is not valid JSON ({exc}).") from None
    if not isinstance(hyper, dict):
        raise fields.error(
            f"hyperparameters must be a JSON object of the constructor's arguments, got {type(hyper).__name__}."
        )
    valid = [name for name in inspect.signature(cls).parameters if name not in _INIT_ARRAYS]
    for name, value in hyper.items():
        if name not in valid:
            raise fields.error(f"hyperparameters has an unknown key {name!r}; valid keys: {', '.join(valid)}.")
        if not isinstance(value, _JSON_SCALARS):
            raise fields.error(
                f"hyperparameters[{name!r}] must be a number, string, true/false or null, got {json.dumps(value)[:60]}."
            )
    return hyper
