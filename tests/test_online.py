"""Online (stepwise) EM: ``online_em_init`` / ``online_em_update`` and ``partial_fit``.

Oracles: one batch EM step (``em_step``: a first update with ``γ_1 = 1`` is one), a float64
NumPy re-implementation of the stepwise recursion in *raw* (uncentred) moments (where no
shift exists, so it checks that the library's moving of the shift is exact), statistics
computed directly about a new shift, and batch EM (``fit_em``) for convergence.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gj
from _oracles import COVARIANCE_TYPES, initial_parameters, make_blobs, responsibilities
from gmmjax._online import online_em_update_jit, recenter_stats, stats_from_params

N, D, K, BATCH = 600, 2, 3, 60


# Every update runs through this one jitted function with sample weights (ones where the test
# has none), so each covariance type compiles once for the (BATCH, D) batches.
_update = online_em_update_jit
_em_step = jax.jit(gj.em_step)


def _ones(X):
    return jnp.ones(X.shape[0], jnp.float32)


@pytest.fixture(scope="module")
def blobs3():
    return make_blobs(n=N, d=D, k=K, seed=2, spread=5.0)


@pytest.fixture(scope="module")
def data(blobs3):
    return blobs3[0].astype(np.float32)


@pytest.fixture(scope="module")
def starts(data):
    """An imperfect start per covariance type (random rows as means, the data's covariance)."""
    return {
        ct: gj.GMMParams(*(jnp.asarray(a, jnp.float32) for a in initial_parameters(data, K, ct, seed=4)), ct)
        for ct in COVARIANCE_TYPES
    }


def _batches(X, num=N // BATCH):
    return jnp.asarray(X).reshape(num, -1, X.shape[1])


def _close(actual, desired, rtol, atol=0.0):
    for a, b in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# -- the first update is one EM step ---------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_first_update_with_unit_step_is_one_batch_em_step(data, starts, covariance_type):
    start = starts[covariance_type]
    X = jnp.asarray(data[:BATCH])
    weight = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, BATCH), jnp.float32)
    state = gj.online_em_init(start, t0=0.0, reg_covar=1e-4)
    new_state, estimate = _update(state, X, weight)
    expected, mean_ll = _em_step(start, X, weight, 1e-4)
    _close(new_state.params, expected, rtol=2e-5, atol=1e-6)
    _close(estimate, expected, rtol=2e-5, atol=1e-6)  # the average of one iterate is that iterate
    assert int(new_state.step) == 1
    np.testing.assert_allclose(float(new_state.log_likelihood), float(mean_ll), rtol=1e-6)


