"""Float64 checks of EM with missing values against the NumPy oracle (run by test_missing.py
in a subprocess: float64 is process-global in JAX). Prints one JSON object of max errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _missing_oracle as oracle  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gmmjax as gj  # noqa: E402
from gmmjax import _missing  # noqa: E402


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def wide_rows(rng, results, step):
    """Rows missing up to 9 of 10 features: the tiers beyond the unrolled systems (swept, in
    pieces of a chunk), both forms of the E-step, against the oracle."""
    N, D, K = 1024, 10, 2
    X = rng.normal(size=(N, D)) + np.repeat(np.arange(K), N // K)[:, None] * 2.0
    counts = rng.integers(0, D, size=N)  # 0 … 9 missing entries per row
    for n in range(N):
        X[n, rng.choice(D, counts[n], replace=False)] = np.nan
    layout = _missing.MissingLayout(X, None)
    assert layout.tiers[-1] > _missing._UNROLLED_SLOTS, layout.tiers
    assert _missing._chunk_rows(1024, N, D, _missing._UNROLLED_SLOTS) >= 2 * _missing._WIDE_PIECE  # in pieces
    A = rng.normal(size=(K, D, D))
    weights, means, covariances = np.array([0.4, 0.6]), rng.normal(size=(K, D)), A @ A.transpose(0, 2, 1) + np.eye(D)
    p = gj.GMMParams(jnp.array(weights), jnp.array(means), jnp.array(covariances))
    (nw, nm, nc), ll = oracle.em_step(weights, means, covariances, "full", layout.X, 1e-6)
    for form in ("expanded", "residual"):
        new, _, ll_jax = step(p, jnp.asarray(layout.X), None, 1e-6, chunk_size=1024, tiers=layout.tiers, form=form)
        results[f"wide/em_steps_{form}"] = max(
            relative(new.weights, nw), relative(new.means, nm), relative(new.covariances, nc), relative(ll_jax, ll)
        )
    lj = _missing.marginal_component_log_prob(p, X, chunk_size=128)
    results["wide/log_joint"] = relative(lj, oracle.log_joint(weights, means, covariances, X))


def main():
    rng = np.random.default_rng(0)
    N, D, K = 48, 4, 3
    X = rng.normal(size=(N, D)) + np.repeat(np.arange(K), N // K)[:, None] * 3.0
    X[rng.random((N, D)) < 0.3] = np.nan
    X[5] = np.nan  # every feature missing
    X[7, 1:] = np.nan  # one observed
    tiers = _missing.MissingLayout(X, None).tiers
    results = {}
    kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else list(gj.COVARIANCE_TYPES)
    step = jax.jit(_missing.em_step_missing, static_argnames=("chunk_size", "tiers", "form"))
    for covariance_type in kinds:
        A = rng.normal(size=(K, D, D))
        full = A @ A.transpose(0, 2, 1) + np.eye(D)
        covariances = {
            "full": full,
            "tied": full[0],
            "diag": np.abs(rng.normal(size=(K, D))) + 0.5,
            "spherical": np.abs(rng.normal(size=K)) + 0.5,
        }[covariance_type]
        weights, means = np.array([0.3, 0.3, 0.4]), rng.normal(size=(K, D)) * 2
        errors, residual_errors, lls, oracle_lls = [], [], [], []
        p = gj.GMMParams(jnp.array(weights), jnp.array(means), jnp.array(covariances), covariance_type=covariance_type)
        lj = _missing.marginal_component_log_prob(p, X, tiers=tiers, chunk_size=16)
        dense = oracle.dense_covariances(covariances, covariance_type, K, D)
        results[f"{covariance_type}/log_joint"] = relative(lj, oracle.log_joint(weights, means, dense, X))
        results[f"{covariance_type}/impute"] = relative(
            gj.impute(p, X, tiers=tiers, chunk_size=16), oracle.impute(weights, means, covariances, covariance_type, X)
        )
        for _ in range(4):  # five EM steps, each against the oracle's step from the same parameters
            (nw, nm, nc), ll = oracle.em_step(weights, means, covariances, covariance_type, X, 1e-6)
            new, _, ll_jax = step(p, jnp.asarray(X), None, 1e-6, chunk_size=16, tiers=tiers)
            errors.append(max(relative(new.weights, nw), relative(new.means, nm), relative(new.covariances, nc)))
            errors.append(relative(ll_jax, ll))
            # the other form of the E-step (the pass above takes the expanded one in float64)
            other, _, ll_other = step(p, jnp.asarray(X), None, 1e-6, chunk_size=16, tiers=tiers, form="residual")
            residual_errors.append(
                max(relative(other.means, nm), relative(other.covariances, nc), relative(ll_other, ll))
            )
            lls.append(float(ll_jax))
            oracle_lls.append(ll)
            weights, means, covariances = (np.asarray(a) for a in (new.weights, new.means, new.covariances))
            p = new
        results[f"{covariance_type}/em_steps"] = max(errors)
        results[f"{covariance_type}/em_steps_residual"] = max(residual_errors)
        results[f"{covariance_type}/monotone"] = float(np.min(np.diff(lls)))
    if "wide" in sys.argv[2:]:
        wide_rows(rng, results, step)
    if "fit" not in sys.argv[2:]:
        print(json.dumps(results))
        return
    # a whole fit: its history is the oracle's log-likelihoods from its own start
    fit = gj.fit_em(jax.random.key(0), X, K, missing="marginalize", max_iter=8, tol=0.0)
    history = np.asarray(fit.lower_bound_history[0])
    results["fit/monotone"] = float(np.min(np.diff(history)))
    results["fit/history_float64"] = str(fit.params.means.dtype)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
