"""Chunked passes over the data: results independent of the chunk size, bounded memory,
restart batching, and the sampled seeding used on large data.

Oracles: float64 NumPy statistics and densities (``_oracles``), the unchunked computation,
and XLA's own accounting of a compiled program's temporary memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _chunks, _driver, _em, _init

COV_TYPES = O.COVARIANCE_TYPES
N_ODD = 53  # prime: every chunk size below leaves a partial last chunk


def _params(X, covariance_type, seed=3, k=3):
    w, m, c = O.initial_parameters(X, k, covariance_type, seed=seed)
    return gj.GMMParams(
        jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(c, jnp.float32), covariance_type
    )


@pytest.fixture(scope="module")
def odd_data():
    X, *_ = O.make_blobs(n=N_ODD, d=3, k=3, seed=21)
    sw = np.random.default_rng(22).uniform(0.0, 2.0, N_ODD)
    sw[::7] = 0.0  # zero weights must contribute nothing, whichever chunk they fall in
    return X.astype(np.float32), sw.astype(np.float32)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("chunk_size", [1, 8, 13, 52, 53, 1000])
def test_e_step_in_chunks_matches_float64_oracle(odd_data, covariance_type, chunk_size):
    X, sw = odd_data
    params = _params(X, covariance_type)
    stats, ll = gj.e_step(params, jnp.asarray(X), jnp.asarray(sw), chunk_size=chunk_size)
    counts, first, second, ll_o = O.e_step_statistics(params, covariance_type, X, sw.astype(np.float64))
    O.assert_rel_close(stats.counts, counts, 1e-4, "counts")
    O.assert_rel_close(stats.first_moments, first, 1e-4, "first_moments")
    O.assert_rel_close(stats.second_moments, second, 1e-4, "second_moments")
    np.testing.assert_allclose(float(ll), ll_o, rtol=1e-5)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("far_components", [0, 2, 6])
def test_diagonal_e_step_all_formulations_match_oracle(covariance_type, far_components):
    """Diagonal types use matrix products about the mean of the means where that is exact
    enough, compute up to four tight components far from it (1e4 of their σ, float32)
    exactly inside that pass, and switch to explicit residuals for all when more are far."""
    k, d, n = 6, 3, 120
    rng = np.random.default_rng(5)
    centers = rng.normal(scale=3.0, size=(k, d))
    sigma = np.ones(k)
    centers[:far_components] += 1e2 * rng.choice([-1.0, 1.0], size=(far_components, d))
    sigma[:far_components] = 1e-2
    labels = np.arange(n) % k
    X = (centers[labels] + sigma[labels, None] * rng.normal(size=(n, d))).astype(np.float32)
    variances = (sigma[:, None] ** 2) * rng.uniform(0.5, 2.0, size=(k, d))
    cov = variances if covariance_type == "diag" else variances.mean(1)
    means = centers + 0.1 * sigma[:, None]
    params = gj.GMMParams(
        jnp.full(k, 1.0 / k), jnp.asarray(means, jnp.float32), jnp.asarray(cov, jnp.float32), covariance_type
    )
    stats, ll = jax.jit(lambda p, X: gj.e_step(p, X, chunk_size=32))(params, jnp.asarray(X))
    counts, first, second, ll_o = O.e_step_statistics(params, covariance_type, X, np.ones(n))
    O.assert_rel_close(stats.counts, counts, 1e-4, "counts")
    O.assert_rel_close(stats.first_moments, first, 1e-3, "first_moments", floor=1e-4)
    O.assert_rel_close(stats.second_moments, second, 2e-3, "second_moments", floor=1e-6)
    np.testing.assert_allclose(float(ll), ll_o, rtol=1e-5)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_densities_in_chunks_match_oracle_and_gradient(odd_data, covariance_type):
    X, _ = odd_data
    params = _params(X, covariance_type)
    w, m, c = (np.asarray(a, np.float64) for a in (params.weights, params.means, params.covariances))
    for chunk_size in (5, N_ODD):
        np.testing.assert_allclose(
            np.asarray(gj.log_prob(params, X, chunk_size=chunk_size)),
            O.mixture_log_prob(w, m, c, covariance_type, X),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            np.asarray(gj.component_log_prob(params, X, chunk_size=chunk_size)),
            O.component_log_joint(w, m, c, covariance_type, X),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            np.asarray(gj.responsibilities(params, X, chunk_size=chunk_size)),
            O.responsibilities(w, m, c, covariance_type, X),
            atol=1e-5,
        )
    # reverse-mode through the chunked loop equals the single-chunk gradient
    grad = lambda cs: jax.grad(lambda p: jnp.sum(gj.log_prob(p, X, chunk_size=cs)))(params)
    O.assert_trees_close(grad(5), grad(N_ODD), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_fit_em_result_does_not_depend_on_chunk_size(init_params):
    X, *_ = O.make_blobs(n=301, d=2, k=3, seed=4)
    fits = [
        gj.fit_em(jax.random.key(7), X, 3, init_params=init_params, chunk_size=cs, max_iter=30)
        for cs in (None, 64, 301)
    ]
    for other in fits[1:]:
        assert int(other.n_iter) == int(fits[0].n_iter)
        O.assert_trees_close(fits[0].params, other.params, rtol=2e-4, atol=2e-4)


def test_restart_batches_equal_one_vmapped_batch():
    X, *_ = O.make_blobs(n=120, d=2, k=3, seed=6)
    together = gj.fit_em(jax.random.key(3), X, 3, n_init=4, max_iter=20)
    for batch in (1, 3):  # 3 does not divide 4: lowered to 2
        batched = gj.fit_em(jax.random.key(3), X, 3, n_init=4, max_iter=20, restart_batch_size=batch)
        np.testing.assert_array_equal(np.asarray(batched.restart_n_iter), np.asarray(together.restart_n_iter))
        np.testing.assert_allclose(
            np.asarray(batched.restart_lower_bounds), np.asarray(together.restart_lower_bounds), rtol=1e-5
        )
        assert int(batched.best_restart) == int(together.best_restart)
    assert _driver.resolve_restart_batch_size(3, 4) == 2
    assert _driver.resolve_restart_batch_size(None, 4) == 4
    assert _driver.resolve_restart_batch_size(9, 4) == 4


def test_fit_memory_is_bounded_by_the_chunk_not_by_n():
    """XLA's accounting of the compiled fit: its temporaries do not grow with N (4×, both
    above the seeding sample size), and stay far below one (K, N, D) array."""
    k, d, chunk = 8, 8, 256

    def temp_bytes(n):
        X = jnp.zeros((n, d), jnp.float32)
        options = gj.FitOptions(
            covariance_type="full",
            max_iter=5,
            n_init=1,
            init_params="kmeans",
            chunk_size=chunk,
            restart_batch_size=1,
            tol=jnp.float32(1e-3),
            reg_covar=jnp.float32(1e-6),
        )
        compiled = _em._fit_em.lower(jax.random.key(0), X, None, options, num_components=k).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(65_536), temp_bytes(262_144)
    assert large <= small + 64 * 1024, (small, large)
    assert large < 262_144 * k * d * 4 / 16, (large, "an N·K·D temporary would be 64 MiB")


@pytest.mark.parametrize("chunk_size", [7, 50, 64])
def test_map_over_chunks_of_several_row_arrays_equals_one_call(chunk_size):
    """Rows passed as a pytree (data and weights, never concatenated) and a pytree out; the
    last chunk is clamped (50 = 7·7 + 1 rows) and its re-read rows written with the same values."""
    rng = np.random.default_rng(0)
    X, w = jnp.asarray(rng.normal(size=(50, 3))), jnp.asarray(rng.uniform(size=50))
    fn = lambda rows: (rows[0] * rows[1][:, None], jnp.sum(rows[0], axis=1) + rows[1])
    expected = (np.asarray(X) * np.asarray(w)[:, None], np.asarray(X).sum(axis=1) + np.asarray(w))
    for got, want in zip(jax.jit(lambda X, w: _chunks.map_over_chunks(fn, (X, w), chunk_size))(X, w), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("chunk_size, n", [(32768, 50_000), (8192, 15_000), (8192, 50_000), (13, 53), (52, 53), (7, 7)])
def test_balanced_chunks_keep_their_number_and_bound_and_waste_less(chunk_size, n):
    chunk = _chunks.balanced_chunk(chunk_size, n)
    count = -(-n // min(chunk_size, n))
    assert chunk <= chunk_size and -(-n // chunk) == count  # as many chunks, none larger
    assert count * chunk - n < max(count * 8, 1) or chunk == chunk_size  # re-read rows: under a row block each


def test_auto_chunk_size_targets_the_memory_bound_or_the_cache_budget():
    cache, bound, floor = _chunks.CHUNK_CACHE_BYTES, _chunks.CHUNK_TARGET_BYTES, _chunks.CHUNK_FLOOR_ROWS
    assert not _chunks.CACHE_SIZED_BY_DEFAULT  # opt-in: see its comment
    rows = _chunks.auto_chunk_size(10**7, 16, 16, jnp.float32)  # the default: one 8 MiB (K, chunk, D) temporary
    assert rows % 8 == 0 and rows * 16 * 16 * 4 <= bound < (rows + 8) * 16 * 16 * 4

    def cached(*shape, **kw):
        return _chunks.auto_chunk_size(*shape, jnp.float32, cache_sized=True, **kw)

    rows = cached(10**7, 2, 4)  # 32 bytes a row: the cache budget rules
    assert rows % 8 == 0 and rows >= floor and rows * 32 <= cache < (rows + 8) * 32
    assert cached(10**7, 16, 16) == floor  # 512 rows would fit the budget
    assert cached(10**7, 16, 16, batch=4) == floor
    rows = cached(10**7, 64, 64)  # the memory bound caps the floor
    assert rows < floor and rows * 64 * 64 * 4 <= bound < (rows + 8) * 64 * 64 * 4
    assert cached(10**7, 16, 16, batch=32) * 32 * 16 * 16 * 4 <= bound
    assert cached(100, 16, 16) == 100
    assert cached(10**7, 4096, 4096) == 8  # never below one row block


def test_large_data_seeds_on_a_weighted_sample(monkeypatch):
    """Above the sample size, seeding draws rows in proportion to their weights (never a
    zero-weight row) and the fit still finds well-separated clusters."""
    monkeypatch.setattr(_init, "INIT_SAMPLE_SIZE", 64)
    X, labels, _ = O.make_blobs(n=2_000, d=2, k=3, seed=8, spread=20.0)
    X = X.astype(np.float32)
    weight = np.where(np.arange(2_000) % 2 == 0, 1.0, 0.0).astype(np.float32)
    sample, sample_weight = _init.seeding_sample(jax.random.key(0), jnp.asarray(X), jnp.asarray(weight), 3)
    assert sample.shape == (192, 2) and np.all(np.asarray(sample_weight) == 1)  # max(64, 64·K) rows
    chosen = {tuple(row) for row in np.asarray(sample)}
    even_rows = {tuple(row) for row in X[::2]}
    assert chosen <= even_rows
    result = gj.fit_em(jax.random.key(1), X, 3, n_init=1, max_iter=50)
    true_means = np.stack([X[labels == j].mean(0) for j in range(3)])
    found = np.asarray(result.params.means)
    assert np.max(np.min(np.linalg.norm(found[:, None] - true_means[None], axis=-1), axis=0)) < 0.5


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8"])
def test_chunk_and_restart_batch_sizes_are_validated(bad):
    X, *_ = O.make_blobs(n=30, d=2, k=2, seed=1)
    with pytest.raises(ValueError, match="chunk_size"):
        gj.fit_em(jax.random.key(0), X, 2, chunk_size=bad)
    with pytest.raises(ValueError, match="restart_batch_size"):
        gj.fit_em(jax.random.key(0), X, 2, restart_batch_size=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        gj.GaussianMixtureModel(2, chunk_size=bad).fit(X)
