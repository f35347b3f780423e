"""MAP EM with mclust's conjugate prior (``prior=``): oracle parity, degenerate data, jit/vmap/grad,
the estimator, the command line and validation."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _children import ROOT, TESTS, child_env

import gmmjax as gj
from gmmjax import _cli

TYPES = ("full", "tied", "diag", "spherical")
N, D, K = 200, 2, 3
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
    return (centers[rng.integers(0, K, N)] + rng.normal(size=(N, D))).astype(np.float32)


# Only the full-covariance cases run in float32 in the default suite (the float64 oracle
# covers all four types there); the other types are marked slow.
def _types_full_first():
    return [t if t == "full" else pytest.param(t, marks=pytest.mark.slow) for t in TYPES]


# -- float64 oracle (subprocess: jax_enable_x64 is global) -------------------------------------
@pytest.fixture(scope="module")
def x64_prior_process():
    """The float64 checks, started in the background by the module's first test (mostly
    single-threaded compilation: it overlaps with the float32 tests) and collected at its end."""
    script = TESTS / "_prior_x64_checks.py"
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=child_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def x64_prior_results(x64_prior_process):
    stdout, stderr = x64_prior_process.communicate(timeout=600)
    lines = [line for line in stdout.splitlines() if line.startswith("PRIOR_X64 ")]
    assert x64_prior_process.returncode == 0 and lines, stdout[-2000:] + stderr[-4000:]
    return json.loads(lines[-1][len("PRIOR_X64 ") :])


def test_start_float64_checks(x64_prior_process):
    assert x64_prior_process.pid > 0


# -- prior=None is today's fit ------------------------------------------------------------------
def test_no_prior_is_bit_identical(X):
    plain = gj.fit_em(KEY, X, K)
    explicit = gj.fit_em(KEY, X, K, gj.FitOptions(prior=None))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(explicit)):
        np.testing.assert_array_equal(a, b)
    stats, _ = gj.e_step(plain.params, X)
    for a, b in zip(
        jax.tree_util.tree_leaves(gj.m_step(stats, plain.params.means)),
        jax.tree_util.tree_leaves(gj.m_step(stats, plain.params.means, prior=None)),
    ):
        np.testing.assert_array_equal(a, b)
    # The same program: no prior leaves nor log-prior terms enter it.
    step = lambda **kw: jax.make_jaxpr(lambda p: gj.em_step(p, X, **kw))(plain.params)  # noqa: E731
    assert str(step()) == str(step(prior=None))


# -- MAP EM behaviour ---------------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", _types_full_first())
def test_penalised_objective_never_decreases(X, covariance_type):
    prior = gj.ConjugatePrior.default(X, K, covariance_type)
    result = gj.fit_em(KEY, X, K, covariance_type=covariance_type, prior=prior, tol=1e-6)
    history = np.asarray(result.lower_bound_history[0])[: int(result.n_iter)]
    assert np.all(np.diff(history) >= -1e-5), history
    # lower_bound reports the penalised objective of the parameters before the last M-step:
    # at convergence, the mean log-likelihood plus log-prior per sample of the fitted ones.
    penalised = jnp.mean(gj.log_prob(result.params, X)) + gj.log_prior(result.params, prior) / N
    np.testing.assert_allclose(result.lower_bound, penalised, rtol=0, atol=1e-4)
    assert "default" != prior  # the string form is resolved to the same prior:
    again = gj.fit_em(KEY, X, K, covariance_type=covariance_type, prior="default", tol=1e-6)
    np.testing.assert_allclose(again.params.means, result.params.means, rtol=1e-6)


def _duplicated_points():
    """``N`` rows on 2 distinct points: ``K = 3`` > 2 distinct points, components collapse on
    them (the shapes of the other tests: their compiled fits are reused)."""
    return np.repeat(np.array([[0.0, 0.0], [1.0, 0.5]], np.float32), N // 2, axis=0)


@pytest.mark.parametrize("covariance_type", _types_full_first())
def test_map_stays_finite_where_ml_degenerates(covariance_type):
    X2 = _duplicated_points()
    ml = gj.fit_em(KEY, X2, K, covariance_type=covariance_type, reg_covar=0.0)
    prior = gj.ConjugatePrior.default(X2, K, covariance_type)
    map_fit = gj.fit_em(KEY, X2, K, covariance_type=covariance_type, reg_covar=0.0, prior=prior)
    # ML: components collapse onto single points (variances at the numerical floor), the
    # likelihood grows without bound (only the floor stops it).
    assert bool(np.any(ml.collapsed_components)) and float(ml.lower_bound) > 20
    # MAP: every covariance is at least Λ / (its mode's largest denominator), so finite.
    params = map_fit.params
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    bic = float(gj.bic(params, X2))
    assert np.isfinite(bic) and bic > float(gj.bic(ml.params, X2)) / 2  # ML's: ≈ −14600 at float32's floor
    covs = np.asarray(params.covariances, np.float64)
    n, nu, scale = X2.shape[0], float(prior.dof), np.asarray(prior.scale, np.float64)
    denominator = {
        "full": nu + n + D + 2,
        "tied": nu + n + D + 1 + K,
        "diag": nu + n + 3,
        "spherical": nu + n * D + 2 + D,
    }
    floor = scale / denominator[covariance_type]
    if covariance_type in ("full", "tied"):
        lowest = min(np.linalg.eigvalsh(c - floor).min() for c in covs.reshape(-1, D, D))
    else:
        lowest = float(np.min(covs - floor))
    assert lowest > -1e-6
    assert float(ml.lower_bound) > float(map_fit.lower_bound) + 10


# -- transformations ------------------------------------------------------------------------------
def test_jit_reuses_the_program_for_new_priors_and_vmap_over_datasets(X):
    traces = []

    @jax.jit
    def fit(X, prior):
        traces.append(1)
        return gj.fit_em(KEY, X, K, prior=prior).params

    prior = gj.ConjugatePrior.default(X, K)
    eager = gj.fit_em(KEY, X, K, prior=prior).params
    jitted = fit(X, prior)
    np.testing.assert_allclose(jitted.means, eager.means, rtol=1e-5, atol=1e-5)
    fit(X, prior.replace(shrinkage=jnp.float32(1.0), scale=prior.scale * 2))
    assert len(traces) == 1

    datasets = jnp.stack([jnp.asarray(X), jnp.asarray(X)[::-1] * 2.0, jnp.asarray(X) + 3.0])

    def one(X):
        return gj.fit_em(KEY, X, K, prior=gj.ConjugatePrior.default(X, K)).params.means

    batched = jax.vmap(one)(datasets)
    for b, data in enumerate(datasets):
        np.testing.assert_allclose(batched[b], one(data), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gradients_through_a_map_fit_agree_between_implicit_and_unrolled(X):
    """The implicit derivative (the MAP fixed point; _implicit with the prior) equals the exact
    derivative of the unrolled iterations, in the data and in the prior's leaves."""
    X_small = jnp.asarray(X[:80])
    base = gj.ConjugatePrior.default(X_small, 2, "diag")

    def loss(X, shrinkage, scale, differentiation):
        prior = base.replace(shrinkage=shrinkage, scale=scale)
        result = gj.fit_em(
            KEY, X, 2, covariance_type="diag", prior=prior, tol=1e-7, max_iter=60, differentiation=differentiation
        )
        return result.lower_bound + jnp.sum(result.params.means[:, 0]) + jnp.sum(result.params.covariances)

    grads = {
        mode: jax.grad(loss, argnums=(0, 1, 2))(X_small, jnp.float32(0.5), base.scale, mode)
        for mode in ("implicit", "unrolled")
    }
    for a, b in zip(grads["implicit"], grads["unrolled"]):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    assert float(jnp.abs(grads["implicit"][1])) > 0 and float(jnp.max(jnp.abs(grads["implicit"][2]))) > 0


