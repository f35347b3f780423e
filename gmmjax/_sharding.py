"""Data-parallel fits: the rows sharded over a mesh axis, one all-reduce per pass.

A fit on sharded rows is the same fit (:func:`gmmjax._em.fit_em_restarts` and the other
front doors' bodies) run inside ``jax.shard_map`` over the data axis: each device runs the
unchanged chunked E-step on the rows it holds, and the statistics (with the log-likelihood
and the total weight) are summed by **one** ``psum`` of one flat array per EM iteration
(:func:`gmmjax._stats.sum_stats`); the M-step, the convergence test and the choice of the
best restart run replicated on every device, so no device stops early. Initialisation takes
the same draws as on one device: every sum over rows in it (seeding draws, Lloyd steps,
initial statistics) is a collective over the same axis (:mod:`gmmjax._collectives`). The data
never moves: the compiled program has no all-gather of a data-sized array
(``tests/test_sharding.py`` reads it).

The rows come as a ``jax.Array`` sharded along its first axis (a ``NamedSharding`` whose
spec names a mesh axis for the rows), or as any array plus ``mesh=`` (and ``data_axis=``
when the mesh has several axes), which :func:`shard_rows` places. Rows that do not divide
evenly are padded with rows of sample weight zero (results unaffected). On many hosts
(``jax.distributed``), each process passes the rows it holds to :func:`shard_rows` with
``process_local=True``: ragged counts are padded per process and the global array is built
by ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gmmjax import _validation as v
from gmmjax._chunks import resolve_chunk_size
from gmmjax._collectives import RowAxis


class ShardedRows(NamedTuple):
    """Rows placed on a mesh by :func:`shard_rows` (the global arrays a sharded fit takes).

    Attributes:
      X: ``(N_padded, D)`` ``jax.Array`` sharded along rows over ``data_axis``.
      sample_weight: ``(N_padded,)`` weights sharded the same way (zero on padding rows), or
        ``None`` when there is no padding and no weights were given.
      mesh: the ``jax.sharding.Mesh``.
      data_axis: the mesh axis (or tuple of axes) the rows are sharded over.
      num_valid: rows that are data when every padding row comes after them and no weights
        were given (``None`` otherwise): unweighted draws by position then stay among them.
    """

    X: jax.Array
    sample_weight: jax.Array | None
    mesh: jax.sharding.Mesh
    data_axis: str | tuple
    num_valid: int | None


def _axis_size(mesh, data_axis) -> int:
    names = data_axis if isinstance(data_axis, tuple) else (data_axis,)
    return math.prod(mesh.shape[name] for name in names)


def resolve_data_axis(mesh, data_axis):
    """The mesh axis the rows are sharded over: ``data_axis``, or the mesh's only axis."""
    names = tuple(mesh.axis_names)
    if data_axis is None:
        if len(names) != 1:
            raise ValueError(f"the mesh has axes {names}: pass data_axis= naming the one the rows are sharded over.")
        return names[0]
    for name in data_axis if isinstance(data_axis, tuple) else (data_axis,):
        if name not in names:
            raise ValueError(f"data_axis {name!r} is not an axis of the mesh (its axes: {names}).")
    return data_axis


def row_sharding(X) -> tuple[jax.sharding.Mesh, str | tuple] | None:
    """``(mesh, data_axis)`` when ``X`` is a ``jax.Array`` whose rows are sharded by a
    ``NamedSharding`` (over more than one device); else ``None``."""
    sharding = getattr(X, "sharding", None)
    if not isinstance(sharding, NamedSharding) or getattr(X, "ndim", 0) < 1:
        return None
    spec = tuple(sharding.spec) + (None,) * X.ndim
    if spec[0] is None:
        return None
    if any(axis is not None for axis in spec[1 : X.ndim]):
        raise ValueError(
            f"X is sharded along its features too (spec {sharding.spec}); gmmjax shards rows only: "
            "use PartitionSpec(data_axis) or PartitionSpec(data_axis, None)."
        )
    return sharding.mesh, spec[0]  # type: ignore[return-value]