# -- moving the statistics' shift ------------------------------------------------------------------
# full and diag: the two branches of recenter_stats (tied and spherical share them).
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_recentering_equals_statistics_about_the_new_shift_at_offset_1e4(data, starts, covariance_type):
    """Statistics about the means, moved to another shift in float32, for data at a 1e4 offset,
    equal the float64 statistics computed directly about that shift (same responsibilities)."""
    offset = 1e4
    X = (data + offset).astype(np.float32)
    start = starts[covariance_type]
    params = start.replace(means=start.means + offset)
    delta = np.random.default_rng(1).normal(scale=0.7, size=(K, D)).astype(np.float32)
    new_shift = params.means + delta

    @jax.jit
    def statistics(params, X, new_shift):
        stats, _ = gj.e_step(params, X)
        moved = recenter_stats(stats, params.means, new_shift)
        return stats, moved, recenter_stats(moved, new_shift, params.means)

    stats, moved, back = statistics(params, jnp.asarray(X), new_shift)

    # float64 oracle: the same responsibilities, moments taken directly about the new shift
    X64, shift64 = X.astype(np.float64), np.asarray(new_shift, np.float64)
    r = responsibilities(*(np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances)),
                         covariance_type, X64)  # fmt: skip
    residuals = X64[None, :, :] - shift64[:, None, :]  # (K, N, D)
    first = np.einsum("nk,knd->kd", r, residuals)
    if covariance_type in ("full", "tied"):
        second = np.einsum("nk,knd,kne->kde", r, residuals, residuals)
    else:
        second = np.einsum("nk,knd->kd", r, residuals**2)
    np.testing.assert_allclose(np.asarray(moved.counts), r.sum(0), rtol=1e-4)
    scale = np.abs(second).max()
    np.testing.assert_allclose(np.asarray(moved.first_moments), first, rtol=1e-3, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(moved.second_moments), second, rtol=1e-4, atol=1e-5 * scale)
    # and moving back gives the original statistics
    _close(back.second_moments, stats.second_moments, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_from_params_give_the_params_back(starts, covariance_type):
    start = starts[covariance_type]
    back = jax.jit(lambda p: gj.m_step(stats_from_params(p), p.means, 0.0))(start)
    _close(back, start, rtol=1e-5, atol=1e-6)


# -- a NumPy re-implementation of the recursion ----------------------------------------------------
def _raw_stats_from_params(w, m, c, covariance_type):
    if covariance_type == "full":
        second = w[:, None, None] * (c + m[:, :, None] * m[:, None, :])
    elif covariance_type == "tied":
        second = w[:, None, None] * (c[None] + m[:, :, None] * m[:, None, :])
    elif covariance_type == "diag":
        second = w[:, None] * (c + m**2)
    else:
        second = w[:, None] * (c[:, None] + m**2)
    return [w, w[:, None] * m, second]


def _raw_m_step(stats, covariance_type, reg):
    n, s1, s2 = stats
    d = s1.shape[1]
    means = s1 / n[:, None]
    if covariance_type in ("full", "tied"):
        within = s2 - n[:, None, None] * means[:, :, None] * means[:, None, :]
        cov = within / n[:, None, None] if covariance_type == "full" else within.sum(0) / n.sum()
        cov = cov + reg * np.eye(d)
    else:
        var = s2 / n[:, None] - means**2
        cov = (var if covariance_type == "diag" else var.mean(1)) + reg
    return n / n.sum(), means, cov


def _numpy_online_em(start, batches, weights, covariance_type, alpha, t0, average_start, reg):
    """Stepwise EM in float64 raw moments ``Σ s r``, ``Σ s r x``, ``Σ s r x xᵀ`` (per unit of
    sample weight ``s``): ``s ← s + γ_t (ŝ − s)``, Polyak average after ``average_start`` updates."""
    w, m, c = (np.asarray(a, np.float64) for a in (start.weights, start.means, start.covariances))
    s = _raw_stats_from_params(w, m, c, covariance_type)
    avg = [a.copy() for a in s]
    for t, (Xb, sw) in enumerate(zip(batches, weights), start=1):
        Xb, sw = np.asarray(Xb, np.float64), np.asarray(sw, np.float64)
        r = responsibilities(w, m, c, covariance_type, Xb) * sw[:, None]
        if covariance_type in ("full", "tied"):
            second = np.einsum("nk,nd,ne->kde", r, Xb, Xb)
        else:
            second = np.einsum("nk,nd->kd", r, Xb**2)
        batch = [r.sum(0) / sw.sum(), r.T @ Xb / sw.sum(), second / sw.sum()]
        gamma = (t + t0) ** (-alpha)
        s = [a + gamma * (b - a) for a, b in zip(s, batch)]
        rate = 1.0 / max(t - average_start, 1)
        avg = [a + rate * (b - a) for a, b in zip(avg, s)]
        w, m, c = _raw_m_step(s, covariance_type, reg)
    return (w, m, c), _raw_m_step(avg, covariance_type, reg)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recursion_matches_a_numpy_reimplementation(data, starts, covariance_type):
    batches = _batches(data)[:5]
    weights = jnp.asarray(np.random.default_rng(2).uniform(0.2, 3.0, (5, BATCH)), jnp.float32)
    start = starts[covariance_type]
    state = gj.online_em_init(start, alpha=0.7, t0=2.0, average_start=1, reg_covar=1e-3)
    for Xb, sw in zip(batches, weights):
        state, estimate = _update(state, Xb, sw)
    iterate, averaged = _numpy_online_em(start, batches, weights, covariance_type, 0.7, 2.0, 1, 1e-3)
    _close(state.params, gj.GMMParams(*iterate, covariance_type=covariance_type), rtol=1e-4, atol=1e-5)
    _close(estimate, gj.GMMParams(*averaged, covariance_type=covariance_type), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(estimate.means), np.asarray(state.params.means), atol=1e-4)


def test_float32_recursion_at_offset_1e4_matches_float64(data, starts):
    """Data at a 1e4 offset in float32: the fit equals the float64 recursion on the same
    (float32-rounded) data, where raw float32 moments would lose every digit of the covariance."""
    offset = 1e4
    X = (data + offset).astype(np.float32)
    batches = _batches(X)[:5]
    start = starts["full"]
    start = start.replace(means=start.means + offset)
    state = gj.online_em_init(start, alpha=0.7, t0=2.0, average_start=1, reg_covar=1e-3)
    for Xb in batches:
        state, estimate = _update(state, Xb, _ones(Xb))
    iterate, averaged = _numpy_online_em(start, batches, [np.ones(BATCH)] * 5, "full", 0.7, 2.0, 1, 1e-3)
    np.testing.assert_allclose(np.asarray(estimate.means), averaged[1], rtol=0, atol=2e-3)
    np.testing.assert_allclose(np.asarray(estimate.covariances), averaged[2], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.asarray(state.params.covariances), iterate[2], rtol=2e-3, atol=2e-3)


# -- convergence to batch EM -----------------------------------------------------------------------
def test_converges_to_batch_em(data, starts, blobs3):
    """Cycling over a small data set (shuffled each pass) with a decreasing step, the averaged
    estimate reaches the batch EM fixed point from the same start (in that optimum's basin)."""
    centers = blobs3[2]
    start = starts["full"].replace(means=jnp.asarray(centers + 0.5, jnp.float32))
    passes = 40
    order = np.concatenate([np.random.default_rng(p).permutation(N) for p in range(passes)])
    batches = jnp.asarray(data[order].reshape(-1, BATCH, D))

    @jax.jit
    def run(state):
        return jax.lax.scan(lambda s, Xb: gj.online_em_update(s, Xb, _ones(Xb)), state, batches)

    state, estimates = run(gj.online_em_init(start, alpha=0.6, average_start=100))
    final = jax.tree_util.tree_map(lambda leaf: leaf[-1], estimates)
    batch = gj.fit_em(
        jax.random.key(0),
        data,
        K,
        max_iter=1000,
        tol=1e-9,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        precisions_init=np.linalg.inv(np.asarray(start.covariances)),
    ).params
    np.testing.assert_allclose(np.asarray(final.weights), np.asarray(batch.weights), atol=5e-3)
    np.testing.assert_allclose(np.asarray(final.means), np.asarray(batch.means), atol=3e-2)
    np.testing.assert_allclose(np.asarray(final.covariances), np.asarray(batch.covariances), atol=5e-2)
    ll = lambda p: float(jnp.mean(gj.log_prob(p, jnp.asarray(data))))  # noqa: E731
    assert ll(batch) - ll(final) < 1e-4 * abs(ll(batch))
    # and one pass (10 updates) is far from it: the test can tell
    early = jax.tree_util.tree_map(lambda leaf: leaf[9], estimates)
    assert np.abs(np.asarray(early.means) - np.asarray(batch.means)).max() > 3e-2 or ll(batch) - ll(early) > 1e-3


# -- transformations -------------------------------------------------------------------------------
def test_vmap_over_models_equals_a_loop(data, starts):
    """Many online models at once: a vmapped state (different starts and step sizes) on shared
    batches gives each model's own run."""
    start = starts["full"]
    alphas = [0.6, 0.8, 1.0]
    inits = [
        gj.online_em_init(start.replace(means=start.means + 0.3 * i), alpha=a, t0=1.0 * i, average_start=1)
        for i, a in enumerate(alphas)
    ]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *inits)
    update = jax.jit(jax.vmap(gj.online_em_update, in_axes=(0, None, None)))
    batches = _batches(data)[:3]
    for Xb in batches:
        stacked, estimates = update(stacked, Xb, _ones(Xb))
    for i, state in enumerate(inits):
        for Xb in batches:
            state, estimate = _update(state, Xb, _ones(Xb))
        lane = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], estimates)
        _close(lane, estimate, rtol=1e-5, atol=1e-6)
        assert int(stacked.step[i]) == 3


