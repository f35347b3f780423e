"""Independent float64 NumPy/SciPy/scikit-learn oracles for the gmmjax tests.

Nothing here imports gmmjax: every function is a reference implementation the library
is compared against. Used both in-process (pytest) and by ``_x64_parity_script.py``.
"""

from __future__ import annotations

import jax
import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def make_blobs(n=200, d=2, k=3, seed=0, spread=5.0, scale=1.0, anisotropic=True):
    """Deterministic mixture sample: returns ``(X, labels, centers)`` in float64."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    labels = np.arange(n) % k
    rng.shuffle(labels)
    X = np.empty((n, d))
    for j in range(k):
        idx = labels == j
        if anisotropic:
            A = rng.normal(size=(d, d)) * 0.5 + np.eye(d)
        else:
            A = np.eye(d)
        X[idx] = centers[j] + scale * rng.normal(size=(idx.sum(), d)) @ A.T
    return X, labels, centers


def full_covariances(covariances, covariance_type, num_components, num_features):
    """Any covariance type as ``(K, D, D)`` float64 matrices."""
    c = np.asarray(covariances, dtype=np.float64)
    k, d = num_components, num_features
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (k, d, d)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(row) for row in c])
    return np.stack([v * np.eye(d) for v in c])


def component_log_joint(weights, means, covariances, covariance_type, X):
    """``(N, K)`` ``log w_k + log N(x | mu_k, Sigma_k)`` with scipy.stats.multivariate_normal."""
    weights = np.asarray(weights, np.float64)
    means = np.asarray(means, np.float64)
    X = np.asarray(X, np.float64)
    k, d = means.shape
    covs = full_covariances(covariances, covariance_type, k, d)
    return np.stack(
        [np.log(weights[j]) + multivariate_normal(means[j], covs[j]).logpdf(X).reshape(-1) for j in range(k)],
        axis=1,
    )


def mixture_log_prob(weights, means, covariances, covariance_type, X):
    """``(N,)`` mixture log-density: logsumexp of weighted scipy log-pdfs, float64."""
    return logsumexp(component_log_joint(weights, means, covariances, covariance_type, X), axis=1)


def responsibilities(weights, means, covariances, covariance_type, X):
    lj = component_log_joint(weights, means, covariances, covariance_type, X)
    return np.exp(lj - logsumexp(lj, axis=1, keepdims=True))


def num_parameters(k, d, covariance_type):
    cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d, "spherical": k}
    return cov[covariance_type] + k * d + k - 1


def bic(weights, means, covariances, covariance_type, X):
    """``-2 log L + p log n`` in float64 (scikit-learn's sign convention)."""
    X = np.asarray(X, np.float64)
    k, d = np.shape(means)
    ll = mixture_log_prob(weights, means, covariances, covariance_type, X).sum()
    return -2.0 * ll + num_parameters(k, d, covariance_type) * np.log(X.shape[0])


def precisions_from_covariances(covariances, covariance_type):
    """scikit-learn ``precisions_init`` from covariances (matrix inverse / reciprocal)."""
    c = np.asarray(covariances, np.float64)
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(c)
    return 1.0 / c


def precision_cholesky(covariances, covariance_type):
    """``P`` with ``P Pᵀ = Σ⁻¹`` (``P = L⁻ᵀ``, ``Σ = L Lᵀ``) / ``1/sqrt(var)``: scikit-learn's layout."""
    c = np.asarray(covariances, np.float64)
    if covariance_type in ("full", "tied"):
        L = np.linalg.cholesky(c)
        eye = np.broadcast_to(np.eye(c.shape[-1]), c.shape)
        return np.swapaxes(np.linalg.solve(L, eye), -1, -2)
    return 1.0 / np.sqrt(c)


def random_mixture(covariance_type, k, d, seed):
    """Random valid mixture parameters ``(weights, means, covariances)`` as float64 NumPy arrays."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 1.0, size=k)
    w /= w.sum()
    m = rng.normal(scale=2.0, size=(k, d))
    if covariance_type == "full":
        A = rng.normal(size=(k, d, d))
        c = A @ np.swapaxes(A, -1, -2) + 0.5 * np.eye(d)
    elif covariance_type == "tied":
        A = rng.normal(size=(d, d))
        c = A @ A.T + 0.5 * np.eye(d)
    elif covariance_type == "diag":
        c = rng.uniform(0.3, 2.0, size=(k, d))
    else:
        c = rng.uniform(0.3, 2.0, size=k)
    return w, m, c


def sklearn_model(weights, means, covariances, covariance_type):
    """A 'fitted' scikit-learn GaussianMixture holding the given parameters (float64)."""
    from sklearn.mixture import GaussianMixture

    weights = np.asarray(weights, np.float64)
    means = np.asarray(means, np.float64)
    covariances = np.asarray(covariances, np.float64)
    gm = GaussianMixture(n_components=len(weights), covariance_type=covariance_type)
    gm.weights_ = weights
    gm.means_ = means
    gm.covariances_ = covariances
    gm.precisions_cholesky_ = precision_cholesky(covariances, covariance_type)
    gm.n_features_in_ = means.shape[1]
    return gm


def initial_parameters(X, k, covariance_type, seed=0):
    """Deliberately imperfect starting parameters (random data points as means, the data's
    covariance, unequal weights) shared by gmmjax and scikit-learn in the parity tests."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    n, d = X.shape
    means = X[rng.choice(n, size=k, replace=False)] + 0.1 * rng.normal(size=(k, d))
    weights = rng.uniform(0.5, 1.5, size=k)
    weights /= weights.sum()
    data_cov = np.cov(X.T) + 0.05 * np.eye(d)
    scales = rng.uniform(0.5, 1.5, size=k)
    if covariance_type == "full":
        cov = np.stack([s * data_cov for s in scales])
    elif covariance_type == "tied":
        cov = data_cov
    elif covariance_type == "diag":
        cov = np.stack([s * np.diag(data_cov) for s in scales])
    else:
        cov = scales * np.mean(np.diag(data_cov))
    return weights, means, cov


def single_threaded():
    """Context manager limiting BLAS/OpenMP pools to one thread: scikit-learn's tiny fits are
    then faster and do not fight JAX (or the float64 subprocess) for the machine's cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit_sklearn_from(X, k, covariance_type, weights, means, covariances, max_iter, tol=0.0, reg_covar=1e-6):
    """scikit-learn EM from the given starting parameters (float64), ConvergenceWarning silenced."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        tol=tol,
        max_iter=max_iter,
        reg_covar=reg_covar,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions_from_covariances(covariances, covariance_type),
        init_params="random",  # unused (all three *_init are given); avoids a k-means run
        random_state=0,
    )
    with warnings.catch_warnings(), single_threaded():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(np.asarray(X, np.float64))
    return gm


