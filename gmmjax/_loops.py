"""A ``while_loop`` that, under ``vmap``, stops paying for lanes that have finished.

``jax.vmap`` of ``lax.while_loop`` runs the body for every lane until the *last* lane is
done, so a batch of fits (restarts, or many datasets) costs as many iterations as its
slowest member times the batch size. :func:`compacting_while_loop` computes the same
per-lane results, but its batching rule keeps a fixed-size *group* of lanes busy: each
round gathers up to ``group`` lanes that are still running, advances them by one step and
scatters them back, so a lane that has finished is never stepped again and its slot goes
to one that still runs. The work is then the total number of steps the lanes need, not
the batch size times the longest run; shapes stay static (one gather, one vmapped body of
``group`` lanes and one scatter per round) and the body is compiled once. A small batch
(fewer than ``MIN_BATCH`` lanes, e.g. ``n_init=4``) runs a plain vmapped loop, or, with
``small_batch_tail`` on the CPU (k-means), steps all its lanes together while every one
runs and then the lanes left one at a time (a second compiled body), so that the batch does
the work of the same runs one by one, never more. Unbatched, it is ``lax.while_loop``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Lanes stepped together per round: a fraction of the batch (measured on 1000 vmapped small
# fits, benchmarks/NOTES.md: 1/8 and 1/16 best, 1/2 1.4× slower), and at least MIN_GROUP so that
# a few restarts still share their passes over the data. Smaller groups waste fewer steps at
# the tail but pay the per-round gather more often.
GROUP_FRACTION = 8
MIN_GROUP = 2
# Below this batch size the lanes are not regrouped: all of them step together (with
# small_batch_tail on the CPU, until the first one stops, then one at a time: _finish_one_by_one).
MIN_BATCH = 8


def _finish_one_by_one() -> bool:
    """Whether a small batch runs its lanes one at a time once one of them has stopped.

    On the CPU a vmapped step of ``B`` lanes costs about ``B`` steps of one lane (measured
    for the Lloyd and EM steps of 4 restarts on 15k × 8 rows, K = 8: 1.0–1.3× less per lane),
    so stepping finished lanes along with the others is pure waste: 4 k-means runs of
    14, 15, 4 and 4 steps cost 60 lane steps instead of 37, which made ``fit_em(n_init=4)``
    slower than the same four fits one by one (benchmarks/NOTES.md, R1/R2). On accelerators,
    where a small batch is expected to step in about the time of one lane (not measured
    here), the plain vmapped loop is kept. The price on the CPU: a second compiled body, so
    only the loop whose step counts differ most between lanes asks for it (k-means: Lloyd runs
    of 4 to 30 steps): for ``fit_em(n_init=4)`` on 15k × 8, K = 8, the tail in both the
    k-means and the EM loop compiled in 4.1 s (full) / 3.2 s (spherical) against 2.4 / 2.0 s
    without, the k-means tail alone in 2.8 / 2.3 s, warm 0.196 / 0.169 s against 0.200 / 0.174
    with both and 0.223 / 0.176 before (benchmarks/NOTES.md, 2026-12-04).
    """
    return jax.default_backend() == "cpu"


def _broadcast_unbatched(tree, batched, axis_size: int):
    return jax.tree_util.tree_map(
        lambda leaf, is_batched: leaf if is_batched else jnp.broadcast_to(leaf, (axis_size,) + jnp.shape(leaf)),
        tree,
        batched,
    )


def compacting_while_loop(
    cond_fun: Callable, body_fun: Callable, init_val, operands, *, small_batch_tail: bool = False
):
    """``lax.while_loop(lambda s: cond_fun(s, operands), lambda s: body_fun(s, operands), init_val)``.

    Args:
      cond_fun: ``(state, operands) -> bool scalar``.
      body_fun: ``(state, operands) -> state``.
      init_val: the initial state (a pytree of arrays).
      operands: loop-invariant inputs (a pytree of arrays, e.g. the data).
      small_batch_tail: under ``vmap`` with fewer than ``MIN_BATCH`` lanes, on the CPU, run the
        lanes one at a time once the first has stopped (see :func:`_finish_one_by_one`).

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
        step = jax.vmap(body_fun, in_axes=(0, ops_axes))
        going = jax.vmap(cond_fun, in_axes=(0, ops_axes))
        if axis_size < MIN_BATCH and not (small_batch_tail and _finish_one_by_one()):
            plain = jax.vmap(
                lambda s, o: jax.lax.while_loop(lambda t: cond_fun(t, o), lambda t: body_fun(t, o), s),
                in_axes=(0, ops_axes),
            )
            return plain(state, ops), out_batched

        def regroup(group: int):
            """One round: up to ``group`` running lanes gathered, stepped and scattered back."""

            def round_(carry):
                state, running = carry
                # The running lanes first (stable: lowest index first); a round with fewer than
                # `group` running lanes also takes finished ones, which it leaves unchanged.
                lanes = jnp.argsort(~running, stable=True)[:group]
                active = running[lanes]
                take = lambda leaf: leaf[lanes]
                lane_state = jax.tree_util.tree_map(take, state)
                lane_ops = op_tree.unflatten([leaf[lanes] if flag else leaf for leaf, flag in zip(op_leaves, op_flags)])
                stepped = step(lane_state, lane_ops)
                keep = lambda new, old: jnp.where(jnp.reshape(active, active.shape + (1,) * (new.ndim - 1)), new, old)
                stepped = jax.tree_util.tree_map(keep, stepped, lane_state)
                state = jax.tree_util.tree_map(lambda leaf, new: leaf.at[lanes].set(new), state, stepped)
                running = running.at[lanes].set(active & going(stepped, lane_ops))
                return state, running

            return round_

        def all_lanes(carry):  # every lane runs: no gather, scatter or select
            stepped = step(carry[0], ops)
            return stepped, going(stepped, ops)

        carry = (state, going(state, ops))
        if axis_size < MIN_BATCH:  # all lanes while every one runs, then the rest one by one
            carry = jax.lax.while_loop(lambda carry: jnp.all(carry[1]), all_lanes, carry)
            group = 1
        else:
            group = max(math.ceil(axis_size / GROUP_FRACTION), MIN_GROUP)
        state, _ = jax.lax.while_loop(lambda carry: jnp.any(carry[1]), regroup(group), carry)
        return state, out_batched

    return loop(init_val, operands)