def _pad(rows: int, shards: int) -> int:
    return -rows % shards


def shard_rows(
    X,
    mesh: jax.sharding.Mesh,
    data_axis: str | tuple | None = None,
    sample_weight=None,
    *,
    process_local: bool = False,
) -> ShardedRows:
    """Places rows on ``mesh``, sharded along ``data_axis``, padded with weight-zero rows.

    Args:
      X: ``(N, D)`` data: the whole data (``process_local=False``), or, under
        ``jax.distributed``, the rows this process holds (``process_local=True``; every process
        calls this with its own rows, ragged counts allowed).
      mesh: a ``jax.sharding.Mesh`` (Explicit axes from ``jax.make_mesh`` or Auto ones).
      data_axis: the mesh axis (or tuple of axes) for rows; default the mesh's only axis.
      sample_weight: optional ``(N,)`` weights of those rows.
      process_local: build the global array from every process's rows
        (``jax.make_array_from_process_local_data``): each process's rows are padded to the
        largest count, so the global row order is process by process, each followed by its
        padding.

    Returns:
      :class:`ShardedRows` (pass ``X`` and ``sample_weight`` to :func:`gmmjax.fit_em`).

    Raises:
      ValueError: ``X`` is not 2-D numbers, holds NaN or infinity, processes disagree on the
        number of features or the dtype, or a weight is invalid.
    """
    data_axis = resolve_data_axis(mesh, data_axis)
    X = v.check_data(np.asarray(X) if not isinstance(X, jax.Array) else X, "X")
    dtype = X.dtype
    if sample_weight is not None:
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], dtype)
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    if process_local and jax.process_count() > 1:
        return _shard_process_rows(X, sample_weight, mesh, data_axis, sharding)
    shards = _axis_size(mesh, data_axis)
    pad = _pad(X.shape[0], shards)
    num_valid = X.shape[0] if (pad and sample_weight is None) else None
    if pad:
        weight = jnp.ones(X.shape[0], dtype) if sample_weight is None else sample_weight
        X = jnp.concatenate([X, jnp.zeros((pad, X.shape[1]), dtype)])
        sample_weight = jnp.concatenate([weight, jnp.zeros(pad, dtype)])
    if not (v.is_traced(X) or v.is_traced(sample_weight)):
        # (Traced rows, e.g. under grad, are placed by the program's shard_map instead: a
        # device_put of a tracer onto a mesh of Explicit axes cannot be transposed outside it.)
        X = jax.device_put(X, sharding)
        if sample_weight is not None:
            sample_weight = jax.device_put(sample_weight, sharding)
    return ShardedRows(X, sample_weight, mesh, data_axis, num_valid)


def gather_values(values) -> np.ndarray:
    """``(P, n)`` every process's ``values`` (``n`` numbers, float64 exactly: sent as bytes)."""
    from jax.experimental import multihost_utils

    local = np.frombuffer(np.asarray(values, np.float64).tobytes(), np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(local))
    return gathered.reshape(jax.process_count(), -1).view(np.float64)


def process_digests(digest: str) -> list[str]:
    """Every process's hex ``digest`` (one all-gather of 32 bytes each)."""
    from jax.experimental import multihost_utils

    local = np.frombuffer(bytes.fromhex(digest), np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)
    return [bytes(row.astype(np.uint8)).hex() for row in gathered]


_DTYPE_NAMES = {16: "float16", 32: "float32", 64: "float64"}


