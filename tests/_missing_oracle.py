"""A NumPy float64 oracle of EM with missing values (row by row, textbook formulas)."""

from __future__ import annotations

import numpy as np


def dense_covariances(covariances, covariance_type, K, D):
    c = np.asarray(covariances, np.float64)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (K, D, D)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(row) for row in c])
    return np.stack([s * np.eye(D) for s in c])


def log_joint(weights, means, covs, X):
    """(N, K) log w_k + log N(x_O | μ_O, Σ_OO); rows with nothing observed: log w_k."""
    N, K = X.shape[0], len(weights)
    out = np.empty((N, K))
    for n in range(N):
        o = ~np.isnan(X[n])
        for k in range(K):
            if not o.any():
                out[n, k] = np.log(weights[k])
                continue
            S = covs[k][np.ix_(o, o)]
            r = X[n, o] - means[k, o]
            _, logdet = np.linalg.slogdet(S)
            out[n, k] = np.log(weights[k]) - 0.5 * (r @ np.linalg.solve(S, r) + logdet + o.sum() * np.log(2 * np.pi))
    return out


def conditional(means_k, cov_k, x):
    """Conditional mean (full vector) and covariance (D, D, zero on observed) given observed."""
    o = ~np.isnan(x)
    m = ~o
    mean = np.where(o, x, means_k)
    cov = np.zeros((len(x), len(x)))
    if m.any() and o.any():
        Soo, Smo = cov_k[np.ix_(o, o)], cov_k[np.ix_(m, o)]
        mean[m] = means_k[m] + Smo @ np.linalg.solve(Soo, x[o] - means_k[o])
        cov[np.ix_(m, m)] = cov_k[np.ix_(m, m)] - Smo @ np.linalg.solve(Soo, Smo.T)
    elif m.any():
        cov[np.ix_(m, m)] = cov_k[np.ix_(m, m)]
    return mean, cov


def em_step(weights, means, covariances, covariance_type, X, reg_covar, sample_weight=None):
    """One EM step; returns ((weights, means, covariances), mean observed-data log-likelihood)."""
    X = np.asarray(X, np.float64)
    N, D = X.shape
    K = len(weights)
    covs = dense_covariances(covariances, covariance_type, K, D)
    s = np.ones(N) if sample_weight is None else np.asarray(sample_weight, np.float64)
    s = np.where(np.isnan(X).all(axis=1), 0.0, s)
    lj = log_joint(weights, means, covs, X)
    peak = lj.max(axis=1, keepdims=True)
    norm = peak[:, 0] + np.log(np.exp(lj - peak).sum(axis=1))
    resp = np.exp(lj - norm[:, None]) * s[:, None]
    ll = (s * norm).sum() / s.sum()
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
    new_means = np.zeros((K, D))
    new_covs = np.zeros((K, D, D))
    for k in range(K):
        cm = [conditional(means[k], covs[k], X[n]) for n in range(N)]
        xs = np.stack([c[0] for c in cm])
        new_means[k] = resp[:, k] @ xs / nk[k]
        for n in range(N):
            e = xs[n] - new_means[k]
            new_covs[k] += resp[n, k] * (np.outer(e, e) + cm[n][1])
        new_covs[k] /= nk[k]
    new_weights = nk / nk.sum()
    if covariance_type == "full":
        cov = new_covs + reg_covar * np.eye(D)
    elif covariance_type == "tied":
        cov = (nk[:, None, None] * new_covs).sum(axis=0) / nk.sum() + reg_covar * np.eye(D)
    elif covariance_type == "diag":
        cov = np.diagonal(new_covs, axis1=1, axis2=2) + reg_covar
    else:
        cov = np.diagonal(new_covs, axis1=1, axis2=2).mean(axis=1) + reg_covar
    return (new_weights, new_means, cov), ll


def impute(weights, means, covariances, covariance_type, X):
    X = np.asarray(X, np.float64)
    K, D = len(weights), X.shape[1]
    covs = dense_covariances(covariances, covariance_type, K, D)
    lj = log_joint(weights, means, covs, X)
    resp = np.exp(lj - lj.max(axis=1, keepdims=True))
    resp /= resp.sum(axis=1, keepdims=True)
    out = X.copy()
    for n in range(X.shape[0]):
        out[n] = sum(resp[n, k] * conditional(means[k], covs[k], X[n])[0] for k in range(K))
    return out
