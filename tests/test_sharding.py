"""Data-parallel fits (gmmjax._sharding, gmmjax._collectives).

Multi-device behaviour runs in subprocesses with forced CPU devices (JAX fixes the device count
at import): ``tests/_sharding_checks.py`` compares every sharded fit with the one-device fit of
the same data and key, and reads the compiled program (one all-reduce per EM iteration, no
all-gather of data). In this process (one device): the packing of statistics, the one-device
identities of :class:`RowAxis`, a fit over a one-device mesh, and the boundary's messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gmmjax as gj
from gmmjax import _collectives as c

CHECKS = Path(__file__).with_name("_sharding_checks.py")
ROOT = Path(__file__).resolve().parents[1]


def run_checks(devices: int, mode: str, *flags, timeout: float = 900):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(CHECKS), str(devices), mode, *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_sharded_fit_matches_one_device_and_has_one_all_reduce_per_iteration():
    out = run_checks(4, "quick")
    assert "OK compiled program full (1 all-reduce of 42 numbers per iteration)" in out


@pytest.mark.slow
@pytest.mark.parametrize("devices", [4, 8])
def test_every_covariance_type_and_initialisation(devices):
    out = run_checks(devices, "all", timeout=2400)
    assert out.count("OK ") >= 25


@pytest.mark.slow
@pytest.mark.parametrize("devices", [4, 8])
def test_float64_to_1e_10(devices):
    out = run_checks(devices, "types", "--x64", timeout=2400)
    assert out.count("OK ") == 4


def test_derivatives_through_a_sharded_fit_equal_the_one_device_derivatives():
    # Implicit differentiation used to be switched off for sharded rows: the derivatives were
    # silently zero.
    out = run_checks(4, "gradients")
    assert "OK gradients implicit full explicit mesh" in out


@pytest.mark.slow
def test_derivatives_through_sharded_fits_auto_mesh_and_unrolled():
    out = run_checks(4, "gradients", "--all")
    assert out.count("OK gradients") == 3


@pytest.mark.slow
def test_model_selection_gradient_and_estimator_sharded():
    out = run_checks(4, "frontdoors")
    assert out.count("OK ") == 3


def test_pack_round_trip_sends_upper_triangles():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 4))
    sym = a + np.swapaxes(a, -1, -2)
    tree = (jnp.asarray(rng.normal(size=3)), c.symmetric(jnp.asarray(sym)), jnp.asarray(2.5))
    flat, how = c.pack(tree)
    assert flat.shape == (3 + 3 * 10 + 1,)  # K·D(D+1)/2 for the symmetric leaf
    counts, second, scalar = c.unpack(flat, how)
    np.testing.assert_allclose(second, sym, rtol=1e-6)
    np.testing.assert_allclose(counts, tree[0])
    assert float(scalar) == 2.5


def test_local_row_axis_is_the_plain_computation():
    X = jnp.arange(12.0).reshape(6, 2)
    mask = jnp.array([False, True, False, True, False, False])
    rows = c.LOCAL
    assert not rows.sharded and rows.global_rows(6) == 6
    np.testing.assert_array_equal(rows.take(X, jnp.array([4, 1])), X[jnp.array([4, 1])])
    assert int(rows.first(mask)) == 1 and int(rows.last(mask)) == 3
    assert int(rows.last(jnp.zeros(6, bool))) == 5  # as n − 1 − argmax(mask[::-1])
    assert float(rows.exclusive_prefix(jnp.array(3.0))) == 0.0


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    return (rng.normal(size=(300, 2)) + centers[rng.integers(0, 3, 300)]).astype(np.float32)


def test_one_device_mesh_equals_fit_em_and_estimator_takes_a_mesh(data):
    mesh = jax.make_mesh((1,), ("rows",))
    reference = gj.fit_em(jax.random.key(0), data, 3, tol=1e-4)
    model = gj.GaussianMixtureModel(3, tol=1e-4, seed=jax.random.key(0), mesh=mesh).fit(data)
    np.testing.assert_allclose(model.means_, reference.params.means, rtol=1e-5, atol=1e-5)
    assert model.n_iter_ == int(reference.n_iter)


def test_row_sharded_input_is_detected(data):
    mesh = Mesh(np.array(jax.devices()[:1]), ("rows",))
    X = jax.device_put(data, NamedSharding(mesh, PartitionSpec("rows")))
    assert gj.shard_rows(data, mesh).X.sharding.spec == PartitionSpec("rows")
    from gmmjax._sharding import row_sharding

    assert row_sharding(X) == (mesh, "rows")
    assert row_sharding(jnp.asarray(data)) is None


def test_messages_at_the_boundary(data):
    two_axes = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("rows", "restarts"))
    with pytest.raises(ValueError, match="pass data_axis="):
        gj.fit_em(jax.random.key(0), data, 3, mesh=two_axes)
    with pytest.raises(ValueError, match="'features' is not an axis of the mesh"):
        gj.fit_em(jax.random.key(0), data, 3, mesh=two_axes, data_axis="features")
    by_features = jax.device_put(data, NamedSharding(two_axes, PartitionSpec("rows", "restarts")))
    with pytest.raises(ValueError, match="sharded along its features too"):
        gj.fit_em(jax.random.key(0), by_features, 3)
    with pytest.raises(ValueError, match="verbose progress is not available for a sharded fit"):
        gj.fit_em(jax.random.key(0), data, 3, mesh=two_axes, data_axis="rows", verbose=True)
    with pytest.raises(ValueError, match="full-batch steps"):
        gj.fit_gradient(jax.random.key(0), data, 3, mesh=two_axes, data_axis="rows", batch_size=10)
    with pytest.raises(ValueError, match="contains NaN"):
        gj.shard_rows(np.full((4, 2), np.nan), two_axes, "rows")


def test_sharded_weights_are_checked_on_the_devices(data):
    from gmmjax._sharding import check_sharded_weight

    X = jnp.asarray(data)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(300,\)"):
        check_sharded_weight(jnp.ones(299), X)
    with pytest.raises(ValueError, match="finite and non-negative"):
        check_sharded_weight(jnp.full(300, -1.0), X)
    with pytest.raises(ValueError, match="positive sum"):
        check_sharded_weight(jnp.zeros(300), X)
    assert check_sharded_weight(jnp.ones(300), X).dtype == X.dtype
