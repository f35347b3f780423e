"""Greedy k-means++ seeding (``n_local_trials``, :mod:`gmmjax._init`).

Oracles: scikit-learn's own ``_kmeans_plusplus`` (sklearn/cluster/_kmeans.py), handed gmmjax's
uniform draws through a stand-in random state, so both pick centers from the same numbers;
NumPy's ``2 + int(log K)``; the seeding of permuted and repeated rows; the separate seeding of
fewer components; a NumPy nearest-center M-step; and the optima scikit-learn's
``GaussianMixture`` reaches from its own (greedy) seeding.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("n_local_trials", [None, 1, 6])
@pytest.mark.parametrize("weighted", [False, True])
def test_greedy_seeding_is_sklearns_kmeans_plusplus(data, n_local_trials, weighted):
    """Under jit and vmap over keys, each center is the candidate scikit-learn keeps from the
    same draws (plain k-means++ for ``n_local_trials=1``)."""
    X, weight = data
    weight = weight if weighted else np.ones_like(weight)
    seed = jax.jit(jax.vmap(lambda key, w: gj.kmeans_plusplus(key, X, K, w, n_local_trials=n_local_trials), (0, None)))
    centers = np.asarray(seed(KEYS, weight))
    for s in range(KEYS.shape[0]):
        want = _sklearn_centers(KEYS[s], X, K, weight.astype(np.float64), n_local_trials)
        np.testing.assert_array_equal(centers[s], want)


def test_plain_centers_are_the_greedy_first_candidates(data):
    """The first center is the same draw, and ``n_local_trials=1`` is the first candidate of each."""
    X, _ = data
    plain = gj.kmeans_plusplus(KEYS[0], X, K, n_local_trials=1)
    greedy = gj.kmeans_plusplus(KEYS[0], X, K)
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(greedy[0]))
    assert not np.array_equal(np.asarray(plain), np.asarray(greedy))  # the greedy choice mattered


def test_data_far_from_the_origin_lose_no_digits(data):
    """float32 data at 1e4 from the origin (distance products about the first center): the same
    centers as scikit-learn's float64 seeding of the same float32 values."""
    X, weight = data
    far = (X.astype(np.float64) + 1e4).astype(np.float32)
    centers = np.asarray(jax.jit(lambda key: gj.kmeans_plusplus(key, far, K, weight))(KEYS[1]))
    np.testing.assert_array_equal(centers, _sklearn_centers(KEYS[1], far, K, weight.astype(np.float64), None))


def test_lane_trial_counts_are_numpys_2_plus_int_log_k():
    num_active = jnp.arange(1, 3001)
    counts = jax.jit(lambda a: _init._lane_local_trials(a, _init.default_local_trials(3000)))(num_active)
    np.testing.assert_array_equal(np.asarray(counts), 2 + np.log(np.arange(1, 3001)).astype(int))
    assert [_init.default_local_trials(k) for k in (1, 2, 3, 7, 8, 20, 21)] == [2, 2, 3, 3, 4, 4, 5]


def test_inactive_lanes_seed_as_fewer_components(data):
    """A lane of ``num_active = a`` in a ``K = 21`` seeding (5 candidates drawn, ``2 + int(log a)``
    counting) equals the separate seeding of ``a`` components (traced ``a``, vmapped)."""
    X, weight = data
    lanes = jnp.array([2, 7, 8, 21])  # 2, 3, 4 and 5 candidates count
    masked = jax.jit(jax.vmap(lambda a: gj.kmeans_plusplus(KEYS[2], X, 21, weight, num_active=a)))(lanes)
    for lane, a in enumerate(lanes.tolist()):
        separate = np.asarray(gj.kmeans_plusplus(KEYS[2], X, a, weight))
        np.testing.assert_array_equal(np.asarray(masked[lane, :a]), separate)
        np.testing.assert_array_equal(np.asarray(masked[lane, a:]), np.repeat(separate[:1], 21 - a, axis=0))


def test_given_trials_make_fewer_centers_a_prefix(data):
    """With ``n_local_trials`` given, the first ``K`` centers of ``K' > K`` are those of ``K``."""
    X, weight = data
    few, more = (np.asarray(gj.kmeans_plusplus(KEYS[3], X, k, weight, n_local_trials=3)) for k in (5, 12))
    np.testing.assert_array_equal(more[:5], few)


def test_by_value_ignores_row_order_and_counts_integer_weights_as_copies(data):
    X, _ = data
    counts = np.random.default_rng(6).integers(0, 4, X.shape[0]).astype(np.float32)
    order = np.random.default_rng(7).permutation(X.shape[0])
    seed = lambda X, w: np.asarray(gj.kmeans_plusplus(KEYS[0], X, K, w, by_value=True))  # noqa: E731
    weighted = seed(X, counts)
    np.testing.assert_array_equal(seed(X[order], counts[order]), weighted)
    repeated = np.repeat(X, counts.astype(int), axis=0)
    np.testing.assert_array_equal(seed(repeated, np.ones(repeated.shape[0], np.float32)), weighted)


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


def _reached(X64, k, num_keys, tol=0.01):
    """Per method, the keys whose one-restart fit ends within ``tol`` (mean log-likelihood) of
    the best optimum over all keys and methods: gmmjax's greedy default, gmmjax's plain seeding
    and scikit-learn's ``init_params="kmeans"`` (scikit-learn's greedy k-means++, then k-means)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    X32 = X64.astype(np.float32)
    keys = jax.vmap(jax.random.key)(jnp.arange(num_keys))
    scores = {}
    for label, trials in (("greedy", None), ("plain", 1)):
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
    reached = _reached(_selection_data(2000, 8), 5, 16)
    assert reached["greedy"] >= reached["sklearn"], reached


@pytest.mark.slow
@pytest.mark.parametrize(("d", "k"), [(2, 5), (8, 5), (8, 8)])
def test_greedy_seeding_reaches_the_best_optimum_as_often_as_sklearn_on_the_selection_data(d, k):
    """benchmarks/selection.py's data (10,000 × D), 40 keys: greedy at least scikit-learn, and at
    least gmmjax's plain seeding."""
    reached = _reached(_selection_data(10_000, d), k, 40)
    assert reached["greedy"] >= reached["sklearn"], reached
    assert reached["greedy"] >= reached["plain"], reached
