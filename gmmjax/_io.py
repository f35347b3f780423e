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

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

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
    hyper = {}
    arrays = {}
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
            what = ("optimizer object (a pair of functions)" if name == "optimizer"
                    else f"{name} object ({type(value).__name__})")
            warnings.warn(f"The {what} is not saved: the loaded model has {name}=None; "
                          f"set_params({name}=...) before refitting.", UserWarning, stacklevel=3)
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
        **arrays,
    )


def load_model(cls, path):
    if not hasattr(path, "read"):
        path = os.fspath(path)
        # ``np.savez`` appends ".npz" to a name without it, so ``save("m"); load("m")`` must find "m.npz".
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path = path + ".npz"
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ValueError(f"Cannot read a gmmjax model from {path!r}: {exc}") from None
    except (ValueError, EOFError):  # NumPy's own message would suggest unpickling the file
        raise ValueError(f"{path!r} is not a gmmjax model file: not a NumPy .npz archive (models are written "
                         "by GaussianMixtureModel.save or gmmjax fit -o).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array
        raise ValueError(f"{path!r} is not a gmmjax model file (a single .npy array, not an .npz archive).")
    with archive:
        if "format" not in archive.files or str(archive["format"]) != FORMAT_NAME:
            raise ValueError(f"{path!r} is not a gmmjax model file (no format={FORMAT_NAME!r} entry).")
        required = ("format_version", "covariance_type", "weights", "means", "covariances", "converged",
                    "n_iter", "lower_bound", "lower_bounds", "collapsed_components", "hyperparameters")
        missing = [name for name in required if name not in archive.files]
        if missing:
            raise ValueError(f"{path!r} is a damaged gmmjax model file: it lacks {missing}.")
        version = int(archive["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"{path!r} has format_version {version}; this gmmjax reads up to {FORMAT_VERSION}: "
                             "upgrade gmmjax.")
        hyper = json.loads(str(archive["hyperparameters"]))
        for name in _INIT_ARRAYS:
            if name in archive.files:
                hyper[name] = archive[name]
        if "seed_key_data" in archive.files:
            hyper["seed"] = jax.random.wrap_key_data(jnp.asarray(archive["seed_key_data"]))
        model = cls(**hyper)
        covariance_type = check_covariance_type(str(archive["covariance_type"]))
        params = GMMParams(
            jnp.asarray(archive["weights"]), jnp.asarray(archive["means"]), jnp.asarray(archive["covariances"]),
            covariance_type,
        )
        model._set_params_attributes(params)
        model.converged_ = bool(archive["converged"])
        model.n_iter_ = int(archive["n_iter"])
        model.lower_bound_ = float(archive["lower_bound"])
        model.lower_bounds_ = archive["lower_bounds"]
        model.collapsed_components_ = archive["collapsed_components"]
        model.n_features_in_ = params.num_features
    return model