def test_zero_weight_batch_changes_nothing(data, starts):
    state = gj.online_em_init(starts["diag"])
    state, _ = _update(state, jnp.asarray(data[:BATCH]), _ones(data[:BATCH]))
    after, _ = _update(state, jnp.asarray(data[BATCH : 2 * BATCH]), jnp.zeros(BATCH, jnp.float32))
    _close(after, state, rtol=0, atol=0)


def test_batch_with_nan_is_skipped_and_counted(data, starts):
    state = gj.online_em_init(starts["diag"])
    state, _ = _update(state, jnp.asarray(data[:BATCH]), _ones(data[:BATCH]))
    bad = data[BATCH : 2 * BATCH].copy()
    bad[7, 1] = np.nan
    after, estimate = _update(state, jnp.asarray(bad), _ones(bad))
    assert int(after.skipped) == 1 and int(after.step) == 1
    _close(dataclasses.replace(after, skipped=state.skipped), state, rtol=0, atol=0)
    assert np.isfinite(np.asarray(estimate.covariances)).all()


# -- validation ------------------------------------------------------------------------------------
def test_validation_messages(data, starts):
    start = starts["full"]
    with pytest.raises(ValueError, match=r"alpha .* must be in \(0.5, 1\], got 0.5"):
        gj.online_em_init(start, alpha=0.5)
    with pytest.raises(ValueError, match="t0 must be"):
        gj.online_em_init(start, t0=-1.0)
    with pytest.raises(ValueError, match="reg_covar"):
        gj.online_em_init(start, reg_covar=-1.0)
    with pytest.raises(ValueError, match="average_start"):
        gj.online_em_init(start, average_start=-1)
    with pytest.raises(ValueError, match="averaging must be True or False"):
        gj.online_em_init(start, averaging=1)
    with pytest.raises(TypeError, match="params must be a gmmjax.GMMParams"):
        gj.online_em_init(np.zeros(3))
    state = gj.online_em_init(start)
    with pytest.raises(ValueError, match=r"X_batch must be 2-D with 2 features .* got shape \(5, 3\)"):
        gj.online_em_update(state, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(5,\)"):
        gj.online_em_update(state, jnp.zeros((5, 2)), jnp.ones(4))


def test_reg_covar_from_options(starts):
    state = gj.online_em_init(starts["full"], options=gj.FitOptions(reg_covar=1e-2))
    assert float(state.reg_covar) == pytest.approx(1e-2)


# -- the estimator -------------------------------------------------------------------------------
def test_partial_fit_initialises_then_follows_the_functional_pair(data):
    X1, X2 = data[:BATCH], data[BATCH : 2 * BATCH]
    weight = np.random.default_rng(5).uniform(0.5, 2.0, BATCH).astype(np.float32)
    model = gj.GaussianMixtureModel(K, seed=0)
    assert model.partial_fit(X1, sample_weight=np.ones(BATCH)) is model
    start = gj.fit_em(jax.random.key(0), X1, K, max_iter=0).params  # the estimator's init on X1
    one_step, _ = _em_step(start, jnp.asarray(X1), _ones(X1), 1e-6)
    np.testing.assert_allclose(model.means_, np.asarray(one_step.means), rtol=1e-5, atol=1e-5)
    model.partial_fit(X2, sample_weight=weight)
    state = gj.online_em_init(start)
    state, _ = _update(state, jnp.asarray(X1), _ones(X1))
    state, estimate = _update(state, jnp.asarray(X2), jnp.asarray(weight))
    for name, value in (("weights_", estimate.weights), ("means_", estimate.means)):
        np.testing.assert_allclose(getattr(model, name), np.asarray(value), rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(model.covariances_, np.asarray(estimate.covariances), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.precisions_cholesky_, np.asarray(gj.precision_cholesky(estimate.covariances, "full")), rtol=1e-4
    )
    assert model.n_iter_ == 2 and model.n_features_in_ == D and not model.converged_
    assert model.lower_bounds_.shape == (2,) and model.lower_bound_ == pytest.approx(float(state.log_likelihood))
    assert model.predict(X2).shape == (BATCH,)
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixtureModel is expecting 2 features"):
        model.partial_fit(np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        model.partial_fit(np.full((10, 2), np.nan, np.float32))
    assert model.n_iter_ == 2  # the refused batches changed nothing


def test_partial_fit_after_fit_continues_from_the_fitted_model(data):
    X1 = data[:BATCH]
    model = gj.GaussianMixtureModel(K, max_iter=0).fit(X1)  # the initialisation, as a fitted model
    fitted = model.params
    model.partial_fit(X1, sample_weight=np.ones(BATCH))
    expected, _ = _em_step(fitted, jnp.asarray(X1), _ones(X1), 1e-6)
    np.testing.assert_allclose(model.means_, np.asarray(expected.means), rtol=1e-5, atol=1e-5)
    assert model.n_iter_ == 1
    model.fit(X1)  # a new fit starts afresh: the online state is dropped
    assert "online_state_" not in model.__dict__


def test_partial_fit_takes_its_schedule_and_averaging_from_the_estimator(data):
    from gmmjax._online import DEFAULT_ALPHA, DEFAULT_AVERAGE_START, DEFAULT_T0

    defaults = gj.GaussianMixtureModel()
    assert (defaults.learning_decay, defaults.learning_offset, defaults.average, defaults.average_start) == (
        DEFAULT_ALPHA,
        DEFAULT_T0,
        True,
        DEFAULT_AVERAGE_START,
    )
    X1, X2, X3 = (data[i * BATCH : (i + 1) * BATCH] for i in range(3))
    model = gj.GaussianMixtureModel(K, seed=0, learning_decay=0.8, learning_offset=2.0, average_start=1)
    for batch in (X1, X2):
        model.partial_fit(batch, sample_weight=np.ones(BATCH))
    start = gj.fit_em(jax.random.key(0), X1, K, max_iter=0).params  # the estimator's init on X1
    state = gj.online_em_init(start, alpha=0.8, t0=2.0, average_start=1)
    for batch in (X1, X2):
        state, estimate = _update(state, jnp.asarray(batch), _ones(batch))
    assert float(model.online_state_.alpha) == pytest.approx(0.8) and float(model.online_state_.t0) == 2.0
    np.testing.assert_allclose(model.means_, np.asarray(estimate.means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.covariances_, np.asarray(estimate.covariances), rtol=1e-5, atol=1e-6)
    # a change between calls applies to the later updates
    model.set_params(learning_decay=1.0, average=False).partial_fit(X3, sample_weight=np.ones(BATCH))
    state = dataclasses.replace(state, alpha=jnp.asarray(1.0, jnp.float32), averaging=False)
    state, estimate = _update(state, jnp.asarray(X3), _ones(X3))
    np.testing.assert_allclose(model.means_, np.asarray(estimate.means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.means_, np.asarray(state.params.means), rtol=1e-6)  # no averaging
    assert model.n_iter_ == 3


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"learning_decay": 0.5}, r"learning_decay \(the exponent .*\) must be in \(0\.5, 1\], got 0\.5"),
        ({"learning_decay": "fast"}, "learning_decay must be a non-negative number, got 'fast'"),
        ({"learning_offset": -1.0}, "learning_offset must be a non-negative finite number, got -1.0"),
        ({"average": "yes"}, r"average \(Polyak averaging in partial_fit\) must be True or False, got 'yes'"),
        ({"average_start": 2.5}, "average_start must be an integer >= 0, got 2.5"),
    ],
)
def test_partial_fit_refuses_bad_online_settings(data, setting, message):
    model = gj.GaussianMixtureModel(K, **setting)  # scikit-learn's rule: checked when used, not in __init__
    with pytest.raises(ValueError, match=message):
        model.partial_fit(data[:BATCH])
    assert "params_" not in model.__dict__
