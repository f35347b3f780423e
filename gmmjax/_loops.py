"""A ``while_loop`` that, under ``vmap``, stops paying for lanes that have finished.

``jax.vmap`` of ``lax.while_loop`` runs the body for every lane until the *last* lane is
done, so a batch of fits (restarts, or many datasets) costs as many iterations as its
slowest member times the batch size. :func:`compacting_while_loop` computes the same
per-lane results, but its batching rule runs all lanes for a few steps and then gathers
the lanes still running into groups of a fixed size, running one group at a time to the
end (static shapes throughout: a ``while_loop`` over ``ceil(active / group)`` groups, each
a gather, a vmapped loop and a scatter back) — unless more than half of the lanes still
run, when one batch is faster. Unbatched, it is ``lax.while_loop``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

# Steps every lane runs before the lanes still running are compacted, and the group size
# as a fraction of the batch (measured on 1000 vmapped fits: EM 153 ms → 52 ms).
WARMUP_STEPS = 6
GROUP_FRACTION = 8
# Below this batch size compaction does not pay for its gathers.
MIN_BATCH = 16


def _broadcast_unbatched(tree, batched, axis_size: int):
    return jax.tree_util.tree_map(
        lambda leaf, is_batched: leaf if is_batched else jnp.broadcast_to(leaf, (axis_size,) + jnp.shape(leaf)),
        tree, batched)


def compacting_while_loop(cond_fun: Callable, body_fun: Callable, init_val, operands):
    """``lax.while_loop(lambda s: cond_fun(s, operands), lambda s: body_fun(s, operands), init_val)``.

    Args:
      cond_fun: ``(state, operands) -> bool scalar``.
      body_fun: ``(state, operands) -> state``.
      init_val: the initial state (a pytree of arrays).
      operands: loop-invariant inputs (a pytree of arrays, e.g. the data).

    Returns:
      The final state. Under ``vmap`` each lane's result equals that of the plain loop
      (the same steps in the same order; only the batch the steps run in differs).
    """

    @jax.custom_batching.custom_vmap
    def loop(state, ops):
        return jax.lax.while_loop(lambda s: cond_fun(s, ops), lambda s: body_fun(s, ops), state)

    @loop.def_vmap
    def loop_batched(axis_size, in_batched, state, ops):
        state_batched, ops_batched = in_batched
        state = _broadcast_unbatched(state, state_batched, axis_size)  # small: parameters
        # Loop-invariant operands stay unbatched where they are (e.g. the data shared by
        # all restarts): never copied per lane.
        op_leaves, op_tree = jax.tree_util.tree_flatten(ops)
        op_flags = jax.tree_util.tree_leaves(ops_batched)
        ops_axes = op_tree.unflatten([0 if flag else None for flag in op_flags])
        out_batched = jax.tree_util.tree_map(lambda _: True, state)
        plain = jax.vmap(lambda s, o: jax.lax.while_loop(lambda t: cond_fun(t, o), lambda t: body_fun(t, o), s),
                         in_axes=(0, ops_axes))
        if axis_size < MIN_BATCH:
            return plain(state, ops), out_batched

        def warm(s, o):
            def cond(counted):
                step, inner = counted
                return (step < WARMUP_STEPS) & cond_fun(inner, o)

            return jax.lax.while_loop(cond, lambda c: (c[0] + 1, body_fun(c[1], o)), (jnp.array(0), s))[1]

        state = jax.vmap(warm, in_axes=(0, ops_axes))(state, ops)
        running = jax.vmap(cond_fun, in_axes=(0, ops_axes))(state, ops)
        order = jnp.argsort(~running, stable=True)  # running lanes first
        group = max(1, math.ceil(axis_size / GROUP_FRACTION))
        num_groups = (jnp.sum(running) + group - 1) // group

        def run_group(carry):
            index, state = carry
            # dynamic_slice clamps the last group to end at the batch's end: lanes it re-reads
            # are finished already, so running them again changes nothing.
            lanes = jax.lax.dynamic_slice_in_dim(order, index * group, group)
            take = lambda leaf: leaf[lanes]
            group_ops = op_tree.unflatten([leaf[lanes] if flag else leaf for leaf, flag in zip(op_leaves, op_flags)])
            finished = plain(jax.tree_util.tree_map(take, state), group_ops)
            state = jax.tree_util.tree_map(lambda leaf, new: leaf.at[lanes].set(new), state, finished)
            return index + 1, state

        def grouped(state):
            return jax.lax.while_loop(lambda carry: carry[0] < num_groups, run_group, (jnp.array(0), state))[1]

        # Groups pay off once most lanes have finished; while most still run, one batch is faster.
        state = jax.lax.cond(2 * jnp.sum(running) > axis_size, lambda s: plain(s, ops), grouped, state)
        return state, out_batched

    return loop(init_val, operands)
