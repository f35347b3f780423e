"""float64 checks of MAP EM (``prior=``) against a NumPy/SciPy oracle, run in a subprocess
because ``jax_enable_x64`` is global (started by ``tests/test_prior.py``).

The oracle is written from mclust's formulas (``src/mclust.f``: ``msvvvp``, ``mseeep``,
``msvvip``, ``msviip``; ``R/mclust.R``: ``defaultPrior``), with the within scatter and the
shrinkage term computed directly (not as pseudo-statistics, as gmmjax does), and the log-prior
from ``scipy.stats`` (``invwishart``, ``invgamma``, ``multivariate_normal``).

Prints one line ``PRIOR_X64 <json>``: each check's largest relative error (or its traceback).
"""

from __future__ import annotations

import json
import pathlib
import sys
import traceback

import jax

if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
from scipy import stats as st  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

import gmmjax as gj  # noqa: E402

TYPES = ("full", "tied", "diag", "spherical")
N, D, K = 120, 3, 3


def data(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 1.0]])
    labels = rng.integers(0, K, N)
    return centers[labels] + rng.normal(size=(N, D)) * np.array([1.0, 0.5, 2.0]) + 10.0


def oracle_default(X, G, covariance_type):
    """mclust's defaultPrior (R/mclust.R), in NumPy."""
    n, p = X.shape
    fac = (1.0 / G) ** (2.0 / p)
    if covariance_type in ("full", "tied"):
        scale = fac * (np.cov(X, rowvar=False) if n > p else np.diag(np.var(X, axis=0, ddof=1)))
    else:
        scale = fac * np.sum(np.var(X, axis=0, ddof=1)) / p
        if covariance_type == "diag":
            scale = np.full(p, scale)
    return dict(shrinkage=0.01, mean=X.mean(axis=0), dof=p + 2.0, scale=scale)


def dense(cov, covariance_type, k):
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.broadcast_to(cov, (k,) + cov.shape)
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(D) for c in cov])


def oracle_m_step(X, R, prior, covariance_type, reg_covar, weight=None):
    """MAP M-step from responsibilities ``R`` ``(N, K)`` (sample weights folded in)."""
    if weight is not None:
        R = R * weight[:, None]
    kappa, mu0, nu, lam = prior["shrinkage"], prior["mean"], prior["dof"], prior["scale"]
    n = R.sum(axis=0)
    xbar = (R.T @ X) / n[:, None]
    k, d = xbar.shape
    means = (n[:, None] * xbar + kappa * mu0[None]) / (n + kappa)[:, None]
    delta = 1.0 if kappa > 0 else 0.0
    within = np.stack([(R[:, j, None] * (X - xbar[j])).T @ (X - xbar[j]) for j in range(k)])
    between = np.stack([kappa * n[j] / (n[j] + kappa) * np.outer(xbar[j] - mu0, xbar[j] - mu0) for j in range(k)])
    scatter = within + between
    if covariance_type == "full":
        cov = (lam[None] + scatter) / (nu + n + d + 1 + delta)[:, None, None] + reg_covar * np.eye(d)
    elif covariance_type == "tied":
        cov = (lam + scatter.sum(axis=0)) / (nu + n.sum() + d + 1 + k * delta) + reg_covar * np.eye(d)
    elif covariance_type == "diag":
        diag = np.stack([np.diag(s) for s in scatter])
        cov = (lam[None] + diag) / (nu + n + 2 + delta)[:, None] + reg_covar
    else:
        trace = np.array([np.trace(s) for s in scatter])
        cov = (lam + trace) / (nu + n * d + 2 + d * delta) + reg_covar
    return n / n.sum(), means, cov


def oracle_log_prior(means, cov, prior, covariance_type):
    kappa, mu0, nu, lam = prior["shrinkage"], prior["mean"], prior["dof"], prior["scale"]
    k = means.shape[0]
    covs = dense(cov, covariance_type, k)
    total = 0.0
    if covariance_type == "full":
        total += sum(st.invwishart(df=nu, scale=lam).logpdf(c) for c in covs)
    elif covariance_type == "tied":
        total += st.invwishart(df=nu, scale=lam).logpdf(cov)
    elif covariance_type == "diag":
        total += np.sum(st.invgamma(a=nu / 2, scale=lam[None] / 2).logpdf(cov))
    else:
        total += np.sum(st.invgamma(a=nu / 2, scale=lam / 2).logpdf(cov))
    if kappa > 0:
        total += sum(st.multivariate_normal(mu0, c / kappa).logpdf(m) for m, c in zip(means, covs))
    return total


