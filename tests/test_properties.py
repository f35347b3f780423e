"""Property-based checks (hypothesis): any finite data of a fixed shape gives a valid fit.

Shapes are fixed so that each covariance type compiles once; hypothesis varies the values:
duplicates, constant columns, wide and tiny scales, large offsets.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gmmjax as gj

N, D, K = 24, 2, 3

_values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def datasets(draw):
    base = draw(arrays(np.float32, (N, D), elements=_values))
    # Few distinct rows is the hard case for EM: repeat a handful of rows often.
    distinct = draw(st.integers(1, N))
    X = base[np.arange(N) % distinct]
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e5]))
    offset = draw(st.sampled_from([0.0, 1e4, -1e6]))
    return (X * np.float32(scale) + np.float32(offset)).astype(np.float32)


def _check_valid(params, X, covariance_type):
    weights = np.asarray(params.weights, np.float64)
    cov = np.asarray(params.covariances, np.float64)
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(params.means)))
    if covariance_type in ("full", "tied"):
        np.linalg.cholesky(cov.reshape(-1, D, D))  # positive definite in float64
    else:
        assert np.all(cov > 0)
    assert np.all(np.isfinite(np.asarray(gj.log_prob(params, X))))
    resp = np.asarray(gj.responsibilities(params, X))
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("covariance_type", gj.COVARIANCE_TYPES)
@pytest.mark.parametrize("reg_covar", [1e-6, 0.0])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(X=datasets(), seed=st.integers(0, 2**31 - 1))
def test_any_finite_data_gives_a_valid_fit(covariance_type, reg_covar, X, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gj.fit_em(
            jax.random.key(seed), X, K, covariance_type=covariance_type, reg_covar=reg_covar, max_iter=30, n_init=2
        )
    _check_valid(result.params, X, covariance_type)
    assert np.isfinite(float(result.lower_bound))
    assert 1 <= int(result.n_iter) <= 30