def central_difference(f, x, h):
    """Central finite-difference gradient of the scalar function ``f`` at ``x`` (float64)."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def assert_matches_sklearn_fit(result, sk, rtol):
    """Best params, lower bound and its history of a gmmjax ``FitResult`` vs a fitted sklearn model."""
    p = result.params
    assert_rel_close(p.weights, sk.weights_, rtol, "weights")
    assert_rel_close(p.means, sk.means_, rtol, "means")
    assert_rel_close(p.covariances, sk.covariances_, rtol, "covariances")
    assert_rel_close(result.lower_bound, sk.lower_bound_, rtol, "lower_bound")
    assert_rel_close(result.lower_bound_history[0], np.asarray(sk.lower_bounds_), rtol, "lower_bound history")


def assert_rel_close(actual, desired, rtol, name="", floor=1e-2):
    """Elementwise ``|a - d| <= rtol * |d| + floor * rtol * max|d|``: relative, with a small
    absolute floor (a fraction of the array's scale) for entries near zero."""
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (name, actual.shape, desired.shape)
    floor = floor * rtol * max(float(np.max(np.abs(desired))), 1e-300)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=floor, err_msg=name)


def e_step_statistics(params, covariance_type, X, sample_weight):
    """float64 counts, first and second moments about the means, and the weighted log-likelihood."""
    w, m, c = (np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances))
    X = np.asarray(X, np.float64)
    r = responsibilities(w, m, c, covariance_type, X) * sample_weight[:, None]
    counts = r.sum(0)
    first = np.stack([(r[:, j : j + 1] * (X - m[j])).sum(0) for j in range(len(w))])
    if covariance_type in ("full", "tied"):
        second = np.stack([(X - m[j]).T @ (r[:, j : j + 1] * (X - m[j])) for j in range(len(w))])
    else:
        second = np.stack([(r[:, j : j + 1] * (X - m[j]) ** 2).sum(0) for j in range(len(w))])
    ll = (sample_weight * mixture_log_prob(w, m, c, covariance_type, X)).sum()
    return counts, first, second, ll


def assert_trees_close(actual, desired, rtol=0.0, atol=0.0):
    """Two pytrees of the same structure whose leaves agree within ``rtol``/``atol``
    (``np.testing.assert_allclose`` per leaf; both 0: equal, NaN where the other is NaN)."""
    actual_leaves, actual_tree = jax.tree_util.tree_flatten(actual)
    desired_leaves, desired_tree = jax.tree_util.tree_flatten(desired)
    assert actual_tree == desired_tree, (actual_tree, desired_tree)
    for a, b in zip(actual_leaves, desired_leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