# -- estimator, command line ----------------------------------------------------------------------
def test_estimator_prior(X):
    model = gj.GaussianMixtureModel(K, prior="default", tol=1e-6).fit(X)
    result = gj.fit_em(KEY, X, K, prior="default", tol=1e-6)
    np.testing.assert_allclose(model.means_, result.params.means, rtol=1e-6)
    assert model.get_params()["prior"] == "default"
    plain = gj.GaussianMixtureModel(K, tol=1e-6).fit(X)
    assert not np.allclose(model.covariances_, plain.covariances_)  # the prior does change the fit
    assert np.isfinite(model.bic(X))
    with pytest.raises(ValueError, match="not by fit_gradient"):
        gj.GaussianMixtureModel(K, prior="default", fit_method="gradient", num_steps=2).fit(X)
    with pytest.raises(ValueError, match="not by partial_fit"):
        gj.GaussianMixtureModel(K, prior="default").partial_fit(X)
    with pytest.raises(ValueError, match="not by online EM"):
        gj.online_em_init(model.params_, options=gj.FitOptions(prior=gj.ConjugatePrior.default(X, K)))


def test_cli_fit_with_default_prior(tmp_path, capsys, X):
    path = tmp_path / "data.npy"
    np.save(path, X)
    assert _cli.main(["fit", str(path), "-k", str(K), "--prior", "default"]) == 0
    out = capsys.readouterr().out
    assert "MAP with mclust's default prior" in out and "BIC" in out
    model = gj.GaussianMixtureModel(K, prior="default", seed=0).fit(X)
    assert f"{model.score(X):.6f}" in out


