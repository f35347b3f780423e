"""save/load: a plain .npz round trip (no pickle) that restores arrays, predictions and
hyperparameters exactly, and clear errors for files that are not gmmjax models."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest

import gmmjax as gj
from gmmjax import GaussianMixtureModel
from gmmjax._estimator import NotFittedError

COV_TYPES = ("full", "tied", "diag", "spherical")
TRUE_WEIGHTS = np.array([0.6, 0.4])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 3.0]])
TRUE_COVS = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]], dtype=float)
ARRAYS = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_",
    "precisions_cholesky_",
    "lower_bounds_",
    "collapsed_components_",
)


@pytest.fixture(scope="module")
def X():
    return np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS))


@pytest.fixture(scope="module")
def fitted(X):
    # num_iters=100 and the default tol: the same compiled fit as the other test modules.
    return {
        ct: GaussianMixtureModel(num_components=2, num_iters=100, covariance_type=ct, reg_covar=1e-5).fit(X)
        for ct in COV_TYPES
    }


@pytest.mark.parametrize("ct", COV_TYPES)
def test_round_trip_is_exact(fitted, X, ct, tmp_path):
    m = fitted[ct]
    path = tmp_path / f"model-{ct}.npz"
    m.save(path)
    loaded = GaussianMixtureModel.load(path)
    assert type(loaded) is GaussianMixtureModel
    for name in ARRAYS:
        a, b = getattr(m, name), getattr(loaded, name)
        assert np.asarray(b).dtype == np.asarray(a).dtype, name
        np.testing.assert_array_equal(b, a, err_msg=name)
    assert loaded.params.covariance_type == ct
    assert loaded.converged_ == m.converged_ and loaded.n_iter_ == m.n_iter_
    assert loaded.lower_bound_ == m.lower_bound_
    assert loaded.n_features_in_ == 2
    np.testing.assert_array_equal(loaded.weights, m.weights)
    np.testing.assert_array_equal(loaded.means, m.means)
    np.testing.assert_array_equal(loaded.covariances, m.covariances)
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), m.predict_proba(X))
    np.testing.assert_array_equal(loaded.score_samples(X), m.score_samples(X))
    assert loaded.bic(X) == m.bic(X)
    np.testing.assert_array_equal(loaded.sample(10)[0], m.sample(10)[0])


@pytest.mark.parametrize("ct", ["full", "spherical"])
def test_loaded_model_keeps_hyperparameters(fitted, ct, tmp_path):
    m = fitted[ct]
    m.save(tmp_path / "m.npz")
    loaded = GaussianMixtureModel.load(str(tmp_path / "m.npz"))
    assert loaded.get_params() == m.get_params()
    assert loaded.covariance_type == ct and loaded.reg_covar == 1e-5 and loaded.num_iters == 100


def test_hyperparameters_with_init_arrays_and_key_seed(X, tmp_path):
    w0, mu0, p0 = np.array([0.5, 0.5]), np.array([[0.5, 0.5], [2.5, 2.5]]), np.stack([np.eye(2)] * 2)
    m = GaussianMixtureModel(
        n_components=2,
        max_iter=100,
        tol=np.float32(1e-3),
        n_init=np.int64(1),
        seed=jax.random.key(11),
        weights_init=w0,
        means_init=mu0,
        precisions_init=p0,
    ).fit(X)
    m.save(tmp_path / "m.npz")
    loaded = GaussianMixtureModel.load(tmp_path / "m.npz")
    params = loaded.get_params()
    assert params["n_components"] == 2 and params["max_iter"] == 100 and params["num_components"] is None
    assert params["tol"] == pytest.approx(1e-3) and params["n_init"] == 1
    np.testing.assert_array_equal(params["weights_init"], w0)
    np.testing.assert_array_equal(params["means_init"], mu0)
    np.testing.assert_array_equal(params["precisions_init"], p0)
    np.testing.assert_array_equal(jax.random.key_data(params["seed"]), jax.random.key_data(jax.random.key(11)))
    # refitting the loaded model reproduces the original fit
    refit = loaded.fit(X)
    np.testing.assert_array_equal(refit.means_, m.means_)


def test_file_is_a_plain_npz(fitted, tmp_path):
    m = fitted["diag"]
    path = tmp_path / "m.npz"
    m.save(path)
    with np.load(path, allow_pickle=False) as archive:
        files = set(archive.files)
        assert {
            "format",
            "format_version",
            "covariance_type",
            "weights",
            "means",
            "covariances",
            "hyperparameters",
        } <= files
        assert str(archive["format"]) == "gmmjax.GaussianMixtureModel"
        assert str(archive["covariance_type"]) == "diag"
        np.testing.assert_array_equal(archive["weights"], m.weights_)
        np.testing.assert_array_equal(archive["means"], m.means_)
        np.testing.assert_array_equal(archive["covariances"], m.covariances_)
        assert all(archive[name].dtype != object for name in files)
        assert json.loads(str(archive["hyperparameters"]))["covariance_type"] == "diag"


def test_save_to_file_object(fitted, X):
    buffer = io.BytesIO()
    fitted["tied"].save(buffer)
    buffer.seek(0)
    loaded = GaussianMixtureModel.load(buffer)
    np.testing.assert_array_equal(loaded.score_samples(X), fitted["tied"].score_samples(X))


def test_save_without_extension_then_load_same_name(fitted, tmp_path):
    # np.savez appends ".npz"; load must find the file under the name the user gave to save.
    fitted["full"].save(tmp_path / "model")
    loaded = GaussianMixtureModel.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.means_, fitted["full"].means_)


def test_loading_a_non_gmmjax_npz_raises(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"is not a gmmjax model file \(no format='gmmjax.GaussianMixtureModel'"):
        GaussianMixtureModel.load(path)


def test_loading_a_damaged_gmmjax_npz_raises(tmp_path):
    path = tmp_path / "damaged.npz"
    np.savez(path, format=np.str_("gmmjax.GaussianMixtureModel"), format_version=np.int64(1))
    with pytest.raises(ValueError, match=r"is a damaged gmmjax model file: it lacks \['covariance_type'"):
        GaussianMixtureModel.load(path)


def test_loading_a_newer_format_raises(fitted, tmp_path):
    path = tmp_path / "m.npz"
    fitted["full"].save(path)
    with np.load(path, allow_pickle=False) as archive:
        content = {name: archive[name] for name in archive.files}
    content["format_version"] = np.int64(99)
    np.savez(path, **content)
    with pytest.raises(ValueError, match=r"has format_version 99; this gmmjax reads up to 1"):
        GaussianMixtureModel.load(path)


def test_loading_a_npy_or_text_file_raises(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match=r"is not a gmmjax model file \(a single \.npy array"):
        GaussianMixtureModel.load(npy)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ValueError, match=r"notes\.txt' is not a gmmjax model file: not a NumPy \.npz archive") as info:
        GaussianMixtureModel.load(text)
    assert "pickle" not in str(info.value)  # NumPy's own message suggested unpickling the file


def test_loading_a_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match=r"Cannot read a gmmjax model from .*missing\.npz.*No such file"):
        GaussianMixtureModel.load(tmp_path / "missing.npz")


def test_save_before_fit_raises(tmp_path):
    path = tmp_path / "unfitted.npz"
    with pytest.raises(NotFittedError, match=r"not fitted yet: call fit\(X\) before save\(\)"):
        GaussianMixtureModel(2).save(path)
    assert not path.exists()


def test_numpy_random_state_is_saved_as_none_with_a_warning(tmp_path, X):
    """A NumPy RandomState as random_state (scikit-learn's convention) cannot go into JSON:
    the model still saves, its parameters load back, and random_state is None."""
    model = GaussianMixtureModel(num_components=2, num_iters=100, random_state=np.random.RandomState(3))
    model.fit(X)
    with pytest.warns(UserWarning, match="random_state object .RandomState. is not saved"):
        model.save(tmp_path / "m.npz")
    loaded = GaussianMixtureModel.load(tmp_path / "m.npz")
    assert loaded.random_state is None
    np.testing.assert_array_equal(loaded.means_, model.means_)


# -- damaged and hand-edited files: one ValueError naming the file and the field -------------------
def _edited(fitted, tmp_path, ct="full", **changes):
    """The saved ``fitted[ct]`` with fields replaced (``None``: removed), as a new file."""
    source = tmp_path / "original.npz"
    fitted[ct].save(source)
    with np.load(source, allow_pickle=False) as archive:
        content = {name: archive[name] for name in archive.files}
    for name, value in changes.items():
        if value is None:
            content.pop(name)
        else:
            content[name] = value
    path = tmp_path / "edited.npz"
    np.savez(path, **content)
    return path


def _hyper(**changes):
    hyper = {"num_components": 2, "num_iters": 100, "covariance_type": "full", "reg_covar": 1e-5}
    hyper.update(changes)
    return np.str_(json.dumps(hyper))


NOT_PD = np.array([[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]], np.float32)
EDITS = [  # (covariance type, changes, what the message says)
    ("full", dict(covariances=NOT_PD), "covariances (component 0) must be positive definite"),
    ("full", dict(covariances=np.full((2, 2, 2), np.nan, np.float32)), "covariances contains NaN or infinity"),
    ("full", dict(covariances=np.ones((2, 3, 3), np.float32)), "covariances must have shape (2, 2, 2)"),
    ("diag", dict(covariances=np.array([[1.0, -1.0], [1.0, 1.0]], np.float32)), "covariances must be positive"),
    ("full", dict(weights=np.array([np.nan, 0.5], np.float32)), "weights contains NaN or infinity"),
    ("full", dict(weights=np.array([1.5, -0.5], np.float32)), "weights must be non-negative"),
    ("full", dict(weights=np.array([0.7, 0.7], np.float32)), "weights must sum to 1, got sum 1.4"),
    ("full", dict(weights=np.array([0.2, 0.3, 0.5], np.float32)), "weights must have shape (2,), got (3,)"),
    ("full", dict(means=np.array(["0.5", "1"])), "means must be an array of floating-point numbers"),
    ("full", dict(means=np.array([[np.inf, 0.0], [1.0, 1.0]], np.float32)), "means contains NaN or infinity"),
    ("full", dict(means=np.zeros(2, np.float32)), "means must be a 2-D array"),
    ("full", dict(format_version=np.int64(0)), "format_version must be a positive integer"),
    (
        "full",
        dict(format_version=np.int64(-7)),
        "format_version must be a positive integer (1 for this gmmjax), got -7",
    ),
    ("full", dict(format_version=np.str_("1")), "format_version must be an integer"),
    ("full", dict(covariance_type=np.str_("banana")), "banana"),
    ("full", dict(hyperparameters=_hyper(frobnicate=3)), "hyperparameters has an unknown key 'frobnicate'"),
    ("full", dict(hyperparameters=np.str_("{not json")), "hyperparameters is not valid JSON"),
    ("full", dict(hyperparameters=np.str_("[1, 2]")), "hyperparameters must be a JSON object"),
    ("full", dict(hyperparameters=_hyper(tol=[1, 2])), "hyperparameters['tol'] must be a number"),
    ("full", dict(n_iter=np.array([1, 2])), "n_iter must be an integer"),
    ("full", dict(converged=np.str_("yes")), "converged must be true or false"),
    ("full", dict(collapsed_components=np.zeros(3, bool)), "collapsed_components must be 2 booleans"),
    ("full", dict(seed_key_data=np.array([1.5])), "seed_key_data is not the data of a jax.random key"),
    ("full", dict(weights=None), "it lacks ['weights']"),
]


@pytest.mark.parametrize("ct, changes, message", EDITS, ids=[m.split(" ")[0] + "-" + m[-12:] for _, _, m in EDITS])
def test_loading_a_hand_edited_file_names_the_file_and_field(fitted, tmp_path, ct, changes, message):
    path = _edited(fitted, tmp_path, ct, **changes)
    with pytest.raises(ValueError) as info:
        GaussianMixtureModel.load(path)
    text = str(info.value)
    assert message in text and str(path) in text and len(text.splitlines()) == 1, text


def test_weights_summing_to_one_in_float32_load(fitted, tmp_path):
    # Weights as a float32 fit leaves them (1 within a few eps per component) are not rejected.
    weights = np.full(2, 0.5, np.float32) + np.float32([3e-7, 4e-7])
    loaded = GaussianMixtureModel.load(_edited(fitted, tmp_path, weights=weights))
    np.testing.assert_array_equal(loaded.weights_, weights)


def test_object_array_says_gmmjax_never_unpickles(fitted, tmp_path):
    planted = np.empty(2, dtype=object)
    planted[:] = [0.5, 0.5]
    path = _edited(fitted, tmp_path, weights=planted)
    with pytest.raises(ValueError) as info:
        GaussianMixtureModel.load(path)
    text = str(info.value)
    assert str(path) in text and "'weights'" in text and "never unpickles" in text, text
    assert "allow_pickle" not in text  # NumPy's hint to enable pickle
