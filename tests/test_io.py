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
ARRAYS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_", "lower_bounds_",
          "collapsed_components_")


@pytest.fixture(scope="module")
def X():
    return np.asarray(gj.generate_gmm_data(600, TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS))


@pytest.fixture(scope="module")
def fitted(X):
    # num_iters=100 and the default tol: the same compiled fit as the other test modules.
    return {ct: GaussianMixtureModel(num_components=2, num_iters=100, covariance_type=ct, reg_covar=1e-5)
            .fit(X) for ct in COV_TYPES}


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
    m = GaussianMixtureModel(n_components=2, max_iter=100, tol=np.float32(1e-3), n_init=np.int64(1),
                             seed=jax.random.key(11), weights_init=w0, means_init=mu0,
                             precisions_init=p0).fit(X)
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
        assert {"format", "format_version", "covariance_type", "weights", "means", "covariances",
                "hyperparameters"} <= files
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