def oracle_log_likelihood(X, weights, means, cov, covariance_type, weight=None):
    covs = dense(cov, covariance_type, means.shape[0])
    log_joint = np.stack(
        [np.log(w) + st.multivariate_normal(m, c).logpdf(X) for w, m, c in zip(weights, means, covs)], axis=1
    )
    per_row = logsumexp(log_joint, axis=1)
    resp = np.exp(log_joint - per_row[:, None])
    s = np.ones(X.shape[0]) if weight is None else weight
    return np.sum(s * per_row), resp


def to_prior(prior, covariance_type):
    return gj.ConjugatePrior(
        shrinkage=np.float64(prior["shrinkage"]),
        mean=np.asarray(prior["mean"], np.float64),
        dof=np.float64(prior["dof"]),
        scale=np.asarray(prior["scale"], np.float64),
        covariance_type=covariance_type,
    )


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-300, np.max(np.abs(b))))


def check_default(covariance_type):
    X = data(1)
    expected = oracle_default(X, K, covariance_type)
    got = gj.ConjugatePrior.default(X, K, covariance_type)
    narrow = oracle_default(X[:3], K, covariance_type)  # N <= D: the diagonal of var (full/tied)
    got_narrow = gj.ConjugatePrior.default(X[:3], K, covariance_type)
    return max(
        [rel(getattr(got, name), expected[name]) for name in expected]
        + [rel(got_narrow.scale, narrow["scale"]), rel(got_narrow.mean, narrow["mean"])]
    )


def check_m_step(covariance_type):
    X = data(2)
    rng = np.random.default_rng(3)
    R = rng.dirichlet(np.ones(K), size=N)
    weight = rng.uniform(0.5, 2.0, N)
    shift = rng.normal(size=(K, D)) + 10.0
    errors = []
    for shrinkage, reg_covar in ((0.01, 0.0), (2.5, 1e-3), (0.0, 0.0)):
        prior = dict(oracle_default(X, K, covariance_type), shrinkage=shrinkage)
        Rw = R * weight[:, None]
        residuals = X[None] - shift[:, None]  # (K, N, D)
        first = np.einsum("nk,knd->kd", Rw, residuals)
        if covariance_type in ("full", "tied"):
            second = np.einsum("nk,knd,kne->kde", Rw, residuals, residuals)
        else:
            second = np.einsum("nk,knd->kd", Rw, residuals**2)
        stats = gj.SufficientStats(Rw.sum(axis=0), first, second, covariance_type)
        params = gj.m_step(stats, shift, reg_covar, prior=to_prior(prior, covariance_type))
        w, m, c = oracle_m_step(X, R, prior, covariance_type, reg_covar, weight)
        errors += [rel(params.weights, w), rel(params.means, m), rel(params.covariances, c)]
        lp = gj.log_prior(params, to_prior(prior, covariance_type))
        errors.append(rel(lp, oracle_log_prior(m, c, prior, covariance_type)))
    return max(errors)


def check_fit(covariance_type):
    """A whole MAP EM fit from a given start (with sample weights: they change the counts, and
    ``Σ s`` normalises the lower bound)."""
    X = data(4)
    rng = np.random.default_rng(5)
    prior = oracle_default(X, K, covariance_type)
    weights0 = np.array([0.3, 0.3, 0.4])
    means0 = X[rng.choice(N, K, replace=False)]
    cov0 = {
        "full": np.stack([np.eye(D) * 2.0] * K),
        "tied": np.eye(D) * 2.0,
        "diag": np.full((K, D), 2.0),
        "spherical": np.full(K, 2.0),
    }[covariance_type]
    precisions0 = np.linalg.inv(cov0) if covariance_type in ("full", "tied") else 1.0 / cov0
    errors = []
    for weight in (rng.uniform(0.5, 2.0, N),):
        iterations, reg_covar = 15, 1e-6
        result = gj.fit_em(
            jax.random.key(0),
            X,
            K,
            covariance_type=covariance_type,
            weights_init=weights0,
            means_init=means0,
            precisions_init=precisions0,
            max_iter=iterations,
            tol=0.0,
            reg_covar=reg_covar,
            sample_weight=weight,
            prior=to_prior(prior, covariance_type),
        )
        w, m, c = weights0, means0, cov0
        history = []
        total = N if weight is None else weight.sum()
        for _ in range(iterations):
            ll, resp = oracle_log_likelihood(X, w, m, c, covariance_type, weight)
            history.append((ll + oracle_log_prior(m, c, prior, covariance_type)) / total)
            w, m, c = oracle_m_step(X, resp, prior, covariance_type, reg_covar, weight)
        errors += [rel(result.params.weights, w), rel(result.params.means, m), rel(result.params.covariances, c)]
        errors.append(rel(result.lower_bound_history[0], history))
        errors.append(rel(result.lower_bound, history[-1]))
        assert np.all(np.diff(history) >= -1e-12 * abs(history[-1])), "the oracle's MAP objective decreased"
    return max(errors)


