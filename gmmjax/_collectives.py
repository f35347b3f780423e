"""Where the rows live: on one device, or sharded over a mesh axis (inside ``jax.shard_map``).

Every reduction over the samples in the core (the E-step's statistics, the k-means sums, the
seeding draws, the data mean of ``"random"`` initialisation) goes through a :class:`RowAxis`.
The default, :data:`LOCAL`, is the identity: one device holds all rows and nothing changes.
Inside ``jax.shard_map`` over a data axis (:mod:`gmmjax._sharding`), ``RowAxis(name)`` turns
each such reduction into one collective over that axis: a sum becomes a ``psum`` of one flat
array (:meth:`RowAxis.sum`: a pytree's leaves are packed, so a pass costs one all-reduce), a
row picked by its global index is sent by its owner (a masked ``psum`` of one row), the first
row meeting a condition is a ``pmin`` of indices. So the maths is written once, for the rows a
device holds, and equals the one-device computation on the global array.

Global row ``i`` of a sharded array lives on shard ``i // n`` at local row ``i % n`` (``n`` the
rows per shard, the same on every shard: padding rows, of sample weight zero, make up the rest).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _upper_indices(num_features: int):
    return jnp.triu_indices(num_features)


def pack(tree) -> tuple[jax.Array, object]:
    """One flat array holding every leaf of ``tree`` (floating point, one dtype), and what
    :func:`unpack` needs to rebuild it. ``(…, D, D)`` leaves marked symmetric by
    :func:`symmetric` travel as their upper triangle (``D(D+1)/2`` numbers)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: isinstance(x, _Symmetric))
    parts, layout = [], []
    for leaf in leaves:
        if isinstance(leaf, _Symmetric):
            rows, cols = _upper_indices(leaf.value.shape[-1])
            part = leaf.value[..., rows, cols]
            layout.append(("sym", leaf.value.shape, part.shape))
        else:
            part = jnp.asarray(leaf)
            layout.append(("plain", part.shape, part.shape))
        parts.append(jnp.ravel(part))
    return jnp.concatenate(parts), (treedef, tuple(layout))


def unpack(flat: jax.Array, how) -> object:
    """The inverse of :func:`pack` (symmetric leaves rebuilt from their upper triangle)."""
    treedef, layout = how
    leaves, start = [], 0
    for kind, shape, part_shape in layout:
        size = 1
        for extent in part_shape:
            size *= extent
        part = flat[start : start + size].reshape(part_shape)
        start += size
        if kind == "sym":
            rows, cols = _upper_indices(shape[-1])
            full = jnp.zeros(shape, flat.dtype).at[..., rows, cols].set(part)
            lower = jnp.swapaxes(full, -1, -2)
            diagonal = jnp.eye(shape[-1], dtype=bool)
            part = jnp.where(diagonal, full, full + lower)
        leaves.append(part)
    return jax.tree_util.tree_unflatten(treedef, leaves)


@dataclasses.dataclass(frozen=True)
class _Symmetric:
    """Marks a ``(…, D, D)`` symmetric array for :func:`pack` (registered as a pytree node-less
    leaf wrapper; only used between :func:`symmetric` and :func:`pack`)."""

    value: jax.Array


def symmetric(value: jax.Array) -> _Symmetric:
    """``value`` (``(…, D, D)``, symmetric) marked so that :func:`pack` sends its upper triangle."""
    return _Symmetric(value)


@dataclasses.dataclass(frozen=True)
class RowAxis:
    """How a function's ``(n, …)`` row arrays relate to the global data (static: hashable).

    Attributes:
      name: ``None``: the rows are all the data (one device; every method is the plain
        computation). Otherwise the name of the mesh axis the rows are sharded over: the
        function runs inside ``jax.shard_map`` and holds ``n`` consecutive global rows.
      num_valid: with a ``name``, the number of global rows that are data when every
        padding row comes after them (the shards of a host array padded at its end), so that
        an unweighted draw of rows by position draws from those rows only; ``None`` when the
        sample weights carry the padding (any layout, e.g. ragged rows of several processes).
    """

    name: str | None = None
    num_valid: int | None = None

    @property
    def sharded(self) -> bool:
        return self.name is not None

    def sum(self, tree):
        """``tree`` summed over all shards: one all-reduce of one flat array (identity on one device)."""
        if self.name is None:
            return jax.tree_util.tree_map(
                lambda x: x.value if isinstance(x, _Symmetric) else x, tree, is_leaf=lambda x: isinstance(x, _Symmetric)
            )
        flat, how = pack(tree)
        return unpack(jax.lax.psum(flat, self.name), how)

    def num_shards(self) -> int:
        return 1 if self.name is None else jax.lax.axis_size(self.name)

    def global_rows(self, local_rows: int) -> int:
        """Rows of the global array (padding included) for ``local_rows`` per shard."""
        return local_rows * self.num_shards()

    def offset(self, local_rows: int) -> jax.Array:
        """``()`` int32 global index of this shard's first row."""
        if self.name is None:
            return jnp.zeros((), jnp.int32)
        return jax.lax.axis_index(self.name).astype(jnp.int32) * local_rows

    def take(self, X: jax.Array, index: jax.Array) -> jax.Array:
        """Global rows ``index`` (``()`` or ``(m,)`` int) of the row array ``X`` (``(n, …)``),
        replicated: each row sent by the shard holding it (a masked sum, one all-reduce)."""
        if self.name is None:
            return X[index]
        local = index - self.offset(X.shape[0])
        mine = (local >= 0) & (local < X.shape[0])
        rows = X[jnp.clip(local, 0, X.shape[0] - 1)]
        mask = mine.reshape(mine.shape + (1,) * (rows.ndim - mine.ndim))
        return jax.lax.psum(jnp.where(mask, rows, jnp.zeros_like(rows)), self.name)

    def first(self, mask: jax.Array) -> jax.Array:
        """``()`` global index of the first row where ``mask`` (``(n,)`` bool) holds (0 if none,
        as ``argmax``)."""
        if self.name is None:
            return jnp.argmax(mask)
        n = mask.shape[0]
        local = jnp.where(jnp.any(mask), self.offset(n) + jnp.argmax(mask).astype(jnp.int32), jnp.iinfo(jnp.int32).max)
        found = jax.lax.pmin(local, self.name)
        return jnp.where(found == jnp.iinfo(jnp.int32).max, 0, found)

    def last(self, mask: jax.Array) -> jax.Array:
        """``()`` global index of the last row where ``mask`` (``(n,)`` bool) holds (the last
        row if none, as ``n − 1 − argmax(mask[::-1])``)."""
        n = mask.shape[0]
        if self.name is None:
            return n - 1 - jnp.argmax(mask[::-1])
        local = jnp.where(jnp.any(mask), self.offset(n) + (n - 1 - jnp.argmax(mask[::-1])).astype(jnp.int32), -1)
        found = jax.lax.pmax(local, self.name)
        return jnp.where(found < 0, self.global_rows(n) - 1, found)

    def exclusive_prefix(self, value: jax.Array) -> jax.Array:
        """``()`` sum of ``value`` (a per-shard scalar) over the shards before this one (0 on one device)."""
        if self.name is None:
            return jnp.zeros_like(value)
        every = jax.lax.all_gather(value, self.name)
        index = jax.lax.axis_index(self.name)
        return jnp.sum(jnp.where(jnp.arange(every.shape[0]) < index, every, jnp.zeros_like(every)))


LOCAL = RowAxis()
