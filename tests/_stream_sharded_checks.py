"""Sharded streaming fits against one-device oracles, run in a subprocess with forced CPU devices.

Usage: ``python tests/_stream_sharded_checks.py DEVICES quick|all [--x64]`` (sets ``XLA_FLAGS``
before importing JAX). Each check compares :func:`fit_em_streaming` with ``mesh=`` (every batch
split over the devices, one all-reduce per pass) with the one-device streamed fit and with the
in-memory :func:`gmmjax.fit_em` of the same data, key and start, and prints ``OK <name>``; a
failure raises.
"""

from __future__ import annotations

from _children import forced_devices_from_argv

DEVICES, MODE, X64 = forced_devices_from_argv()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import gmmjax as gj  # noqa: E402
from gmmjax import _streaming  # noqa: E402
from gmmjax._streaming import fit_em_streaming  # noqa: E402

RTOL = 1e-10 if X64 else 1e-5
DTYPE = np.float64 if X64 else np.float32
N, D, K, BATCH = 2501, 3, 3, 768  # N: ragged for the batches and for the devices
SETTINGS = dict(tol=0.0, max_iter=8)


def data(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 2.0]])
    X = rng.normal(size=(N, D)) + centers[rng.integers(0, K, N)]
    return (X + 100.0).astype(DTYPE)  # offset: the statistics are about a shift


def start(X, covariance_type):
    precisions = {
        "full": np.eye(D)[None].repeat(K, 0),
        "tied": np.eye(D),
        "diag": np.ones((K, D)),
        "spherical": np.ones(K),
    }
    return dict(
        weights_init=np.full(K, 1.0 / K),
        means_init=X[[0, 1, 2]].astype(np.float64),
        precisions_init=precisions[covariance_type] / 4.0,
    )


def close(a, b, name):
    for field in ("weights", "means", "covariances"):
        x, y = np.asarray(getattr(a.params, field), np.float64), np.asarray(getattr(b.params, field), np.float64)
        error = np.linalg.norm(x - y) / np.linalg.norm(y)
        assert error <= RTOL, f"{name} {field}: relative error {error:.3g} > {RTOL}"
    x, y = np.asarray(a.restarts.lower_bound_history), np.asarray(b.restarts.lower_bound_history)
    np.testing.assert_allclose(x, y, rtol=RTOL, err_msg=f"{name} lower_bound_history")
    np.testing.assert_array_equal(np.asarray(a.restarts.n_iter), np.asarray(b.restarts.n_iter), err_msg=name)


def check_type(mesh, X, covariance_type, weight=None, one_device=True):
    kwargs = dict(covariance_type=covariance_type, **SETTINGS, **start(X, covariance_type))
    sharded = fit_em_streaming(jax.random.key(0), X, K, sample_weight=weight, batch_size=BATCH, mesh=mesh, **kwargs)
    if one_device:
        one = fit_em_streaming(jax.random.key(0), X, K, sample_weight=weight, batch_size=BATCH, **kwargs)
        close(sharded, one, f"{covariance_type} vs one-device stream")
    memory = gj.fit_em(jax.random.key(0), X, K, sample_weight=weight, **kwargs)
    close(sharded, memory, f"{covariance_type} vs in-memory fit_em")
    print(f"OK {covariance_type}{' weighted' if weight is not None else ''}", flush=True)


def check_default_init(mesh, X):
    """The reservoir initialisation (k-means on all N ≤ 2**14 rows) is fit_em's own: same start."""
    kwargs = dict(covariance_type="full", tol=1e-3, n_init=2)
    sharded = fit_em_streaming(jax.random.key(3), X, K, batch_size=BATCH, mesh=mesh, **kwargs)
    memory = gj.fit_em(jax.random.key(3), X, K, **kwargs)
    close(sharded, memory, "default init vs in-memory fit_em")
    print("OK default init", flush=True)


def check_one_all_reduce_per_pass(mesh, X):
    """The programs: the per-batch one has no collective; the per-pass one is one all-reduce of
    the packed statistics (K·(1 + D + D(D+1)/2) + 1 numbers for full, one restart)."""
    layout = _streaming.stream_layout(mesh, None)
    add, reduce = _streaming._sharded_programs(layout, 192, False)
    size = K * (1 + D + D * (D + 1) // 2) + 1
    totals = np.zeros((DEVICES, size), DTYPE)
    hlo = reduce.lower(totals).compile().as_text()
    assert hlo.count("all-reduce(") + hlo.count("all-reduce-start(") == 1, hlo
    assert f"[{size}]" in hlo or f"[1,{size}]" in hlo, hlo
    params = gj.GMMParams(
        np.full((1, K), 1 / K, DTYPE), np.zeros((1, K, D), DTYPE), np.eye(D, dtype=DTYPE)[None, None].repeat(K, 1)
    )
    batch = np.zeros((BATCH, D), DTYPE), np.ones(BATCH, DTYPE)
    text = add.lower(params, totals, *batch).compile().as_text()
    for collective in ("all-reduce", "all-gather", "all-to-all", "collective-permute"):
        assert collective not in text, f"the per-batch program has a {collective}"
    print(f"OK one all-reduce per pass ({size} numbers, {size * np.dtype(DTYPE).itemsize} bytes)", flush=True)


def main():
    mesh = jax.make_mesh((DEVICES,), ("data",))
    X = data()
    if MODE == "quick":
        check_type(mesh, X, "full", one_device=False)  # the default suite: in-memory fit_em is the oracle
        check_one_all_reduce_per_pass(mesh, X)
    else:
        weight = np.random.default_rng(1).uniform(0.2, 3.0, size=N).astype(DTYPE)
        for covariance_type in ("full", "tied", "diag", "spherical"):
            check_type(mesh, X, covariance_type)
        check_type(mesh, X, "diag", weight)
        check_default_init(mesh, X)
        # An Auto-axes mesh (jax.sharding.Mesh) and a 2-D mesh whose other axis has size 1.
        auto = jax.sharding.Mesh(np.array(jax.devices()).reshape(1, DEVICES), ("restarts", "data"))
        kwargs = dict(covariance_type="full", **SETTINGS, **start(X, "full"))
        got = fit_em_streaming(jax.random.key(0), X, K, batch_size=BATCH, mesh=auto, data_axis="data", **kwargs)
        close(got, gj.fit_em(jax.random.key(0), X, K, **kwargs), "2-D Auto mesh")
        print("OK auto mesh", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