# -- validation -----------------------------------------------------------------------------------
def test_validation_messages(X):
    prior = gj.ConjugatePrior.default(X, K, "full")
    with pytest.raises(ValueError, match="the prior is for covariance_type='full' but the fit uses 'diag'"):
        gj.fit_em(KEY, X, K, covariance_type="diag", prior=prior)
    with pytest.raises(ValueError, match=r"prior.mean must have shape \(2,\)"):
        gj.fit_em(KEY, X, K, prior=prior.replace(mean=np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="prior.shrinkage must be non-negative"):
        gj.fit_em(KEY, X, K, prior=prior.replace(shrinkage=-1.0))
    with pytest.raises(ValueError, match="prior.dof must be greater than 1"):
        gj.fit_em(KEY, X, K, prior=prior.replace(dof=1.0))
    with pytest.raises(ValueError, match="prior.scale must be a symmetric positive definite"):
        gj.fit_em(KEY, X, K, prior=prior.replace(scale=-np.eye(2, dtype=np.float32)))
    with pytest.raises(ValueError, match="prior.scale must be positive"):
        gj.fit_em(
            KEY, X, K, covariance_type="spherical", prior=gj.ConjugatePrior(0.01, np.zeros(2), 4.0, 0.0, "spherical")
        )
    with pytest.raises(ValueError, match="prior must be None, 'default' or a gmmjax.ConjugatePrior"):
        gj.fit_em(KEY, X, K, prior="mclust")
    with pytest.raises(TypeError, match="prior must be a gmmjax.ConjugatePrior"):
        gj.fit_em(KEY, X, K, prior={"shrinkage": 0.01})
    with pytest.raises(ValueError, match="not by model selection"):
        gj.select_num_components(KEY, X, [1, 2], prior=prior)
    with pytest.raises(ValueError, match="not by sharded or checkpointed fits"):
        gj.fit_em(KEY, X, K, prior=prior, checkpoint="unused.npz")
    with pytest.raises(ValueError, match="N >= 2"):
        gj.ConjugatePrior.default(X[:1], K)


# -- float64 parity (collected last: the subprocess ran meanwhile) -------------------------------
@pytest.mark.parametrize("check", ["default", "m_step", "fit", "mclust"])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_float64_matches_numpy_oracle_and_mclust(x64_prior_results, check, covariance_type):
    """mclust's defaults, one MAP M-step from given responsibilities (three shrinkages, with
    reg_covar, shifted statistics, sample weights), the log-prior (scipy.stats), and a whole
    15-iteration fit from a given start (parameters and the penalised lower bound of every
    iteration) equal the NumPy/SciPy oracle of tests/_prior_x64_checks.py; and ``mclust``:
    mclust 6.0.0's own ``defaultPrior``, ``mstep`` and a 12-iteration ``me`` with
    ``priorControl()`` (recorded in tests/data/mclust_prior_reference.json by R)."""
    error = x64_prior_results[f"{check}_{covariance_type}"]
    assert isinstance(error, float), error
    assert error < 1e-10
