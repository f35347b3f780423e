"""The compacting while loop: under vmap, every lane ends exactly where a plain loop ends."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _oracles as O
import gmmjax as gj
from gmmjax._loops import MIN_BATCH, compacting_while_loop


def _collatz_steps(start, limit, offset):
    """Steps of the Collatz map until 1 (or ``limit``): very different trip counts per lane."""

    def cond(state, operands):
        value, steps, _ = state
        return (value > 1) & (steps < operands[0])

    def body(state, operands):
        value, steps, total = state
        value = jnp.where(value % 2 == 0, value // 2, 3 * value + 1)
        return value, steps + 1, total + value + operands[1]

    return cond, body, (start, jnp.array(0), jnp.array(0)), (limit, offset)


@pytest.mark.parametrize("batch, mostly_short", [(5, False), (MIN_BATCH, False), (97, False), (97, True)])
def test_vmapped_compacting_loop_equals_plain_loop(batch, mostly_short):
    """Lanes of very different lengths, mostly long or mostly short (every 10th lane starts
    at 27: 111 steps; the others finish in ≤ 5), so that rounds mix running and finished
    lanes and the last rounds hold fewer running lanes than the group."""
    lanes = jnp.arange(batch)
    if mostly_short:
        starts = jnp.where(lanes % 10 == 0, 27, 2 ** (lanes % 6))
    else:
        starts = (lanes + 2) * 7
    offsets = jnp.arange(batch) % 5  # batched operand
    limit = jnp.array(150)  # unbatched operand

    def compacting(start, offset):
        cond, body, init, ops = _collatz_steps(start, limit, offset)
        return compacting_while_loop(cond, body, init, ops)

    def plain(start, offset):
        cond, body, init, ops = _collatz_steps(start, limit, offset)
        return jax.lax.while_loop(lambda s: cond(s, ops), lambda s: body(s, ops), init)

    got = jax.jit(jax.vmap(compacting))(starts, offsets)
    want = jax.vmap(plain)(starts, offsets)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(set(np.asarray(want[1]).tolist())) >= min(batch, 6)  # lanes stop at different steps
    assert (np.mean(np.asarray(want[1]) > 6) < 0.5) == mostly_short
    # unbatched, it is the plain loop
    single = compacting(starts[3], offsets[3])
    for a, b in zip(single, plain(starts[3], offsets[3])):
        assert int(a) == int(b)


def test_fit_em_vmapped_over_many_datasets_equals_single_fits():
    """20 datasets (above the compaction threshold) in one vmapped call: each equals its own fit."""
    datasets = np.stack([O.make_blobs(n=60, d=2, k=2, seed=s)[0] for s in range(20)]).astype(np.float32)
    keys = jax.random.split(jax.random.key(4), 20)
    batched = jax.jit(jax.vmap(lambda key, X: gj.fit_em(key, X, 2, max_iter=60)))(keys, jnp.asarray(datasets))
    single = jax.jit(lambda key, X: gj.fit_em(key, X, 2, max_iter=60))
    n_iters = set()
    for i in range(20):
        one = single(keys[i], jnp.asarray(datasets[i]))
        assert int(batched.n_iter[i]) == int(one.n_iter)
        n_iters.add(int(one.n_iter))
        batched_i = jax.tree_util.tree_map(lambda leaf: leaf[i], batched.params)  # noqa: B023  tree_map calls it at once
        O.assert_trees_close(one.params, batched_i, rtol=1e-4, atol=1e-4)
    assert len(n_iters) > 1
