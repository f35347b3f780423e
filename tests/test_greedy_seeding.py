"""Greedy k-means++ seeding (``n_local_trials``, :mod:`gmmjax._init`).

Oracles: scikit-learn's own ``_kmeans_plusplus`` (sklearn/cluster/_kmeans.py), handed gmmjax's
uniform draws through a stand-in random state, so both pick centers from the same numbers;
NumPy's ``2 + int(log K)``; the seeding of permuted and repeated rows; the separate seeding of
fewer components; a NumPy nearest-center M-step; and the optima scikit-learn's
``GaussianMixture`` reaches from its own (greedy) seeding.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax import _init

K = 9  # 2 + int(log 9) = 4 candidates per center


class _GivenDraws:
    """What ``_kmeans_plusplus`` asks of a ``RandomState``, answered with gmmjax's uniforms: the
    first center from uniform 0 (``choice`` inverts the weights' cumulative sum, as NumPy does),
    the candidates of center ``k`` from uniform ``k`` then the trial stream's draws."""

    def __init__(self, key, num_components, num_trials, dtype):
        self.first = np.asarray(jax.random.uniform(key, (num_components,), dtype), np.float64)
        trials_key = jax.random.fold_in(key, _init._TRIALS_STREAM)
        self.more = [
            np.asarray(jax.random.uniform(jax.random.fold_in(trials_key, k), (num_trials - 1,), dtype), np.float64)
            for k in range(num_components)
        ]
        self.center = 0

    def choice(self, n, p):
        return int(np.searchsorted(np.cumsum(p) / np.sum(p), self.first[0], side="right"))

    def uniform(self, size):
        self.center += 1
        return np.concatenate([self.first[self.center : self.center + 1], self.more[self.center][: size - 1]])


def _sklearn_centers(key, X, num_components, sample_weight, n_local_trials, dtype=jnp.float32):
    from sklearn.cluster._kmeans import _kmeans_plusplus

    X64 = np.asarray(X, np.float64)
    trials = n_local_trials or _init.default_local_trials(num_components)
    draws = _GivenDraws(key, num_components, trials, dtype)
    _, index = _kmeans_plusplus(X64, num_components, np.sum(X64 * X64, axis=1), sample_weight, draws, trials)
    return np.asarray(X)[index]


@pytest.fixture(scope="module")
def data():
    X = O.make_blobs(n=300, d=3, k=6, seed=4, spread=6.0)[0]
    weight = np.random.default_rng(5).uniform(0.2, 3.0, X.shape[0])
    return X.astype(np.float32), weight.astype(np.float32)


KEYS = jax.vmap(jax.random.key)(jnp.arange(4))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _compiled_seed(keys, X, weight, num_components, n_local_trials, by_value):
    seed = lambda key: gj.kmeans_plusplus(  # noqa: E731
        key, X, num_components, weight, n_local_trials=n_local_trials, by_value=by_value
    )
    return jax.vmap(seed)(keys)


def _seed(keys, X, weight, num_components=K, n_local_trials=None, by_value=False):
    """The seeding of each key (vmapped): one compiled program per shape and setting, shared
    by the tests (the settings passed positionally: one cache entry however they are given)."""
    return _compiled_seed(keys, X, weight, num_components, n_local_trials, by_value)


@pytest.mark.parametrize("n_local_trials", [None, 1, 6])
@pytest.mark.parametrize("weighted", [False, True])
def test_greedy_seeding_is_sklearns_kmeans_plusplus(data, n_local_trials, weighted):
    """Under jit and vmap over keys, each center is the candidate scikit-learn keeps from the
    same draws (plain k-means++ for ``n_local_trials=1``)."""
    X, weight = data
    weight = weight if weighted else np.ones_like(weight)
    centers = np.asarray(_seed(KEYS, X, weight, n_local_trials=n_local_trials))
    for s in range(KEYS.shape[0]):
        want = _sklearn_centers(KEYS[s], X, K, weight.astype(np.float64), n_local_trials)
        np.testing.assert_array_equal(centers[s], want)


def test_plain_centers_are_the_greedy_first_candidates(data):
    """The first center is the same draw, and ``n_local_trials=1`` is the first candidate of each."""
    X, weight = data
    plain, greedy = (np.asarray(_seed(KEYS, X, weight, n_local_trials=t)) for t in (1, None))
    np.testing.assert_array_equal(plain[:, 0], greedy[:, 0])
    assert not np.array_equal(plain, greedy)  # the greedy choice mattered


def test_data_far_from_the_origin_lose_no_digits(data):
    """float32 data at 1e4 from the origin (distance products about the first center): the same
    centers as scikit-learn's float64 seeding of the same float32 values."""
    X, weight = data
    far = (X.astype(np.float64) + 1e4).astype(np.float32)
    centers = np.asarray(_seed(KEYS, far, weight))
    for s in range(KEYS.shape[0]):
        np.testing.assert_array_equal(centers[s], _sklearn_centers(KEYS[s], far, K, weight.astype(np.float64), None))


def test_lane_trial_counts_are_numpys_2_plus_int_log_k():
    num_active = jnp.arange(1, 3001)
    counts = jax.jit(lambda a: _init._lane_local_trials(a, _init.default_local_trials(3000)))(num_active)
    np.testing.assert_array_equal(np.asarray(counts), 2 + np.log(np.arange(1, 3001)).astype(int))
    assert [_init.default_local_trials(k) for k in (1, 2, 3, 7, 8, 20, 21)] == [2, 2, 3, 3, 4, 4, 5]


def test_inactive_lanes_seed_as_fewer_components(data):
    """A lane of ``num_active = a`` in a ``K = 9`` seeding (4 candidates drawn, ``2 + int(log a)``
    counting) equals the separate seeding of ``a`` components (traced ``a``, vmapped)."""
    X, weight = data
    lanes = jnp.array([2, 3, K])  # 2, 3 and 4 candidates count
    masked = jax.jit(jax.vmap(lambda a: gj.kmeans_plusplus(KEYS[2], X, K, weight, num_active=a)))(lanes)
    for lane, a in enumerate(lanes.tolist()):
        separate = np.asarray(_seed(KEYS, X, weight, num_components=a)[2])
        np.testing.assert_array_equal(np.asarray(masked[lane, :a]), separate)
        np.testing.assert_array_equal(np.asarray(masked[lane, a:]), np.repeat(separate[:1], K - a, axis=0))
    given = gj.kmeans_plusplus(KEYS[2], X, K, weight, num_active=3)  # a Python int
    np.testing.assert_array_equal(np.asarray(given), np.asarray(masked[1]))


def test_given_trials_make_fewer_centers_a_prefix(data):
    """With ``n_local_trials`` given, the first ``K`` centers of ``K' > K`` are those of ``K``."""
    X, weight = data
    few, more = (np.asarray(_seed(KEYS, X, weight, num_components=k, n_local_trials=6)) for k in (3, K))
    np.testing.assert_array_equal(more[:, :3], few)


def test_by_value_ignores_row_order_and_counts_integer_weights_as_copies(data):
    """Rows of integer weights (summing to N) and zero-weight rows, against the rows repeated
    (N rows of weight one) and against the same rows permuted: the same centers."""
    X, _ = data
    half = X.shape[0] // 2
    counts = np.zeros(X.shape[0], np.float32)
    counts[:half] = np.random.default_rng(6).multinomial(X.shape[0] - half, np.full(half, 1 / half)) + 1
    assert counts.sum() == X.shape[0]
    order = np.random.default_rng(7).permutation(X.shape[0])
    seed = lambda X, w: np.asarray(_seed(KEYS, X, w, by_value=True))  # noqa: E731
    weighted = seed(X, counts)
    np.testing.assert_array_equal(seed(X[order], counts[order]), weighted)
    repeated = np.repeat(X, counts.astype(int), axis=0)
    np.testing.assert_array_equal(seed(repeated, np.ones(X.shape[0], np.float32)), weighted)


@pytest.mark.parametrize("n_local_trials", [None, 1])
def test_fit_em_starts_from_the_seeding_of_its_option(data, n_local_trials):
    """``init_params="k-means++"``: the start's means are the data's means per nearest center of
    ``kmeans_plusplus`` with the fit's ``n_local_trials`` (and its by-value draw)."""
    X, _ = data
    key = KEYS[1]
    start = gj.fit_em(key, X, K, init_params="k-means++", n_local_trials=n_local_trials, max_iter=0)
    centers = np.asarray(gj.kmeans_plusplus(key, X, K, n_local_trials=n_local_trials, by_value=True), np.float64)
    X64 = X.astype(np.float64)
    labels = np.argmin(((X64[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    means = np.stack([X64[labels == k].mean(axis=0) for k in range(K)])
    np.testing.assert_allclose(np.asarray(start.params.means), means, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "at least 1"), (2.5, "must be None"), (True, "must be None"), ("3", "must be None")],
)
def test_invalid_n_local_trials_is_refused(data, value, message):
    with pytest.raises(ValueError, match=message):
        gj.FitOptions(n_local_trials=value)
    with pytest.raises(ValueError, match=message):
        gj.kmeans_plusplus(KEYS[0], data[0], K, n_local_trials=value)


# ------------------------------------------------------------------------------ quality


def _selection_data(n, d, seed=0):
    """benchmarks/run.py's ``make_data(n, d, 5)``: 5 well-separated components."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(5, d))
    labels = rng.integers(5, size=n)
    scales = rng.uniform(0.5, 1.5, size=(5, 1))
    return centers[labels] + scales[labels] * rng.normal(size=(n, d))


def _mean_log_likelihood(weights, means, covariances, X):
    return float(np.mean(O.mixture_log_prob(weights, means, covariances, "full", X)))


def _reached(X64, k, num_keys, methods=(("greedy", None), ("plain", 1)), tol=0.01):
    """Per method, the keys whose one-restart fit ends within ``tol`` (mean log-likelihood) of
    the best optimum over all keys and methods: gmmjax's greedy default, gmmjax's plain seeding
    and scikit-learn's ``init_params="kmeans"`` (scikit-learn's greedy k-means++, then k-means)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    X32 = X64.astype(np.float32)
    keys = jax.vmap(jax.random.key)(jnp.arange(num_keys))
    scores = {}
    for label, trials in methods:
        fit = jax.vmap(lambda key, trials=trials: gj.fit_em(key, X32, k, n_local_trials=trials).params)(keys)
        weights, means, covariances = (np.asarray(a) for a in (fit.weights, fit.means, fit.covariances))
        scores[label] = [_mean_log_likelihood(weights[s], means[s], covariances[s], X64) for s in range(num_keys)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [GaussianMixture(k, random_state=s).fit(X32) for s in range(num_keys)]
    scores["sklearn"] = [_mean_log_likelihood(f.weights_, f.means_, f.covariances_, X64) for f in fits]
    best = max(max(v) for v in scores.values())
    return {label: int(np.sum(best - np.asarray(v) <= tol)) for label, v in scores.items()}


def test_greedy_seeding_reaches_the_best_optimum_as_often_as_sklearn():
    """Small version of benchmarks/seeding.py (2,000 × 8, K = 5, 16 keys)."""
    reached = _reached(_selection_data(2000, 8), 5, 16, methods=(("greedy", None),))
    assert reached["greedy"] >= reached["sklearn"], reached


@pytest.mark.slow
@pytest.mark.parametrize(("d", "k"), [(2, 5), (8, 5), (8, 8)])
def test_greedy_seeding_reaches_the_best_optimum_as_often_as_sklearn_on_the_selection_data(d, k):
    """benchmarks/selection.py's data (10,000 × D), 40 keys: greedy at least scikit-learn, and at
    least gmmjax's plain seeding."""
    reached = _reached(_selection_data(10_000, d), k, 40)
    assert reached["greedy"] >= reached["sklearn"], reached
    assert reached["greedy"] >= reached["plain"], reached