MCLUST_REFERENCE = pathlib.Path(__file__).with_name("data") / "mclust_prior_reference.json"


def check_mclust(covariance_type):
    """mclust's own results (tests/data/mclust_prior_reference.json, written by R's mclust through
    tests/data/make_mclust_prior_reference.py): ``defaultPrior``, one ``mstep`` from given
    responsibilities, and ``me`` run for a fixed number of MAP EM iterations from them (its
    parameters and the log-likelihood it reports)."""
    reference = json.loads(MCLUST_REFERENCE.read_text())
    X, z = np.asarray(reference["X"]), np.asarray(reference["z"])
    n, d = X.shape
    k = z.shape[1]
    want = {name: np.asarray(values) for name, values in reference["models"][covariance_type].items()}
    prior = gj.ConjugatePrior.default(X, k, covariance_type)
    scale = np.broadcast_to(
        want["prior_scale"].reshape(np.shape(prior.scale) if want["prior_scale"].size > 1 else ()),
        np.shape(prior.scale),
    )
    errors = [
        rel(prior.shrinkage, want["prior_shrinkage"][0]),
        rel(prior.mean, want["prior_mean"]),
        rel(prior.dof, want["prior_dof"][0]),
        rel(prior.scale, scale),
    ]
    shift = np.broadcast_to(X.mean(axis=0), (k, d))
    residuals = X[None] - shift[:, None]
    first = np.einsum("nk,knd->kd", z, residuals)
    if covariance_type in ("full", "tied"):
        second = np.einsum("nk,knd,kne->kde", z, residuals, residuals)
    else:
        second = np.einsum("nk,knd->kd", z, residuals**2)
    start = gj.m_step(gj.SufficientStats(z.sum(axis=0), first, second, covariance_type), shift, 0.0, prior=prior)

    def compare(params, stage):
        return [
            rel(params.weights, want[f"{stage}_pro"]),
            rel(params.means, want[f"{stage}_mean"].reshape(k, d)),
            rel(dense(np.asarray(params.covariances), covariance_type, k), want[f"{stage}_sigma"].reshape(k, d, d)),
        ]

    errors += compare(start, "mstep")
    iterations = int(reference["iterations"])
    assert want["me_iterations"][0] == -iterations, "mclust's me stopped before its iteration limit"
    result = gj.fit_em(
        jax.random.key(0),
        X,
        k,
        covariance_type=covariance_type,
        weights_init=start.weights,
        means_init=start.means,
        precisions_init=np.linalg.inv(start.covariances)
        if covariance_type in ("full", "tied")
        else 1.0 / start.covariances,
        max_iter=iterations - 1,  # me's first M-step is the start above
        tol=0.0,
        reg_covar=0.0,
        prior=prior,
    )
    errors += compare(result.params, "me")
    errors.append(rel(np.sum(np.asarray(gj.log_prob(result.params, X))), want["me_loglik"][0]))
    return max(errors)


CHECKS = {
    f"{name}_{t}": (fn, t)
    for name, fn in (("default", check_default), ("m_step", check_m_step), ("fit", check_fit), ("mclust", check_mclust))
    for t in TYPES
}


def main(names):
    results = {}
    for name in names or CHECKS:
        fn, covariance_type = CHECKS[name]
        try:
            results[name] = fn(covariance_type)
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[name] = traceback.format_exc()
    print("PRIOR_X64 " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