def agree_across_processes(
    rows: int, num_features: int, dtype, weighted: bool, *, what: str, error: type[Exception] = ValueError
) -> np.ndarray:
    """Every process's row count, ``(P,)`` int64, from one small all-gather; raises the same
    ``error`` on every process when the processes' data (``what``: "rows", "data") differ in
    the number of features, the dtype or whether they carry sample weights."""
    dtype = np.dtype(dtype)
    code = dtype.itemsize * 8 if dtype.kind == "f" and dtype.itemsize * 8 in _DTYPE_NAMES else -1
    every = gather_values([rows, num_features, code, float(weighted)])
    counts, features, codes, weights = (every[:, i] for i in range(4))
    if len(set(features.tolist())) != 1:
        detail = ", ".join(f"process {p}: {int(d)}" for p, d in enumerate(features.tolist()))
        raise error(
            f"the processes' {what} have different numbers of features ({detail}): every process must "
            "pass rows with the same columns."
        )
    if len(set(codes.tolist())) != 1:
        detail = ", ".join(f"process {p}: {_DTYPE_NAMES.get(int(c), 'another dtype')}" for p, c in enumerate(codes))
        raise error(f"the processes' {what} have different dtypes ({detail}): cast them to one dtype.")
    if len(set(weights.tolist())) != 1:
        detail = ", ".join(f"process {p}: {'yes' if w else 'no'}" for p, w in enumerate(weights.tolist()))
        raise error(f"either every process's {what} carry sample weights or none do ({detail}).")
    return counts.astype(np.int64)


def _shard_process_rows(X, sample_weight, mesh, data_axis, sharding) -> ShardedRows:
    counts = agree_across_processes(X.shape[0], X.shape[1], X.dtype, sample_weight is not None, what="rows")
    local_devices = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    if local_devices == 0:
        raise ValueError("this process holds no device of the mesh: build the mesh over every process's devices.")
    # Every process pads to the same local count, a multiple of its devices' share.
    target = int(counts.max())
    target += _pad(target, local_devices)
    pad = target - X.shape[0]
    weight = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
    X_local = np.concatenate([np.asarray(X), np.zeros((pad, X.shape[1]), X.dtype)])
    w_local = np.concatenate([np.asarray(weight), np.zeros(pad, X.dtype)])
    uniform = bool((counts == target).all()) and sample_weight is None
    global_rows = target * jax.process_count()
    X_global = jax.make_array_from_process_local_data(sharding, X_local, (global_rows, X.shape[1]))
    w_global = None if uniform else jax.make_array_from_process_local_data(sharding, w_local, (global_rows,))
    return ShardedRows(X_global, w_global, mesh, data_axis, None)


def check_sharded_weight(sample_weight, X) -> jax.Array:
    """Weights of a sharded fit, checked with reductions on the devices (no host copy)."""
    if not isinstance(sample_weight, jax.Array):
        return v.check_sample_weight(sample_weight, X.shape[0], X.dtype)
    if sample_weight.shape != (X.shape[0],):
        raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {sample_weight.shape}.")
    low, total = float(jnp.min(sample_weight)), float(jnp.sum(sample_weight))
    if not (math.isfinite(low) and math.isfinite(total)) or low < 0:
        raise ValueError("sample_weight must be finite and non-negative.")
    if not total > 0:
        raise ValueError("sample_weight must have a positive sum, but all weights are zero.")
    return sample_weight.astype(X.dtype)


class ShardedInputs(NamedTuple):
    """A sharded fit's global inputs and layout."""

    X: jax.Array
    sample_weight: jax.Array | None
    mesh: jax.sharding.Mesh
    data_axis: str | tuple
    rows: RowAxis
    local_rows: int


