"""Passes over the data in fixed-size chunks: bounded memory, one compiled loop body.

Every pass over the samples (E-step, initialisation, scoring) goes through
:func:`sum_over_chunks` or :func:`map_over_chunks`. A chunk is at most ``chunk_size``
consecutive rows (the chunks of a pass made equal: :func:`balanced_chunk`) read with
``lax.dynamic_slice``, which clamps the last chunk to end at the last row; rows that an
earlier chunk already covered get weight zero (sums) or are written again
with the same values (maps). So the data is never padded or copied, every chunk has the
same static shape, and the peak memory of a pass is the data plus the temporaries of one
chunk (``O(chunk_size · K · D)``), whatever ``N`` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Bytes of one (K, chunk, D) temporary that the automatic chunk size never exceeds: the
# memory bound (measured in benchmarks/RESULTS.md: per-iteration time rises sharply when
# whole-data temporaries leave the cache).
CHUNK_TARGET_BYTES = 8 * 2**20

# Below that bound the chunk aims at this many bytes of (K, chunk, D), but never fewer than
# CHUNK_FLOOR_ROWS rows: the expanded E-step's (K, chunk) and (chunk, F + D) blocks then stay
# near the CPU's L2 at small K·D, while products keep a large row dimension. Measured per
# em_step (benchmarks/chunks.py, NOTES.md 2026-12-04): small K·D 1.4–2.9× faster than 8 MiB
# chunks (whole fits 1.6–2.1×); at 256 rows W3's full 32×32 pass was 15–35% slower. With
# batch·K·D ≥ 2048 (float32) the chunk is the same as under the 8 MiB bound alone.
CHUNK_CACHE_BYTES = 2**19
CHUNK_FLOOR_ROWS = 1024
# Off by default (NOTES.md, 2026-12-04, the lead's quiet check): batched full restarts on
# 15k x 8, K = 8 were slower with it (0.29-0.34 s against 0.22 s warm), and, before the chunk
# sums were compensated (sum_over_chunks), its extra chunks took a 4-device fit at N = 200k
# to 2.3e-5 relative of the one-device fit (not re-measured with the compensation). Opt-in:
# cache_sized=True.
CACHE_SIZED_BY_DEFAULT = False

# Chunks are a multiple of this many rows (SIMD- and GPU-friendly shapes).
_ROW_MULTIPLE = 8


def auto_chunk_size(
    num_samples: int, num_components: int, num_features: int, dtype, batch: int = 1, cache_sized: bool | None = None
) -> int:
    """Rows per chunk: one ``(batch, K, chunk, D)`` temporary of ≈ ``CHUNK_TARGET_BYTES`` (the
    memory bound); with ``cache_sized``, of ≈ ``CHUNK_CACHE_BYTES`` but at least
    ``CHUNK_FLOOR_ROWS`` rows, never above the memory bound.

    Args:
      num_samples: ``N``; the result never exceeds it.
      num_components: ``K``.
      num_features: ``D``.
      dtype: working dtype of the data.
      batch: how many fits share the pass (vmapped restarts or datasets).
      cache_sized: aim at ``CHUNK_CACHE_BYTES`` (faster at small ``K·D`` on the CPU, see
        ``CACHE_SIZED_BY_DEFAULT`` for why it is not the default); ``False``: the memory bound
        alone (passes whose per-row temporaries are wider than ``(K, D)`` size their chunk
        from this bound, as the missing-data E-step does). Default:
        ``CACHE_SIZED_BY_DEFAULT``.

    Returns:
      A positive int ``≤ N``, a multiple of 8 rows unless it is ``N``.
    """
    if cache_sized is None:
        cache_sized = CACHE_SIZED_BY_DEFAULT
    row_bytes = max(1, batch * num_components * num_features) * jnp.dtype(dtype).itemsize

    def rows_for(budget: int) -> int:
        return (budget // row_bytes) // _ROW_MULTIPLE * _ROW_MULTIPLE

    rows = max(_ROW_MULTIPLE, rows_for(CHUNK_TARGET_BYTES))
    if cache_sized:
        rows = min(rows, max(CHUNK_FLOOR_ROWS, rows_for(CHUNK_CACHE_BYTES)))
    return int(min(rows, num_samples))


def resolve_chunk_size(
    chunk_size,
    num_samples: int,
    num_components: int,
    num_features: int,
    dtype,
    batch: int = 1,
    cache_sized: bool | None = None,
) -> int:
    """``chunk_size`` clipped to ``N``, or the automatic size (:func:`auto_chunk_size`) when it is ``None``."""
    if chunk_size is None:
        return auto_chunk_size(num_samples, num_components, num_features, dtype, batch, cache_sized)
    return int(min(chunk_size, num_samples))


def balanced_chunk(chunk_size: int, num_samples: int) -> int:
    """Rows per chunk for a pass of ``N`` rows in chunks of at most ``chunk_size``: the same
    number of chunks, ``ceil(N / chunk_size)``, made as equal as the row multiple allows.

    The last chunk is clamped to end at the last row and its re-read rows are work thrown
    away: 32768-row chunks of 50 000 rows read 65 536 rows, 25 000-row ones 50 000. Never more
    rows per chunk than ``chunk_size`` (which bounds the memory).
    """
    chunk = min(chunk_size, num_samples)
    if chunk == num_samples:
        return chunk
    even = math.ceil(num_samples / math.ceil(num_samples / chunk))
    return min(chunk, math.ceil(even / _ROW_MULTIPLE) * _ROW_MULTIPLE)


def _chunk_rows(X, weight, start: jax.Array, chunk: int):
    """Rows ``[start, start + chunk)`` (clamped to the end) and their weights; rows before
    ``start`` (re-read because of the clamp) get weight zero."""
    num_samples = X.shape[0]
    X_chunk = jax.lax.dynamic_slice_in_dim(X, start, chunk, axis=0)
    clamped = jnp.minimum(start, num_samples - chunk)
    fresh = (clamped + jnp.arange(chunk)) >= start
    if weight is None:
        w_chunk = fresh.astype(X.dtype)
    else:
        w_chunk = jnp.where(fresh, jax.lax.dynamic_slice_in_dim(weight, start, chunk, axis=0), 0)
    return X_chunk, w_chunk, clamped


def sum_over_chunks(fn: Callable, X: jax.Array, weight: jax.Array | None, chunk_size: int):
    """``Σ_chunks fn(X_chunk, weight_chunk, row_offset)`` for a pytree-valued ``fn``.

    Args:
      fn: ``(X_chunk (c, D), weight_chunk (c,), row_offset ()) -> pytree``, linear in the
        weights (rows of weight zero must contribute nothing).
      X: ``(N, D)`` data.
      weight: ``(N,)`` sample weights, or ``None`` for ones.
      chunk_size: at most this many rows per chunk (see :func:`resolve_chunk_size`; the
        chunks are made equal, :func:`balanced_chunk`).

    Returns:
      The summed pytree. With one chunk this is exactly ``fn(X, weight, 0)``.
    """
    num_samples = X.shape[0]
    chunk = balanced_chunk(chunk_size, num_samples)
    if chunk == num_samples:
        w = jnp.ones(num_samples, X.dtype) if weight is None else weight
        return fn(X, w, jnp.zeros((), jnp.int32))
    num_chunks = math.ceil(num_samples / chunk)

    # Compensated (Kahan) accumulation of the chunk sums: with one running float32 total, the
    # rounding grows with the number of chunks, and the sum would depend on how the rows are
    # split (chunk size, shards of a sharded fit) well beyond one rounding. A few additions
    # on K·D² numbers per chunk.
    def add_chunk(i, carry):
        total, compensation = carry
        X_chunk, w_chunk, offset = _chunk_rows(X, weight, i * chunk, chunk)
        corrected = jax.tree_util.tree_map(jnp.subtract, fn(X_chunk, w_chunk, offset), compensation)
        new_total = jax.tree_util.tree_map(jnp.add, total, corrected)
        compensation = jax.tree_util.tree_map(lambda t, old, y: (t - old) - y, new_total, total, corrected)
        return new_total, compensation

    shapes = jax.eval_shape(fn, X[:chunk], jnp.ones(chunk, X.dtype), jnp.zeros((), jnp.int32))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.fori_loop(0, num_chunks, add_chunk, (zeros, zeros))
    return total


def map_over_chunks(fn: Callable, rows, chunk_size: int):
    """``fn`` applied row-block-wise: ``fn(rows)`` computed ``chunk_size`` rows at a time.

    Args:
      fn: ``(rows_chunk) -> pytree of arrays (c, ...)``, row-wise (row ``i`` of every output
        depends on row ``i`` of the inputs only).
      rows: an ``(N, ...)`` array, or a pytree of them with the same ``N`` (e.g. the data
        and its weights: passed together, never concatenated into a copy).
      chunk_size: at most this many rows per chunk (made equal, :func:`balanced_chunk`).

    Returns:
      The outputs ``(N, ...)``, equal to ``fn(rows)``.
    """
    num_samples = jax.tree_util.tree_leaves(rows)[0].shape[0]
    chunk = balanced_chunk(chunk_size, num_samples)
    if chunk == num_samples:
        return fn(rows)
    num_chunks = math.ceil(num_samples / chunk)
    out_shapes = jax.eval_shape(fn, jax.tree_util.tree_map(lambda leaf: leaf[:chunk], rows))
    out = jax.tree_util.tree_map(lambda s: jnp.zeros((num_samples,) + s.shape[1:], s.dtype), out_shapes)

    def write_chunk(i, out):
        start = jnp.minimum(i * chunk, num_samples - chunk)
        chunk_out = fn(
            jax.tree_util.tree_map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, start, chunk, axis=0), rows)
        )
        return jax.tree_util.tree_map(
            lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, start, axis=0), out, chunk_out
        )

    return jax.lax.fori_loop(0, num_chunks, write_chunk, out)
