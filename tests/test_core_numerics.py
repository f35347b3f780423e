"""Numerical behaviour of the functional core.

Oracles: scikit-learn EM in float64 from the same starting parameters, closed-form
weighted maximum-likelihood estimates (NumPy float64), exact sufficient-statistic sums,
and sampling statistics with explicit standard errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj

COV_TYPES = O.COVARIANCE_TYPES


def _precisions_identity(covariance_type, k, d):
    return {
        "full": np.stack([np.eye(d)] * k),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[covariance_type]


# --------------------------------------------------------------------------- far from the origin

OFFSET = 1e4
N_OFF, K_OFF = 300, 2


@pytest.fixture(scope="module")
def offset_data():
    """Two overlapping-ish clusters, stored in float32 at +1e4 and (exactly) at the origin."""
    X, _, _ = O.make_blobs(n=N_OFF, d=2, k=K_OFF, seed=21, spread=2.0)
    X_off = (X + OFFSET).astype(np.float32)
    X_org = (X_off.astype(np.float64) - OFFSET).astype(np.float32)  # exact: same data, shifted
    np.testing.assert_array_equal(X_org.astype(np.float64) + OFFSET, X_off.astype(np.float64))
    return X_off, X_org


def _fit_from(X, covariance_type, means_init, precisions_init, max_iter=30):
    return gj.fit_em(
        jax.random.key(0),
        X,
        K_OFF,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=max_iter,
        weights_init=np.full(K_OFF, 1.0 / K_OFF),
        means_init=means_init,
        precisions_init=precisions_init,
    )


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_float32_offset_data_fits_like_data_at_origin(offset_data, covariance_type):
    """float32 data at +1e4 gives the same fit as the same data at the origin, and both match
    scikit-learn's float64 EM from the same start (a naive E[xxᵀ] − μμᵀ would lose all
    digits of a unit variance at 1e4 in float32)."""
    X_off, X_org = offset_data
    w0, m0, c0 = O.initial_parameters(X_org, K_OFF, covariance_type, seed=3)
    prec0 = O.precisions_from_covariances(c0, covariance_type)
    sk = O.fit_sklearn_from(X_org.astype(np.float64), K_OFF, covariance_type, np.full(K_OFF, 0.5), m0, c0, max_iter=30)
    r_org = _fit_from(X_org, covariance_type, m0, prec0)
    r_off = _fit_from(X_off, covariance_type, m0 + OFFSET, prec0)
    for res, shift in ((r_org, 0.0), (r_off, OFFSET)):
        p = res.params
        np.testing.assert_allclose(np.asarray(p.means, np.float64) - shift, sk.means_, atol=2e-3)
        O.assert_rel_close(p.covariances, sk.covariances_, 1e-3, "covariances")
        O.assert_rel_close(p.weights, sk.weights_, 1e-3, "weights")
        np.testing.assert_allclose(float(res.lower_bound), sk.lower_bound_, rtol=1e-4)


def test_float32_offset_data_default_init(offset_data):
    """The default (k-means) initialisation also works at +1e4: the same optimum as at the origin."""
    X_off, X_org = offset_data
    r_off = gj.fit_em(jax.random.key(1), X_off, K_OFF, n_init=2, tol=1e-5, max_iter=100)
    r_org = gj.fit_em(jax.random.key(1), X_org, K_OFF, n_init=2, tol=1e-5, max_iter=100)
    order_off = np.argsort(np.asarray(r_off.params.means)[:, 0])
    order_org = np.argsort(np.asarray(r_org.params.means)[:, 0])
    np.testing.assert_allclose(
        np.asarray(r_off.params.means, np.float64)[order_off] - OFFSET,
        np.asarray(r_org.params.means)[order_org],
        atol=5e-3,
    )
    np.testing.assert_allclose(
        np.asarray(r_off.params.covariances)[order_off],
        np.asarray(r_org.params.covariances)[order_org],
        rtol=2e-3,
        atol=1e-4,
    )
    np.testing.assert_allclose(float(r_off.lower_bound), float(r_org.lower_bound), rtol=1e-4)
    # and the score of the offset fit, evaluated in float64, is the oracle's best
    p = r_off.params
    oracle = np.mean(O.mixture_log_prob(p.weights, p.means, p.covariances, "full", X_off))
    with O.single_threaded():
        from sklearn.mixture import GaussianMixture

        sk = GaussianMixture(K_OFF, n_init=2, random_state=0, tol=1e-6).fit(X_org.astype(np.float64))
    assert oracle >= sk.score(X_org.astype(np.float64)) - 1e-4


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_clusters_far_apart_get_correct_covariances(covariance_type):
    """Clusters at ±1e4 (float32): covariances equal the closed-form ML estimates from the
    (perfectly separated) labels, computed in float64."""
    rng = np.random.default_rng(5)
    n = N_OFF // 2
    A = np.array([[1.0, 0.0], [0.6, 0.5]])
    X = np.concatenate([rng.normal(size=(n, 2)) @ A.T - OFFSET, rng.normal(size=(n, 2)) * [0.7, 1.3] + OFFSET])
    X = X.astype(np.float32)
    labels = np.repeat([0, 1], n)
    means_init = np.array([[-OFFSET + 1.0, -OFFSET - 1.0], [OFFSET - 1.0, OFFSET + 0.5]])
    # (max_iter as in the offset test: the same compiled fit is reused)
    res = _fit_from(X, covariance_type, means_init, _precisions_identity(covariance_type, 2, 2))
    X64 = X.astype(np.float64)
    mu = np.stack([X64[labels == j].mean(0) for j in range(2)])
    full = np.stack([np.cov(X64[labels == j].T, bias=True) for j in range(2)])
    reg = 1e-6
    expected = {
        "full": full + reg * np.eye(2),
        "tied": full.mean(0) + reg * np.eye(2),  # equal counts: pooled = average
        "diag": np.stack([np.diag(f) for f in full]) + reg,
        "spherical": np.array([np.trace(f) / 2 for f in full]) + reg,
    }[covariance_type]
    p = res.params
    np.testing.assert_allclose(np.asarray(p.means, np.float64), mu, atol=2e-3)
    O.assert_rel_close(p.covariances, expected, 1e-3, "covariances")
    np.testing.assert_allclose(np.asarray(p.weights), [0.5, 0.5], atol=1e-6)
    assert not np.any(np.asarray(res.collapsed_components))


# --------------------------------------------------------------------------- dtypes


def test_dtype_follows_float32_input(small_data):
    X = small_data
    kw = dict(covariance_type="diag", n_init=3, init_params="random_from_data", max_iter=40)
    res = gj.fit_em(jax.random.key(0), X, 4, **kw)
    for leaf in (
        res.params.weights,
        res.params.means,
        res.params.covariances,
        res.lower_bound,
        res.lower_bound_history,
        res.restart_lower_bounds,
    ):
        assert leaf.dtype == jnp.float32, leaf.dtype
    assert jax.jit(gj.log_prob)(res.params, X).dtype == jnp.float32
    Y, labels = jax.jit(gj.sample, static_argnums=2)(jax.random.key(1), res.params, 5)
    assert Y.dtype == jnp.float32 and labels.dtype == jnp.int32
    stats, ll = jax.jit(gj.e_step)(res.params, jnp.asarray(X))
    assert stats.counts.dtype == jnp.float32 and ll.dtype == jnp.float32
    assert jax.jit(gj.bic)(res.params, X).dtype == jnp.float32
    # float64 NumPy input without jax_enable_x64: computed (and returned) in float32, no error
    res64 = gj.fit_em(jax.random.key(0), X.astype(np.float64), 4, **kw)
    assert res64.params.means.dtype == jnp.float32


# --------------------------------------------------------------------------- sufficient statistics


def _params_for(X, covariance_type, seed):
    w, m, c = O.initial_parameters(X, 3, covariance_type, seed=seed)
    return gj.GMMParams(
        jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), covariance_type
    )


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_e_step_statistics_match_oracle_and_are_additive(small_data, covariance_type):
    X = small_data
    params = _params_for(X, covariance_type, seed=8)
    sw = np.random.default_rng(9).uniform(0.0, 2.0, len(X)).astype(np.float32)
    e_step = jax.jit(gj.e_step)
    stats, ll = e_step(params, jnp.asarray(X), jnp.asarray(sw))
    counts, first, second, ll_o = O.e_step_statistics(params, covariance_type, X, sw.astype(np.float64))
    O.assert_rel_close(stats.counts, counts, 1e-4, "counts")
    O.assert_rel_close(stats.first_moments, first, 1e-4, "first_moments")
    O.assert_rel_close(stats.second_moments, second, 1e-4, "second_moments")
    np.testing.assert_allclose(float(ll), ll_o, rtol=1e-5)
    # chunks about the same parameters add up to the whole
    parts = [e_step(params, jnp.asarray(X[a:b]), jnp.asarray(sw[a:b])) for a, b in ((0, 100), (100, 200), (200, 300))]
    summed = parts[0][0] + parts[1][0] + parts[2][0]
    assert summed.covariance_type == covariance_type
    for got, want in (
        (summed.counts, stats.counts),
        (summed.first_moments, stats.first_moments),
        (summed.second_moments, stats.second_moments),
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(sum(p[1] for p in parts)), float(ll), rtol=1e-5)
    # the M-step of the summed statistics equals that of the whole
    m_step = jax.jit(gj.m_step)
    new_whole = m_step(stats, params.means)
    new_parts = m_step(summed, params.means)
    O.assert_trees_close(new_whole, new_parts, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_m_step_is_weighted_maximum_likelihood(small_data, covariance_type):
    """m_step(e_step(...)) equals the closed-form weighted ML estimate (plus reg_covar)."""
    X = small_data
    params = _params_for(X, covariance_type, seed=10)
    reg = 1e-3
    new = jax.jit(lambda p, x: gj.m_step(gj.e_step(p, x)[0], p.means, reg))(params, jnp.asarray(X))
    w, m, c = (np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances))
    X64 = X.astype(np.float64)
    r = O.responsibilities(w, m, c, covariance_type, X64)
    nk = r.sum(0)
    mu = (r.T @ X64) / nk[:, None]
    full = np.stack([(X64 - mu[j]).T @ (r[:, j : j + 1] * (X64 - mu[j])) / nk[j] for j in range(3)])
    d = X.shape[1]
    expected = {
        "full": full + reg * np.eye(d),
        "tied": (full * nk[:, None, None]).sum(0) / nk.sum() + reg * np.eye(d),
        "diag": np.stack([np.diag(f) for f in full]) + reg,
        "spherical": np.array([np.trace(f) / d for f in full]) + reg,
    }[covariance_type]
    O.assert_rel_close(new.weights, nk / nk.sum(), 1e-4, "weights")
    O.assert_rel_close(new.means, mu, 1e-4, "means")
    O.assert_rel_close(new.covariances, expected, 1e-4, "covariances")


@pytest.mark.parametrize("covariance_type", ["full", pytest.param("spherical", marks=pytest.mark.slow)])
def test_sample_weight_two_equals_duplicated_rows(small_data, covariance_type):
    X = small_data[:120]
    sw = np.random.default_rng(11).integers(0, 4, len(X))  # 0..3, zeros included
    X_dup = np.repeat(X, sw, axis=0)
    params = _params_for(X, covariance_type, seed=12)
    # statistics
    e_step = jax.jit(gj.e_step)
    s_w, ll_w = e_step(params, jnp.asarray(X), jnp.asarray(sw, jnp.float32))
    s_d, ll_d = e_step(params, jnp.asarray(X_dup))
    O.assert_trees_close(s_w, s_d, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(ll_w), float(ll_d), rtol=1e-5)
    # whole fits from the same starting parameters
    init = dict(
        weights_init=np.asarray(params.weights),
        means_init=np.asarray(params.means),
        precisions_init=O.precisions_from_covariances(np.asarray(params.covariances, np.float64), covariance_type),
    )
    kw = dict(covariance_type=covariance_type, tol=0.0, max_iter=10, **init)
    r_w = gj.fit_em(jax.random.key(0), X, 3, sample_weight=sw.astype(np.float64), **kw)
    r_d = gj.fit_em(jax.random.key(0), X_dup, 3, **kw)
    O.assert_trees_close(r_w.params, r_d.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(r_w.lower_bound), float(r_d.lower_bound), rtol=1e-5)
    # and sample_weight=2 everywhere changes nothing (the lower bound is per unit weight)
    r_2 = gj.fit_em(jax.random.key(0), X, 3, sample_weight=np.full(len(X), 2.0), **kw)
    r_1 = gj.fit_em(jax.random.key(0), X, 3, **kw)
    O.assert_trees_close(r_2, r_1, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- sampling


def _sampling_params(covariance_type):
    w = np.array([0.2, 0.5, 0.3])
    m = np.array([[-4.0, 0.0, 1.0], [3.0, 3.0, -2.0], [0.0, -5.0, 4.0]])
    base = np.array([[1.0, 0.5, 0.2], [0.5, 2.0, -0.3], [0.2, -0.3, 0.7]])
    c = {
        "full": np.stack([base * s for s in (1.0, 0.5, 2.0)]),
        "tied": base,
        "diag": np.array([[1.0, 0.2, 3.0], [0.5, 0.5, 0.5], [2.0, 1.0, 0.3]]),
        "spherical": np.array([0.3, 1.0, 2.5]),
    }[covariance_type]
    return w, m, c


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_points_beyond_float32_squared_range_give_finite_results(covariance_type):
    """A point 1e20 away: its squared distance overflows float32 (max 3.4e38), which used to
    make posteriors inf - inf = NaN. It must come out as an extremely unlikely point instead:
    finite log-density far below any real one, posteriors summing to one, finite gradients,
    and the ordinary points in the same call unchanged."""
    K, D = 3, 2
    params = gj.GMMParams(
        *(jnp.asarray(a, jnp.float32) for a in O.random_mixture(covariance_type, K, D, seed=4)), covariance_type
    )
    near = np.array([[0.3, -0.2], [1.0, 2.0]], np.float32)
    X = jnp.asarray(np.concatenate([near, [[1e20, 1e20], [-1e20, 3e19]]]), jnp.float32)
    log_density = np.asarray(gj.log_prob(params, X))
    posteriors = np.asarray(gj.responsibilities(params, X))
    grads = np.asarray(jax.grad(lambda x: gj.log_prob(params, x).sum())(X))
    assert np.all(np.isfinite(log_density)) and np.all(log_density[2:] < -1e30)
    np.testing.assert_allclose(log_density[:2], np.asarray(gj.log_prob(params, jnp.asarray(near))), rtol=1e-6)
    assert np.all(np.isfinite(posteriors)) and np.allclose(posteriors.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_sample_matches_parameters(covariance_type):
    w, m, c = _sampling_params(covariance_type)
    params = gj.GMMParams(
        jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), covariance_type
    )
    n = 60_000
    Y, labels = jax.jit(gj.sample, static_argnums=2)(jax.random.key(3), params, n)
    Y, labels = np.asarray(Y, np.float64), np.asarray(labels)
    assert Y.shape == (n, 3) and labels.shape == (n,)
    counts = np.bincount(labels, minlength=3)
    np.testing.assert_array_less(np.abs(counts / n - w), 5 * np.sqrt(w * (1 - w) / n))
    covs = O.full_covariances(c, covariance_type, 3, 3)
    for j in range(3):
        Yj = Y[labels == j]
        nj = len(Yj)
        se_mean = np.sqrt(np.diag(covs[j]) / nj)
        np.testing.assert_array_less(np.abs(Yj.mean(0) - m[j]), 5 * se_mean)
        emp = np.cov(Yj.T)
        # Var of a sample covariance entry: (S_ii S_jj + S_ij^2) / n
        se_cov = np.sqrt((np.outer(np.diag(covs[j]), np.diag(covs[j])) + covs[j] ** 2) / nj)
        np.testing.assert_array_less(np.abs(emp - covs[j]), 5 * se_cov)
    # the whole-sample mean matches the mixture mean
    np.testing.assert_allclose(Y.mean(0), w @ m, atol=0.05)


def test_generate_gmm_data_deterministic_and_labels():
    w = [0.3, 0.7]
    mu = [[-10.0, 0.0], [10.0, 5.0]]
    cov = [[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 2.0]]]
    X1 = gj.generate_gmm_data(num_samples=400, weights=w, means=mu, covariances=cov)
    X2 = gj.generate_gmm_data(num_samples=400, weights=w, means=mu, covariances=cov)
    np.testing.assert_array_equal(np.asarray(X1), np.asarray(X2))
    assert X1.shape == (400, 2) and X1.dtype == jnp.float32
    X3, labels = gj.generate_gmm_data(num_samples=400, weights=w, means=mu, covariances=cov, return_labels=True)
    np.testing.assert_array_equal(np.asarray(X3), np.asarray(X1))
    labels = np.asarray(labels)
    assert labels.shape == (400,) and set(np.unique(labels)) <= {0, 1}
    # labels are the generating components: well-separated means make that checkable
    np.testing.assert_array_equal(labels, (np.asarray(X3)[:, 0] > 0).astype(int))
    assert abs(labels.mean() - 0.7) < 5 * np.sqrt(0.21 / 400)
    X4 = gj.generate_gmm_data(num_samples=400, weights=w, means=mu, covariances=cov, key=jax.random.key(1))
    assert not np.allclose(np.asarray(X4), np.asarray(X1))


# --------------------------------------------------------------------------- degenerate components


@pytest.mark.parametrize("reg_covar", [1e-6, 0.0])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_m_step_with_empty_component_is_finite(small_data, covariance_type, reg_covar):
    """A component that no point belongs to (responsibilities underflow to exactly 0) gets
    finite parameters: ~zero weight, its mean kept, a positive definite covariance."""
    X = jnp.asarray(small_data)
    params = _params_for(small_data, covariance_type, seed=13)
    far = np.asarray(params.means).copy()
    far[2] = 1e4
    params = params.replace(means=jnp.asarray(far, jnp.float32))
    stats, ll = jax.jit(gj.e_step)(params, X)
    assert float(stats.counts[2]) == 0.0  # really empty
    new = jax.jit(gj.m_step)(stats, params.means, reg_covar)
    for leaf in jax.tree_util.tree_leaves(new):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(new.weights[2]) < 1e-6
    np.testing.assert_allclose(float(jnp.sum(new.weights)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.means[2]), far[2])
    covs = O.full_covariances(np.asarray(new.covariances, np.float64), covariance_type, 3, X.shape[1])
    assert np.all(np.linalg.eigvalsh(covs) > 0)
    assert np.all(np.isfinite(np.asarray(gj.log_prob(new, X))))


@pytest.mark.parametrize("covariance_type", ["full", "diag", pytest.param("spherical", marks=pytest.mark.slow)])
def test_collapsed_component_without_regularisation_is_finite_and_flagged(covariance_type):
    """reg_covar=0, a component alone on one isolated point: its covariance collapses to 0;
    the fit stays finite and collapsed_components reports that component (only)."""
    rng = np.random.default_rng(14)
    X = np.concatenate([rng.normal(size=(100, 2)), [[50.0, 50.0]]]).astype(np.float32)
    means_init = np.array([[0.0, 0.0], [49.0, 49.5]])
    res = gj.fit_em(
        jax.random.key(0),
        X,
        2,
        covariance_type=covariance_type,
        reg_covar=0.0,
        tol=0.0,
        max_iter=10,
        weights_init=[0.5, 0.5],
        means_init=means_init,
        precisions_init=_precisions_identity(covariance_type, 2, 2),
    )
    for leaf in jax.tree_util.tree_leaves(res):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(leaf))), leaf
    np.testing.assert_array_equal(np.asarray(res.collapsed_components), [[False, True]])
    p = res.params
    np.testing.assert_allclose(np.asarray(p.means[1]), [50.0, 50.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(p.weights), [100 / 101, 1 / 101], rtol=1e-5)
    covs = O.full_covariances(np.asarray(p.covariances, np.float64), covariance_type, 2, 2)
    assert np.all(np.linalg.eigvalsh(covs) > 0)
    # the other component is untouched by the collapse: the ML estimate of the 100 points
    X64 = X[:100].astype(np.float64)
    np.testing.assert_allclose(np.asarray(p.means[0]), X64.mean(0), atol=1e-4)
    assert np.all(np.isfinite(np.asarray(gj.log_prob(p, X))))


# Last in the file: the float64 subprocess starts at collection and runs meanwhile.
def test_dtype_float64_in_subprocess(x64_check):
    """With jax_enable_x64: float64 in -> float64 out; float32 in -> float32 out."""
    x64_check("dtype_float64")