def sharded_inputs(X, sample_weight, mesh, data_axis) -> ShardedInputs:
    """Resolves where a fit's rows live: a row-sharded ``X`` (its mesh and axis; ``mesh``, if
    given, must be that mesh), or ``X`` placed on ``mesh`` by :func:`shard_rows`."""
    placed = row_sharding(X)
    if placed is not None:
        X_mesh, X_axis = placed
        if mesh is not None and mesh != X_mesh:
            raise ValueError("X is already sharded over another mesh than mesh=: pass one of them.")
        if data_axis is not None and data_axis != X_axis:
            raise ValueError(f"X's rows are sharded over {X_axis!r}, not data_axis={data_axis!r}.")
        mesh, data_axis = X_mesh, X_axis
        X = v.check_data(X, "X")
        shards = _axis_size(mesh, data_axis)
        if X.shape[0] % shards:
            # An unevenly sharded array: pad (weight zero) and place again.
            rows = shard_rows(
                X, mesh, data_axis, None if sample_weight is None else check_sharded_weight(sample_weight, X)
            )
            X, sample_weight, num_valid = rows.X, rows.sample_weight, rows.num_valid
        else:
            num_valid = None
            if sample_weight is not None:
                weight = check_sharded_weight(sample_weight, X)
                sample_weight = jax.device_put(weight, NamedSharding(mesh, PartitionSpec(data_axis)))
    else:
        if mesh is None:
            raise ValueError("pass a mesh= (or a row-sharded X) for a sharded fit.")
        rows = shard_rows(X, mesh, data_axis, sample_weight)
        X, sample_weight, mesh, data_axis, num_valid = rows
    shards = _axis_size(mesh, data_axis)
    return ShardedInputs(X, sample_weight, mesh, data_axis, RowAxis(data_axis, num_valid), X.shape[0] // shards)


def local_chunk_size(chunk_size, inputs: ShardedInputs, num_components: int, batch: int) -> int:
    """Rows per chunk of each device's pass (the options' ``chunk_size``, or automatic, for
    the rows one device holds)."""
    return resolve_chunk_size(
        chunk_size, inputs.local_rows, num_components, inputs.X.shape[1], inputs.X.dtype, batch=batch
    )


def _place_rows(array: jax.Array, mesh, data_axis) -> jax.Array:
    """``array``'s rows sharded over ``data_axis``, inside a traced program: a no-op for rows
    already placed (:func:`shard_rows`), the placement itself for rows that a caller's
    transformation traced (``jax.grad`` of a fit: the rows reach the program unplaced).
    ``jax.reshard`` for Explicit mesh axes, a sharding constraint for Auto ones."""
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    names = data_axis if isinstance(data_axis, tuple) else (data_axis,)
    explicit = any(mesh.axis_types[mesh.axis_names.index(name)] == jax.sharding.AxisType.Explicit for name in names)
    return jax.reshard(array, sharding) if explicit else jax.lax.with_sharding_constraint(array, sharding)


def data_parallel(body, mesh, data_axis, num_sharded: int):
    """``body(*replicated, *sharded)`` inside ``jax.shard_map``: the last ``num_sharded``
    positional arguments are row arrays (``None`` allowed) sharded over ``data_axis``, the
    others replicated; the result is replicated (every device computes the same)."""

    def call(*args):
        replicated, sharded = args[: len(args) - num_sharded], args[len(args) - num_sharded :]
        present = tuple(a is not None for a in sharded)

        def inner(*flat):
            rest = iter(flat[len(replicated) :])
            rows = [next(rest) if here else None for here in present]
            return body(*flat[: len(replicated)], *rows)

        specs = (PartitionSpec(),) * len(replicated) + (PartitionSpec(data_axis),) * sum(present)
        mapped = jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(), check_vma=False)
        return mapped(*replicated, *(_place_rows(a, mesh, data_axis) for a in sharded if a is not None))

    return call


@functools.cache
def data_parallel_program(body, static: tuple, mesh, data_axis, rows: RowAxis, num_extra: int):
    """The jitted data-parallel program of a front door's body (cached: one per configuration).

    ``body(key, X, sample_weight, options, *extra, rows=rows, **dict(static))`` is a module-level
    function (a fit body such as :func:`gmmjax._em.fit_em_restarts`); the program takes
    ``(key, options, *extra, X, sample_weight)`` with ``X`` and ``sample_weight`` global arrays
    sharded over ``data_axis`` and returns the (replicated) result.
    """
    keywords = dict(static)

    def inner(key, options, *rest):
        extra, (X_local, w_local) = rest[:num_extra], rest[num_extra:]
        return body(key, X_local, w_local, options, *extra, rows=rows, **keywords)

    return jax.jit(lambda *args: data_parallel(inner, mesh, data_axis, 2)(*args))


def program_and_arguments(body, key, inputs: ShardedInputs, options, *extra, **static):
    """:func:`data_parallel_program` of ``body`` and the arguments to call it with, on checked
    ``inputs`` (``options`` with the chunk size resolved for the rows of one device and its
    leaves as arrays); apart so that benchmarks and tests can lower and inspect the program."""
    program = data_parallel_program(
        body, tuple(sorted(static.items())), inputs.mesh, inputs.data_axis, inputs.rows, len(extra)
    )
    return program, (key, options, *extra, inputs.X, inputs.sample_weight)


def run_data_parallel(body, key, inputs: ShardedInputs, options, *extra, **static):
    """Runs :func:`program_and_arguments`' program on its arguments."""
    program, arguments = program_and_arguments(body, key, inputs, options, *extra, **static)
    return program(*arguments)


def prepare(key, X, num_components, options, sample_weight, mesh, data_axis, *, max_components=None, fits_per_pass=1):
    """A sharded fit's boundary: rows placed and checked, options checked, chunk size resolved
    for the rows one device holds. Returns ``(key, inputs, options)``."""
    from gmmjax._driver import check_fit_inputs, traced_leaves

    inputs = sharded_inputs(X, sample_weight, mesh, data_axis)
    checked = check_fit_inputs(
        key, inputs.X, num_components, options, max_components=max_components, fits_per_pass=fits_per_pass
    )
    largest = num_components if max_components is None else max_components
    chunk = local_chunk_size(
        options.chunk_size, inputs, largest, fits_per_pass * (checked.options.restart_batch_size or 1)
    )
    return checked.key, inputs, traced_leaves(checked.options.replace(chunk_size=chunk), inputs.X.dtype)


def fit_em_sharded(key, X, num_components: int, options, sample_weight, mesh, data_axis, differentiation: str):
    """:func:`gmmjax.fit_em` on sharded rows (see the module docstring)."""
    from gmmjax._em import fit_em_restarts

    key, inputs, options = prepare(key, X, num_components, options, sample_weight, mesh, data_axis)
    return run_data_parallel(
        fit_em_restarts, key, inputs, options, num_components=int(num_components), differentiation=differentiation
    )


# -- checkpointed sharded fits ------------------------------------------------------------------
def _init_states_body(key, X, sample_weight, options, *, num_components: int, rows: RowAxis):
    """Each restart's starting :class:`~gmmjax.FitState` (``(R, …)`` leaves), as
    :func:`gmmjax._em.fit_em_restarts` initialises them (its sums over rows are collectives)."""
    from gmmjax._driver import initial_params, initial_state, restart_keys

    def one(restart_key):
        params, collapsed = initial_params(restart_key, X, sample_weight, options, num_components, None, rows)
        return initial_state(params, collapsed, options.max_iter, options.lower_bound_init)

    keys = restart_keys(key, options.n_init)
    if options.n_init == 1:
        return jax.tree_util.tree_map(lambda leaf: leaf[None], one(keys[0]))
    return jax.vmap(one)(keys)


def _segment_body(key, X, sample_weight, options, states, stop_at, *, num_components: int, rows: RowAxis):
    """EM from ``states`` until each restart has converged or run ``min(stop_at, max_iter)``
    iterations (the iterations of :func:`gmmjax._em.run_em`, one all-reduce each)."""
    from gmmjax._em import EMOperands, em_iteration
    from gmmjax._loops import compacting_while_loop
    from gmmjax._stats import _em_step_with_diagnostics

    em_step_fn = functools.partial(_em_step_with_diagnostics, chunk_size=options.chunk_size, rows=rows)
    operands = EMOperands(X, sample_weight, options.tol, options.reg_covar)
    limit = jnp.minimum(stop_at, options.max_iter)

    def keep_going(state, ops):
        return (state.n_iter < ops[1]) & ~state.converged

    def step(state, ops):
        return em_iteration(state, ops[0], em_step_fn)

    return jax.vmap(lambda state: compacting_while_loop(keep_going, step, state, (operands, limit)))(states)


def _replicated(tree, mesh):
    """Host values as arrays replicated over ``mesh`` (on many processes each passes the same)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)


def _host(tree):
    """A replicated (possibly multi-process) result as NumPy arrays (this process's copy)."""
    return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf.addressable_shards[0].data), tree)


def _data_description(inputs: ShardedInputs) -> dict:
    """What identifies a sharded fit's data in its checkpoint: the global shape and dtype, the
    devices, and a digest of the first rows each process holds (all-gathered on many processes)."""
    from gmmjax._checkpoint import array_digest

    shard = min(inputs.X.addressable_shards, key=lambda s: s.index[0].start or 0)
    head = np.asarray(shard.data[:1024])
    weight = None
    if inputs.sample_weight is not None:
        weight = np.asarray(min(inputs.sample_weight.addressable_shards, key=lambda s: s.index[0].start or 0).data)
    digest = array_digest(head, weight)
    if jax.process_count() > 1:
        digest = process_digests(digest)  # type: ignore[assignment]
    return {
        "shape": list(inputs.X.shape),
        "dtype": np.dtype(inputs.X.dtype).str,
        "devices": _axis_size(inputs.mesh, inputs.data_axis),
        "head": digest,
    }


def fit_em_sharded_checkpointed(
    key, X, num_components: int, options, sample_weight, mesh, data_axis, checkpoint, checkpoint_every, resume
):
    """:func:`gmmjax.fit_em` on sharded rows, ``checkpoint_every`` iterations at a time, the
    restarts' states written to ``checkpoint`` after each segment (atomically; on many
    processes by process 0 only) and, with ``resume``, read back from it. The iterations are
    those of the uninterrupted fit: a resumed fit gives its result."""
    from gmmjax._checkpoint import fingerprint, load_checkpoint, save_checkpoint
    from gmmjax._driver import choose_best
    from gmmjax._streaming import _describe_options, restore_states, state_arrays

    checkpoint_every = v.check_int("checkpoint_every", 1 if checkpoint_every is None else checkpoint_every, 1)
    key, inputs, leaves = prepare(key, X, num_components, options, sample_weight, mesh, data_axis)
    K = int(num_components)
    key_data = np.asarray(jax.random.key_data(key))
    description = {
        "kind": "sharded fit_em",
        "num_components": K,
        "options": _describe_options(options.replace(chunk_size=leaves.chunk_size)),
        "key": key_data.tolist(),
        "data": _data_description(inputs),
    }
    max_iter = leaves.max_iter
    if resume:
        arrays, _ = load_checkpoint(checkpoint, description)
        states = _replicated(restore_states(arrays, leaves.covariance_type), inputs.mesh)
    else:
        states = run_data_parallel(_init_states_body, key, inputs, leaves, num_components=K)
    while True:
        host = _host(states)
        running = (host.n_iter < max_iter) & ~host.converged
        if not running.any():
            break
        stop_at = int(host.n_iter[running].min()) + checkpoint_every
        program, arguments = program_and_arguments(
            _segment_body, key, inputs, leaves, states, _replicated(np.int32(stop_at), inputs.mesh), num_components=K
        )
        states = program(*arguments)
        if jax.process_index() == 0:
            iteration = int(np.max(_host(states.n_iter)))
            meta = {"description": description, "fingerprint": fingerprint(description), "iteration": iteration}
            save_checkpoint(checkpoint, {**state_arrays(_host(states)), "key_data": key_data}, meta)
    return choose_best(_host(states))
