"""Exact out-of-core EM: the in-memory iterations, with the data streamed from disk or an iterator.

Each EM iteration is one pass over the data in fixed-size batches of ``batch_size`` rows. A
batch is read on the host, checked, sent to the device (``jax.device_put``) and added into
the pass's :class:`~gmmjax.SufficientStats` by the same jitted :func:`~gmmjax.e_step` that
``fit_em`` runs (about the current means: the same shift for every batch of a pass, so the
statistics of the batches add up exactly). After the pass, one M-step and the convergence
test of :func:`gmmjax._em.em_iteration` advance each restart's
:class:`~gmmjax.FitState`; restarts that have stopped keep their state, as in ``fit_em``. So
from the same starting parameters the iterations are those of ``fit_em`` to floating-point
summation order.

- **One compiled program.** Every batch has the same shape: the last one is padded with rows
  of weight zero (they contribute nothing, see :func:`gmmjax._stats.e_step`).
- **Double buffering, bounded.** JAX dispatches asynchronously: while the device adds batch
  ``i``, the host reads batch ``i + 1`` and starts its transfer. At most ``max_in_flight``
  batches are dispatched and unfinished; before dispatching another the host waits for the
  oldest (without the bound, asynchronous dispatch would read the whole file ahead).
- **Memory** is ``max_in_flight + 1`` batch buffers (host and device) plus ``O(R·K·D²)``
  statistics (``R`` restarts) plus one batch's E-step temporaries, whatever ``N`` is.
- **Initialisation** runs the standard ``init_params`` (k-means, k-means++, ...; see
  :func:`gmmjax._init.initialize`) on a uniform reservoir sample of
  ``max(2**14, 64·K)`` rows drawn in one pass (``INIT_SAMPLE_SIZE``, the size of
  ``fit_em``'s own seeding sample; rows keep their sample weights and their order). Data
  with at most that many rows is thus initialised exactly as ``fit_em`` initialises it.
  With all of ``weights_init``, ``means_init`` and ``precisions_init`` given, that pass is
  skipped.

Sources (:func:`as_source`): a ``.npy`` file (read by positioned reads of the rows, never
``np.load``: memory-mapping the whole file would make every page read count in the
process's resident memory, and a copy or a transfer of the whole array is exactly what
streaming avoids), a folder of ``.npy`` shards (sorted by name) or a list of them, a
Parquet file, folder or list of them (:class:`ParquetSource`: record batches read with
pyarrow; ``columns=`` there), a 2-D Zarr array (:class:`ZarrSource`: a path, a store or a
``zarr.Array``, read in chunk-aligned row blocks), a NumPy array, or any re-iterable of
batches: a callable returning a fresh iterator, or an object
whose ``iter()`` starts again (a list of arrays). Each item is an ``(n, D)`` array or an
``(X, sample_weight)`` pair. Every pass must yield the same rows: a pass of another length
is an error.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import importlib
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax import _validation as v
from gmmjax._checkpoint import array_digest, fingerprint, load_checkpoint, save_checkpoint
from gmmjax._chunks import resolve_chunk_size
from gmmjax._driver import (
    FitResult,
    FitState,
    choose_best,
    initial_params,
    initial_state,
    restart_keys,
    traced_leaves,
)
from gmmjax._em import EMOperands, em_iteration
from gmmjax._init import seeding_sample_size
from gmmjax._options import FitOptions, check_fit_options, fit_options
from gmmjax._params import GMMParams
from gmmjax._prior import require_no_prior
from gmmjax._progress import check_verbose, streaming_reporter
from gmmjax._sharding import agree_across_processes, gather_values, process_digests
from gmmjax._stats import SufficientStats, e_step, m_step_with_diagnostics

# Bytes of one batch of data that the automatic batch size aims at.
BATCH_TARGET_BYTES = 32 * 2**20
DEFAULT_MAX_IN_FLIGHT = 2
_ROW_MULTIPLE = 8


class StreamError(ValueError):
    """The streamed data is malformed; the message names the file or batch."""


# -- sources ---------------------------------------------------------------------------------
class _Block(NamedTuple):
    X: np.ndarray  # (n, D), the source's dtype
    weight: np.ndarray | None  # (n,) or None
    where: str  # for messages: "shard.npy rows 0..1000" or "batch 3 of pass 2"


def _check_numeric_dtype(dtype: np.dtype, where: str) -> None:
    """Refuses anything but real numbers (and booleans), naming ``where``."""
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise StreamError(f"{where} holds dtype {dtype}, not numbers.")
    if np.issubdtype(dtype, np.complexfloating):
        raise StreamError(f"{where} holds complex numbers (dtype {dtype}): data must be real-valued.")


class NpyFile:
    """One ``.npy`` file (1-D or 2-D, C order), read row range by row range.

    Rows are read with positioned reads into fresh arrays (never ``np.load`` of the whole
    file, never a memory map that keeps the pages resident); the header is checked against
    the file's size (a truncated file is refused before any fit starts).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as file:
                version = np.lib.format.read_magic(file)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
                self.offset = file.tell()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no such file.") from None
        except (ValueError, OSError) as exc:
            raise StreamError(f"{self.path} is not a readable .npy file: {exc}") from None
        _check_numeric_dtype(dtype, self.path)
        if len(shape) not in (1, 2):
            raise StreamError(f"{self.path} holds an array of shape {shape}: expected (n_samples, n_features).")
        if fortran and len(shape) == 2 and shape[1] > 1:
            raise StreamError(
                f"{self.path} is stored in Fortran (column-major) order, which cannot be read row block by "
                "row block: save it in C order (np.save(path, np.ascontiguousarray(X)))."
            )
        self.shape, self.dtype = tuple(int(s) for s in shape), dtype
        self.num_rows = self.shape[0]
        self.row_bytes = dtype.itemsize * (self.shape[1] if len(self.shape) == 2 else 1)
        expected = self.offset + self.num_rows * self.row_bytes
        size = os.path.getsize(self.path)
        if size < expected:
            raise StreamError(
                f"{self.path} is truncated: its header says shape {self.shape} of {dtype} "
                f"({expected} bytes with the header), but the file has {size} bytes. Re-create the file."
            )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new array (``(n, D)`` or ``(n,)``)."""
        rows = max(0, stop - start)
        out = np.empty((rows,) + self.shape[1:], self.dtype)
        with open(self.path, "rb") as file:
            file.seek(self.offset + start * self.row_bytes)
            got = file.readinto(out.data.cast("B")) if out.size else 0
        if got != rows * self.row_bytes:
            raise StreamError(f"{self.path}: rows {start}..{stop} could not be read (file truncated while fitting?).")
        return out

    def read_blocks(self, start: int, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Rows from ``start`` on as ``(row, stop, X)`` blocks of ``block_rows`` rows."""
        for row in range(start, self.num_rows, block_rows):
            stop = min(self.num_rows, row + block_rows)
            yield row, stop, self.read(row, stop)

    def describe(self) -> dict:
        return {"path": os.path.abspath(self.path), "shape": list(self.shape), "dtype": self.dtype.str}


class _Source:
    """What a streamed fit reads: blocks of rows, pass after pass."""

    num_features: int
    dtype: np.dtype
    num_rows: int | None  # None until a pass has counted them (iterables)
    random_access = False

    def blocks(self, start_row: int = 0) -> Iterator[_Block]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class _PartsSource(_Source):
    """Rows read part by part, in order: ``.npy`` shards, Parquet files, one Zarr array.

    Each part has ``path``, ``num_rows`` and ``read_blocks(start, block_rows)``, an iterator of
    ``(row, stop, X)`` row blocks from row ``start`` of that part on (at most about
    ``block_rows`` rows each, so memory is bounded by a block). Optional sample weights are an
    ``(N,)`` array or a 1-D ``.npy`` path, read block by block alongside the rows.
    """

    random_access = True

    def _set_parts(self, parts: list, sample_weight, block_rows: int, what: str) -> None:
        self.parts = parts
        self.num_rows = sum(part.num_rows for part in parts)
        if self.num_rows == 0:
            raise StreamError(f"{what} holds no rows: there is no data to fit.")
        self.starts = np.cumsum([0] + [part.num_rows for part in parts])
        self.block_rows = block_rows
        self.weight: Any = None
        if sample_weight is not None:
            if isinstance(sample_weight, (str, os.PathLike)):
                self.weight = NpyFile(sample_weight)
                shape = self.weight.shape
            else:
                self.weight = np.asarray(sample_weight)
                shape = self.weight.shape
            if tuple(shape) != (self.num_rows,):
                raise StreamError(
                    f"sample_weight must have shape ({self.num_rows},) (one per row), got {tuple(shape)}."
                )

    def _weights(self, start: int, stop: int):
        if self.weight is None:
            return None
        if isinstance(self.weight, NpyFile):
            return self.weight.read(start, stop)
        return self.weight[start:stop]

    def _describe_weight(self):
        return self.weight.describe() if isinstance(self.weight, NpyFile) else self.weight is not None

    def _head(self) -> str:
        """A digest of the first rows (up to 1024), for a checkpoint's fingerprint."""
        for _, _, X in self.parts[0].read_blocks(0, 1024):
            return array_digest(X[:1024])
        return array_digest(np.empty((0, self.num_features), self.dtype))

    def blocks(self, start_row: int = 0) -> Iterator[_Block]:
        for part, first_row in zip(self.parts, self.starts[:-1].tolist()):
            if first_row + part.num_rows <= start_row:
                continue
            for row, stop, X in part.read_blocks(max(0, start_row - first_row), self.block_rows):
                yield _Block(X, self._weights(first_row + row, first_row + stop), f"{part.path} rows {row}..{stop}")


class ShardsSource(_PartsSource):
    """``.npy`` shards read in order; optional sample weights in a 1-D ``.npy`` or an array."""

    def __init__(self, paths, sample_weight=None, block_rows: int = 2**16):
        self.files = [NpyFile(p) for p in paths]
        if not self.files:
            raise StreamError("no .npy shards to read.")
        first = self.files[0]
        for f in self.files:
            if len(f.shape) != 2:
                raise StreamError(f"{f.path} holds an array of shape {f.shape}: expected (n_samples, n_features).")
            if f.shape[1] != first.shape[1]:
                raise StreamError(
                    f"{f.path} has {f.shape[1]} features but {first.path} has {first.shape[1]}: "
                    "every shard must have the same number of columns."
                )
            if f.dtype != first.dtype:
                raise StreamError(
                    f"{f.path} holds {f.dtype} but {first.path} holds {first.dtype}: every shard must have "
                    "the same dtype (convert the odd one out)."
                )
        self.num_features, self.dtype = first.shape[1], first.dtype
        what = first.path if len(self.files) == 1 else f"the {len(self.files)} shards {first.path}, ..."
        self._set_parts(self.files, sample_weight, block_rows, what)

    def describe(self) -> dict:
        return {
            "shards": [f.describe() for f in self.files],
            "sample_weight": self._describe_weight(),
            "head": self._head(),
        }


class ArraySource(_Source):
    """An in-memory ``(N, D)`` array streamed in blocks (for tests and small data)."""

    random_access = True

    def __init__(self, X, sample_weight=None, block_rows: int = 2**16):
        X = np.asarray(X)
        if X.ndim != 2:
            raise StreamError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}.")
        self.X, self.num_rows, self.num_features, self.dtype = X, X.shape[0], X.shape[1], X.dtype
        self.weight = None if sample_weight is None else np.asarray(sample_weight)
        if self.weight is not None and self.weight.shape != (self.num_rows,):
            raise StreamError(f"sample_weight must have shape ({self.num_rows},), got {self.weight.shape}.")
        self.block_rows = block_rows

    def blocks(self, start_row: int = 0) -> Iterator[_Block]:
        num_rows = self.X.shape[0]
        for row in range(start_row, num_rows, self.block_rows):
            stop = min(num_rows, row + self.block_rows)
            weight = None if self.weight is None else self.weight[row:stop]
            yield _Block(self.X[row:stop], weight, f"rows {row}..{stop} of the array")

    def describe(self) -> dict:
        return {
            "array": list(self.X.shape),
            "dtype": self.X.dtype.str,
            "sample_weight": self.weight is not None,
            "head": array_digest(self.X[:1024]),
        }


class IterableSource(_Source):
    """Batches from a callable returning an iterator, or a re-iterable object."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self.num_rows = None
        self.num_batches: int | None = None
        self._pass = 0
        first = self._first_block()
        self.num_features, self.dtype = first.X.shape[1], first.X.dtype
        self.has_weights = first.weight is not None
        self.head = array_digest(first.X, first.weight)

    def _items(self) -> Iterator[_Block]:
        self._pass += 1
        for i, item in enumerate(self.factory()):
            where = f"batch {i} (pass {self._pass}) of the iterable"
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise StreamError(f"{where} is a tuple of {len(item)} items: yield X or (X, sample_weight).")
                X, weight = np.asarray(item[0]), np.asarray(item[1])
            else:
                X, weight = np.asarray(item), None
            if X.ndim != 2:
                raise StreamError(f"{where} has shape {X.shape}: each batch must be 2-D (n_samples, n_features).")
            if X.dtype.hasobject or not (np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.bool_)):
                raise StreamError(f"{where} has dtype {X.dtype}: batches must hold numbers.")
            yield _Block(X, weight, where)

    def _first_block(self) -> _Block:
        for block in self._items():
            return block
        raise StreamError("the iterable yielded no batches: there is no data to fit.")

    def blocks(self, start_row: int = 0) -> Iterator[_Block]:
        rows, count = 0, 0
        for block in self._items():
            if block.X.shape[1] != self.num_features:
                raise StreamError(
                    f"{block.where} has {block.X.shape[1]} features, but the first batch has "
                    f"{self.num_features}: every batch must have the same number of columns."
                )
            if (block.weight is not None) != self.has_weights:
                raise StreamError(f"{block.where}: either every batch carries sample weights or none does.")
            n = block.X.shape[0]
            count += 1
            if self.num_rows is not None and rows + n > self.num_rows:
                raise StreamError(
                    f"{block.where}: this pass yields more than the {self.num_rows} rows of the first pass; "
                    "the iterable must yield the same data on every pass."
                )
            if rows + n > start_row:
                skip = max(0, start_row - rows)
                if skip:
                    block = _Block(block.X[skip:], None if block.weight is None else block.weight[skip:], block.where)
                yield block
            rows += n
        if rows == 0:
            raise StreamError(
                f"pass {self._pass} of the iterable yielded no batches: it must yield the same data on every pass."
            )
        if self.num_rows is None:
            self.num_rows, self.num_batches = rows, count
        elif rows != self.num_rows:
            raise StreamError(
                f"pass {self._pass} of the iterable yielded {rows} rows in {count} batches, but the first pass "
                f"yielded {self.num_rows} rows in {self.num_batches}: it must yield the same data on every pass."
            )

    def describe(self) -> dict:
        return {
            "iterable": True,
            "num_features": self.num_features,
            "sample_weight": self.has_weights,
            "head": self.head,  # the first batch's digest
        }


def _files_in(folder, extension: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.fspath(folder), "*" + extension)))


PARQUET_EXTENSIONS = (".parquet", ".pq")


def _parquet_files(folder) -> list[str]:
    return sorted(p for extension in PARQUET_EXTENSIONS for p in _files_in(folder, extension))


def _path_source(path: str, sample_weight) -> _Source:
    """The source of one path: a ``.npy`` file, a ``.parquet`` file, a Zarr array, or a folder
    of ``.npy`` or of ``.parquet`` files."""
    if _is_zarr_path(path):
        return ZarrSource(path, sample_weight)
    if os.path.isdir(path):
        npy = _files_in(path, ".npy")
        parquet = _parquet_files(path)
        if npy and parquet:
            raise StreamError(f"{path} holds both .npy and Parquet files: put the shards of one data set in a folder.")
        if parquet:
            return ParquetSource(parquet, sample_weight=sample_weight)
        if not npy:
            raise StreamError(f"{path} holds no .npy or .parquet files (and is not a Zarr array).")
        return ShardsSource(npy, sample_weight)
    if is_parquet_path(path):
        return ParquetSource(path, sample_weight=sample_weight)
    if not path.endswith(".npy"):
        raise StreamError(
            f"{path}: streamed fits read .npy files, Parquet files (.parquet), Zarr arrays (.zarr) or a folder "
            "of .npy or .parquet files."
        )
    return ShardsSource([path], sample_weight)


def is_parquet_path(path) -> bool:
    """A ``.parquet`` (``.pq``) file, or a folder holding such files."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return bool(_parquet_files(path))
    return path.lower().endswith(PARQUET_EXTENSIONS)


def stream_only_path(path) -> bool:
    """Whether ``path`` is data that only a streamed fit reads: a folder (of ``.npy`` or
    Parquet shards), a Parquet file or a Zarr array (the command line streams them always)."""
    path = os.fspath(path)
    return os.path.isdir(path) or _is_zarr_path(path) or is_parquet_path(path)


def streamable_path(path) -> bool:
    """Whether a streamed fit can read ``path``: a ``.npy`` file or a :func:`stream_only_path`."""
    return os.fspath(path).lower().endswith(".npy") or stream_only_path(path)


def is_streamable(data) -> bool:
    """Whether ``data`` is something only a streamed fit reads: a path, a list of paths, a
    source, a Zarr array, a callable or a re-iterable that is not array-like."""
    if isinstance(data, (str, os.PathLike, _Source)) or _is_zarr_object(data):
        return True
    if isinstance(data, (np.ndarray, jax.Array)) or hasattr(data, "__array__"):
        return False
    if callable(data):
        return True
    if isinstance(data, (list, tuple)):
        return bool(data) and all(isinstance(item, (str, os.PathLike)) for item in data)
    return hasattr(data, "__iter__") and not hasattr(data, "shape")


def as_source(data, sample_weight=None) -> _Source:
    """The :class:`_Source` for ``data`` (see the module docstring for what is accepted)."""
    if isinstance(data, _Source):
        if sample_weight is not None:
            raise ValueError("pass the sample weights to the source itself (its sample_weight=), not to the fit.")
        return data
    if isinstance(data, (str, os.PathLike)):
        return _path_source(os.fspath(data), sample_weight)
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, (str, os.PathLike)) for p in data):
        paths = [os.fspath(p) for p in data]
        parquet = [is_parquet_path(p) for p in paths]
        if any(parquet) and not all(parquet):
            raise StreamError("a list of paths must be all .npy files or all Parquet files, not a mix.")
        return ParquetSource(paths, sample_weight=sample_weight) if any(parquet) else ShardsSource(paths, sample_weight)
    if _is_zarr_object(data):
        return ZarrSource(data, sample_weight)
    if isinstance(data, (np.ndarray, jax.Array)):
        return ArraySource(np.asarray(data), sample_weight)
    if sample_weight is not None:
        raise ValueError(
            "with an iterable of batches, pass the sample weights in the batches: yield (X, sample_weight)."
        )
    if callable(data):
        return IterableSource(data)
    if hasattr(data, "__iter__"):
        if iter(data) is data:
            raise ValueError(
                "a streamed fit reads the data once per EM iteration, but this iterator can be read only "
                "once: pass a callable that returns a new iterator (e.g. lambda: batches(path)) or a list."
            )
        return IterableSource(lambda: iter(data))
    raise ValueError(
        f"cannot stream {type(data).__name__}: pass a .npy path, a folder or list of them, or an iterable."
    )


# -- Zarr and Parquet (optional extras) ---------------------------------------------------------
def _optional_import(module: str, extra: str, what: str):
    """``module`` imported, or an ImportError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the {module.partition('.')[0]} package ({exc}): pip install 'gmmjax[{extra}]'"
        ) from None


def _is_zarr_object(data) -> bool:
    """A ``zarr.Array`` or a zarr store object (checked without importing zarr)."""
    return type(data).__module__.partition(".")[0] == "zarr"


def _is_zarr_path(path: str) -> bool:
    """A Zarr array or group on disk: a ``.zarr`` path or a folder with Zarr metadata (v3 or v2)."""
    if path.rstrip("/\\").endswith(".zarr"):
        return True
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("zarr.json", ".zarray", ".zgroup")
    )


class ZarrSource(_PartsSource):
    """A 2-D Zarr array (a path, a zarr store, or an opened ``zarr.Array``), read in row blocks
    aligned with its chunks (or shards): each read decompresses whole chunks once.

    The array's chunk files are counted when it is opened: a chunk never written reads as
    the array's fill value in Zarr, which for a partial copy would be silent wrong data, so
    an array with unwritten chunks is refused. Needs the ``zarr`` package
    (``pip install 'gmmjax[zarr]'``).

    Args:
      array: a path (``.zarr`` folder), a zarr store, or a ``zarr.Array`` ``(N, D)`` of
        real numbers (any numeric dtype; computed in the working dtype, see ``fit_em``).
      sample_weight: optional ``(N,)`` weights: an array or a 1-D ``.npy`` path.
      block_rows: rows per read, rounded to whole chunks (at least one chunk).
    """

    def __init__(self, array, sample_weight=None, block_rows: int = 2**16):
        zarr = _optional_import("zarr", "zarr", "reading a Zarr array")
        self.path = os.fspath(array) if isinstance(array, (str, os.PathLike)) else None
        if self.path is not None and "://" not in self.path and not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such Zarr array.")
        if not isinstance(array, zarr.Array):
            try:
                array = zarr.open_array(array, mode="r")
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.path or array}: no such Zarr array.") from None
            except Exception as exc:  # zarr's errors for groups, bad metadata, other formats
                arrays = self._group_arrays(zarr) if self.path is not None and os.path.isdir(self.path) else []
                if arrays:
                    raise StreamError(
                        f"{self.path} is a Zarr group, not an array: pass one of its arrays, e.g. "
                        f"{os.path.join(str(self.path), arrays[0])}."
                    ) from None
                raise StreamError(f"{self.path or array} is not a readable Zarr array: {exc}") from None
        self.array = array
        if self.path is None:  # the store's folder (zarr 3: root, zarr 2: path), else its description
            store = getattr(array, "store", "")
            root = getattr(store, "root", None) or getattr(store, "path", None) or store
            where = [str(root).rstrip("/"), str(getattr(array, "path", "")).strip("/")]
            self.path = "zarr array " + "/".join(part for part in where if part)
        shape, dtype = tuple(int(s) for s in array.shape), np.dtype(array.dtype)
        _check_numeric_dtype(dtype, self.path)
        if len(shape) != 2:
            raise StreamError(f"{self.path} holds an array of shape {shape}: expected (n_samples, n_features).")
        written, chunks = int(array.nchunks_initialized), int(array.nchunks)
        fill = np.asarray(array.fill_value).item()
        if written < chunks:
            raise StreamError(
                f"{self.path} has {chunks - written} of its {chunks} chunks missing (a partial copy?): Zarr would "
                f"read them as the fill value {fill!r}. Copy the array again (or, if the missing chunks "
                "are meant to hold the fill value, rewrite it with write_empty_chunks=True)."
            )
        self.shape, self.num_rows, self.num_features, self.dtype = shape, shape[0], shape[1], dtype
        self.chunk_rows = max(1, int((getattr(array, "shards", None) or array.chunks)[0]))
        self._set_parts([self], sample_weight, block_rows, self.path)  # one part: the array itself

    def _group_arrays(self, zarr) -> list[str]:
        try:
            return sorted(name for name, _ in zarr.open_group(self.path, mode="r").arrays())
        except Exception:  # not a group either: the caller reports the original error
            return []

    def read_blocks(self, start: int, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Row blocks from ``start`` on, each ending on a chunk boundary (or the last row)."""
        step = max(1, block_rows // self.chunk_rows) * self.chunk_rows
        row, num_rows = start, self.shape[0]
        while row < num_rows:
            stop = min(num_rows, (row // step + 1) * step)
            try:
                X = np.asarray(self.array[row:stop])
            except Exception as exc:  # a chunk that does not decompress, a vanished file, ...
                raise StreamError(
                    f"{self.path}: rows {row}..{stop} could not be read (corrupt chunk?): {exc}"
                ) from None
            yield row, stop, X
            row = stop

    def describe(self) -> dict:
        return {
            "zarr": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunk_rows": self.chunk_rows,
            "sample_weight": self._describe_weight(),
            "head": self._head(),
        }


def _parquet_numeric(pa, arrow_type) -> bool:
    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type))


class ParquetShard:
    """One Parquet file: its schema and row groups from the footer (read when opened: a
    truncated file, which has no footer, is refused before any fit starts), rows read as
    record batches of the chosen ``columns`` (names) with pyarrow."""

    def __init__(self, path, columns: list[str] | None):
        pq = _optional_import("pyarrow.parquet", "parquet", "reading Parquet files")
        self.path = os.fspath(path)
        try:
            with pq.ParquetFile(self.path) as file:
                self.schema = file.schema_arrow
                metadata = file.metadata
                self.group_rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no such file.") from None
        except Exception as exc:  # pyarrow.ArrowInvalid for a truncated or foreign file, OSError
            raise StreamError(f"{self.path} is not a readable Parquet file (truncated or corrupt?): {exc}") from None
        self.num_rows = int(sum(self.group_rows))
        names = self.schema.names
        self.columns = list(names) if columns is None else columns
        missing = [name for name in self.columns if name not in names]
        if missing:
            raise StreamError(
                f"{self.path} has no column {', '.join(map(repr, missing))}: its columns are "
                f"{', '.join(map(repr, names))}."
            )

    def types(self) -> list:
        return [self.schema.field(name).type for name in self.columns]

    def read_blocks(self, start: int, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Record batches of at most ``block_rows`` rows from row ``start`` on (whole row groups
        before it are not read), as ``(n, D)`` arrays; nulls become NaN."""
        pq = _optional_import("pyarrow.parquet", "parquet", "reading Parquet files")
        ends = np.cumsum(self.group_rows)
        first = int(np.searchsorted(ends, start, side="right"))
        row = int(ends[first - 1]) if first else 0
        if first >= len(self.group_rows):
            return
        try:
            with pq.ParquetFile(self.path, pre_buffer=True) as file:
                # One row group per call: with several, pyarrow's pre-buffering reads all of
                # them ahead (measured: the whole file); with one, a row group's column chunks
                # in coalesced reads, decoded batch by batch.
                for group in range(first, len(self.group_rows)):
                    for batch in file.iter_batches(batch_size=block_rows, row_groups=[group], columns=self.columns):
                        stop = row + batch.num_rows
                        if stop > start:
                            skip = max(0, start - row)
                            yield row + skip, stop, _record_batch_array(batch)[skip:]
                        row = stop
        except StreamError:
            raise
        except Exception as exc:  # a corrupt page, a file changed or truncated since it was opened
            raise StreamError(f"{self.path}: rows from {row} on could not be read (corrupt file?): {exc}") from None
        if row != self.num_rows:
            raise StreamError(f"{self.path}: read {row} rows, but its footer says {self.num_rows} (file changed?).")

    def describe(self) -> dict:
        return {"path": os.path.abspath(self.path), "num_rows": self.num_rows, "row_groups": len(self.group_rows)}


def _record_batch_array(batch) -> np.ndarray:
    """A pyarrow record batch as an ``(n, D)`` C-order array, column by column; a column with
    nulls becomes floating point with NaN there (the NaN rules of the fit then apply)."""
    columns = []
    for column in batch.columns:
        if column.null_count:
            float_type = "float32" if str(column.type) in ("float", "halffloat") else "float64"
            column = column.cast(float_type)  # nulls read as NaN
        columns.append(column.to_numpy(zero_copy_only=False))
    dtype = np.result_type(*(c.dtype for c in columns))
    out = np.empty((batch.num_rows, len(columns)), dtype)
    for j, values in enumerate(columns):
        out[:, j] = values
    return out


def _parquet_paths(data) -> list[str]:
    """The files of Parquet ``data``: a ``.parquet`` file, a folder of them (sorted), or a list."""
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        paths = _parquet_files(data)
    elif isinstance(data, (str, os.PathLike)):
        paths = [os.fspath(data)]
    else:
        paths = [os.fspath(p) for p in data]
    if not paths:
        raise StreamError("no Parquet files to read.")
    return paths


def parquet_column_names(data) -> list[str]:
    """The column names of Parquet ``data`` (as :class:`ParquetSource` takes it), from the first
    file's footer: what ``columns=`` chooses from (the command line's ``--columns`` indices)."""
    return list(ParquetShard(_parquet_paths(data)[0], None).schema.names)


class ParquetSource(_PartsSource):
    """Parquet files (a ``.parquet`` path, a folder of them sorted by name, or a list), read
    with pyarrow in record batches of ``block_rows`` rows: memory is one row group's column
    chunks plus a block, whatever the number of rows. Needs ``pyarrow``
    (``pip install 'gmmjax[parquet]'``).

    Args:
      data: a ``.parquet`` file, a folder of ``.parquet`` files, or a list of paths.
      columns: the feature columns, names in order (default: every column, which must then
        all be numeric). Integer, floating-point and boolean columns are numeric; others
        (strings, timestamps, ...) are refused with their names. Nulls read as NaN, which a
        fit refuses as it refuses NaN in any data (naming the file and rows).
      sample_weight: optional ``(N,)`` weights: an array or a 1-D ``.npy`` path.
      block_rows: rows per record batch.
    """

    def __init__(self, data, columns=None, sample_weight=None, block_rows: int = 2**16):
        paths = _parquet_paths(data)
        if columns is not None:
            if not isinstance(columns, (list, tuple)) or not columns or not all(isinstance(c, str) for c in columns):
                raise ValueError(f"columns must be a non-empty list of column names, got {columns!r}.")
            if len(set(columns)) != len(columns):
                raise ValueError(f"columns names a column more than once: {list(columns)!r}.")
            columns = list(columns)
        self.files = [ParquetShard(path, columns) for path in paths]
        first = self.files[0]
        pa = _optional_import("pyarrow", "parquet", "reading Parquet files")
        types = first.types()
        other = [f"{name!r} ({kind})" for name, kind in zip(first.columns, types) if not _parquet_numeric(pa, kind)]
        if other:
            numeric = [name for name, kind in zip(first.columns, types) if _parquet_numeric(pa, kind)]
            raise StreamError(
                f"{first.path}: column{'s' * (len(other) > 1)} {', '.join(other)} "
                f"{'are' if len(other) > 1 else 'is'} not numeric: pass columns= with the feature columns"
                + (f", e.g. columns={numeric!r}." if numeric else ".")
            )
        for f in self.files[1:]:
            if f.columns != first.columns:
                raise StreamError(
                    f"{f.path} has {len(f.columns)} columns {f.columns} but {first.path} has {len(first.columns)} "
                    f"{first.columns}: every file must have the same columns (or pass columns=)."
                )
            for name, mine, theirs in zip(f.columns, f.types(), types):
                if mine != theirs:
                    raise StreamError(
                        f"{f.path}: column {name!r} holds {mine} but {first.path} holds {theirs}: every file "
                        "must have the same column types (convert the odd one out)."
                    )
        self.columns = first.columns
        self.num_features = len(self.columns)
        self.dtype = np.result_type(*(np.dtype(kind.to_pandas_dtype()) for kind in types))
        what = first.path if len(self.files) == 1 else f"the {len(self.files)} Parquet files {first.path}, ..."
        self._set_parts(self.files, sample_weight, block_rows, what)

    def describe(self) -> dict:
        return {
            "parquet": [f.describe() for f in self.files],
            "columns": self.columns,
            "dtype": self.dtype.str,
            "sample_weight": self._describe_weight(),
            "head": self._head(),
        }


# -- fixed-size batches ------------------------------------------------------------------------
class _Batch(NamedTuple):
    X: np.ndarray  # (B, D) working dtype; padding rows are zeros
    weight: np.ndarray  # (B,) working dtype; zero on padding rows
    rows: int  # real rows
    weight_sum: float  # Σ weight (float64)
    where: str


def _checked_block(block: _Block, dtype, limit: float):
    X = np.asarray(block.X)
    if X.size:
        largest = float(np.max(np.abs(X)))
        if not largest < math.inf:
            raise StreamError(f"{block.where} contains NaN or infinity: remove or impute those entries before fitting.")
        if largest > limit:
            raise StreamError(
                f"{block.where} has values up to {largest:.3g} in magnitude: squared distances overflow "
                f"{np.dtype(dtype).name}. Rescale the data or compute in float64."
            )
    weight = block.weight
    if weight is not None:
        weight = np.asarray(weight, np.float64)
        if weight.shape != (X.shape[0],):
            raise StreamError(f"{block.where}: sample weights of shape {weight.shape} for {X.shape[0]} rows.")
        if not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise StreamError(f"{block.where}: sample weights must be finite and non-negative.")
    return X, weight


def fixed_batches(source: _Source, batch_size: int, dtype, start_batch: int = 0) -> Iterator[_Batch]:
    """The source's rows in batches of exactly ``batch_size`` rows (the last padded with zero
    weight), from batch ``start_batch`` on; each block checked (NaN, magnitude, weights)."""
    limit = v.largest_safe_magnitude(dtype, source.num_features)
    D = source.num_features
    X = np.zeros((batch_size, D), dtype)
    w = np.zeros(batch_size, dtype)
    filled, weight_sum, first_where = 0, 0.0, None
    for block in source.blocks(start_batch * batch_size):
        Xb, wb = _checked_block(block, dtype, limit)
        row = 0
        while row < Xb.shape[0]:
            take = min(batch_size - filled, Xb.shape[0] - row)
            X[filled : filled + take] = Xb[row : row + take]
            part = np.ones(take) if wb is None else wb[row : row + take]
            w[filled : filled + take] = part
            weight_sum += float(np.sum(part))
            first_where = first_where or block.where
            filled += take
            row += take
            if filled == batch_size:
                yield _Batch(X, w, filled, weight_sum, first_where)
                # fresh buffers: the ones handed out may still be read by a transfer in flight
                X, w = np.zeros((batch_size, D), dtype), np.zeros(batch_size, dtype)
                filled, weight_sum, first_where = 0, 0.0, None
    if filled:
        yield _Batch(X, w, filled, weight_sum, first_where or "the last batch")


# -- initialisation from a reservoir ------------------------------------------------------------
def reservoir_sample(source: _Source, size: int, seed, dtype, *, with_keys: bool = False):
    """A uniform sample without replacement of ``size`` rows (all rows when there are fewer),
    in one pass, in the rows' original order: ``(X (S, D), weight (S,) or None, rows seen)``.

    Each row gets a uniform random key; the ``size`` smallest keys are kept (a bottom-k
    sketch, equivalent to reservoir sampling). Every block is checked on the way. With
    ``with_keys``, also the kept rows' keys and row indices (``(S,)`` each, the same order)."""
    rng = np.random.default_rng(seed)
    limit = v.largest_safe_magnitude(dtype, source.num_features)
    keys = np.empty(0)
    index = np.empty(0, np.int64)
    X = np.empty((0, source.num_features), dtype)
    weight: np.ndarray | None = None
    rows = 0
    for block in source.blocks():
        Xb, wb = _checked_block(block, dtype, limit)
        n = Xb.shape[0]
        u = rng.random(n)
        take = np.arange(n) if keys.size < size else np.flatnonzero(u < keys.max())
        if take.size:
            keys = np.concatenate([keys, u[take]])
            index = np.concatenate([index, rows + take])
            X = np.concatenate([X, np.asarray(Xb[take], dtype)])
            if wb is not None:
                weight = np.concatenate([np.empty(0) if weight is None else weight, wb[take]])
            if keys.size > size:
                keep = np.argpartition(keys, size - 1)[:size]
                keys, index, X = keys[keep], index[keep], X[keep]
                weight = None if weight is None else weight[keep]
        rows += n
    order = np.argsort(index, kind="stable")
    sample = X[order], None if weight is None else weight[order].astype(dtype), rows
    return (*sample, keys[order], index[order]) if with_keys else sample


# -- the device side -------------------------------------------------------------------------
class PassTotals(NamedTuple):
    """What a pass accumulates, per restart (leading ``(R,)`` axis on every leaf)."""

    stats: SufficientStats
    log_likelihood: jax.Array  # (R,)


def _stacked_e_step(params: GMMParams, X, w, chunk_size: int, batched: bool):
    if not batched:  # one restart: no batch axis (as fit_em, whose layouts differ with one)
        one = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
        stats, ll = e_step(one, X, w, chunk_size=chunk_size)
        return jax.tree_util.tree_map(lambda leaf: leaf[None], (stats, ll))
    return jax.vmap(lambda p: e_step(p, X, w, chunk_size=chunk_size))(params)


@functools.partial(jax.jit, static_argnames=("chunk_size", "batched"), donate_argnums=(1,))
def _accumulate(params: GMMParams, totals: PassTotals, X, w, *, chunk_size: int, batched: bool):
    """``totals`` (donated) plus the batch's statistics, and a scalar marking the batch done
    (the totals' buffers are donated to the next batch: the host waits on the marker)."""
    stats, ll = _stacked_e_step(params, X, w, chunk_size, batched)
    new = PassTotals(totals.stats + stats, totals.log_likelihood + ll)
    return new, new.log_likelihood[0]


def _step_from_totals(params, totals, total_weight, reg_covar, num_active=None):
    """``em_iteration``'s step function on a pass's totals (in ``EMOperands.X``) instead of data."""
    stats, log_likelihood = totals
    new_params, collapsed = m_step_with_diagnostics(stats, params.means, reg_covar, num_active)
    return new_params, collapsed, log_likelihood / total_weight


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _finish_pass(states: FitState, totals: PassTotals, total_weight, tol, reg_covar, *, max_iter: int) -> FitState:
    """One M-step and convergence test per restart; restarts that had stopped stay as they are."""

    def one(state, stats, log_likelihood):
        operands = EMOperands((stats, log_likelihood), total_weight, tol, reg_covar)
        new = em_iteration(state, operands, _step_from_totals)
        running = (state.n_iter < max_iter) & ~state.converged
        return jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, state)

    return jax.vmap(one)(states, totals.stats, totals.log_likelihood)


def _zero_totals(states: FitState, covariance_type: str) -> PassTotals:
    means = states.params.means  # (R, K, D)
    R, K, D = means.shape
    second = (R, K, D, D) if covariance_type in ("full", "tied") else (R, K, D)
    zeros = lambda shape: jnp.zeros(shape, means.dtype)  # noqa: E731
    return PassTotals(SufficientStats(zeros((R, K)), zeros((R, K, D)), zeros(second), covariance_type), zeros((R,)))


# -- many devices and many processes ------------------------------------------------------------
_ROWS = "rows"  # the 1-D mesh axis of a sharded stream (over every device of the caller's mesh)


class StreamLayout(NamedTuple):
    """Where a sharded stream's batches go (see :func:`stream_layout`).

    Attributes:
      local_mesh: 1-D mesh (axis ``"rows"``) over this process's devices: each batch is split
        over them and their statistics are accumulated there (no collective per batch).
      global_mesh: 1-D mesh over every device of every process (process by process): the
        one all-reduce per pass runs over it.
      num_local: devices of this process (``L``); num_devices: of all processes (``G``).
      num_processes: processes holding devices of the mesh.
    """

    local_mesh: Any
    global_mesh: Any
    num_local: int
    num_devices: int
    num_processes: int


def stream_layout(mesh, data_axis) -> StreamLayout:
    """The :class:`StreamLayout` of a caller's ``mesh``: the rows of every batch over all of
    its devices (``data_axis`` must be the only axis of size > 1: restarts are vmapped)."""
    from jax.sharding import Mesh

    from gmmjax._sharding import resolve_data_axis

    axis = resolve_data_axis(mesh, data_axis)
    names = axis if isinstance(axis, tuple) else (axis,)
    others = [name for name in mesh.axis_names if name not in names and mesh.shape[name] > 1]
    if others:
        raise ValueError(
            f"a streamed fit shards each batch over data_axis {axis!r} only, but the mesh also has axes "
            f"{others} of size > 1: pass a mesh whose other axes have size 1 (restarts are vmapped on every device)."
        )
    devices = sorted(mesh.devices.flat, key=lambda d: (d.process_index, d.id))
    local = [d for d in devices if d.process_index == jax.process_index()]
    if not local:
        raise ValueError("this process holds no device of the mesh: build the mesh over every process's devices.")
    global_mesh = Mesh(np.array(devices), (_ROWS,))
    local_mesh = global_mesh if len(local) == len(devices) else Mesh(np.array(local), (_ROWS,))
    processes = len({d.process_index for d in devices})
    return StreamLayout(local_mesh, global_mesh, len(local), len(devices), processes)


def _marked(totals: PassTotals) -> PassTotals:
    """``totals`` with full/tied second moments marked symmetric (packed as upper triangles)."""
    from gmmjax._collectives import symmetric

    stats = totals.stats
    if stats.covariance_type in ("full", "tied"):
        stats = SufficientStats(
            stats.counts,
            stats.first_moments,
            symmetric(stats.second_moments),  # type: ignore[arg-type]
            stats.covariance_type,
        )
    return PassTotals(stats, totals.log_likelihood)


@functools.cache
def _sharded_programs(layout: StreamLayout, chunk_size: int, batched: bool):
    """``(add, reduce)``: ``add(params, totals, X, w)`` adds a batch split over the local
    devices into each device's packed totals ``(L, S)`` (donated; no collective);
    ``reduce(totals)`` is the pass's one all-reduce, ``(G, S)`` → ``(S,)`` replicated."""
    from jax.sharding import PartitionSpec as P

    from gmmjax._collectives import pack

    rows = P(_ROWS)

    def add_local(params, totals, X, w):
        stats, ll = _stacked_e_step(params, X, w, chunk_size, batched)
        flat, _ = pack(_marked(PassTotals(stats, ll)))
        new = totals + flat[None]
        return new, new[:, :1]

    add = jax.shard_map(
        add_local, mesh=layout.local_mesh, in_specs=(P(), rows, rows, rows), out_specs=(rows, rows), check_vma=False
    )
    reduce = jax.shard_map(
        lambda t: jax.lax.psum(t[0], _ROWS), mesh=layout.global_mesh, in_specs=rows, out_specs=P(), check_vma=False
    )
    return jax.jit(add, donate_argnums=(1,)), jax.jit(reduce)


@functools.partial(jax.jit, static_argnums=(1,))
def _unpack_totals(flat, how) -> PassTotals:
    from gmmjax._collectives import unpack

    return unpack(flat, how)  # type: ignore[return-value]


class _Accumulator:
    """A pass's running statistics on one device (``PassTotals``, ``(R, …)`` leaves)."""

    sharded = False

    def __init__(self, chunk_size: int, batched: bool, covariance_type: str):
        self.chunk_size, self.batched, self.covariance_type = chunk_size, batched, covariance_type

    def zero(self, states: FitState):
        return _zero_totals(states, self.covariance_type)

    def params(self, states: FitState):
        return states.params

    def put(self, batch: _Batch):
        """The batch's ``(X, w)`` sent to the device (the transfer starts now)."""
        return jax.device_put(batch.X), jax.device_put(batch.weight)

    def add(self, params, totals, X, w):
        return _accumulate(params, totals, X, w, chunk_size=self.chunk_size, batched=self.batched)

    def reduce(self, totals) -> PassTotals:
        return totals

    def arrays(self, totals) -> dict[str, np.ndarray]:
        return _totals_arrays(totals)

    def restore(self, arrays, states: FitState):
        stats = SufficientStats(
            jnp.asarray(arrays["counts"]),
            jnp.asarray(arrays["first_moments"]),
            jnp.asarray(arrays["second_moments"]),
            self.covariance_type,
        )
        return PassTotals(stats, jnp.asarray(arrays["log_likelihood"]))


class _ShardedAccumulator(_Accumulator):
    """A pass's statistics split over the devices of a :class:`StreamLayout`: every device
    adds the E-step statistics of its slice of each batch into its own packed totals; the pass
    ends with ONE all-reduce (a ``psum`` over every device of every process) of those packed
    totals (``R·(K·(1 + D + D(D+1)/2) + 1)`` numbers for full/tied, ``R·(K·(1 + 2D) + 1)`` for
    diag/spherical: see :func:`gmmjax._collectives.pack`)."""

    sharded = True

    def __init__(self, chunk_size: int, batched: bool, covariance_type: str, layout: StreamLayout, template):
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from gmmjax._collectives import pack

        super().__init__(chunk_size, batched, covariance_type)
        self.layout = layout
        self.add_program, self.reduce_program = _sharded_programs(layout, chunk_size, batched)
        flat, self.how = pack(_marked(template))
        self.size, self.dtype = int(flat.shape[0]), flat.dtype
        self.rows_sharding = NamedSharding(layout.local_mesh, P(_ROWS))
        self.replicated = NamedSharding(layout.local_mesh, P())
        self.global_sharding = NamedSharding(layout.global_mesh, P(_ROWS))

    @property
    def packed_bytes(self) -> int:
        """Bytes of the one all-reduce per pass."""
        return self.size * np.dtype(self.dtype).itemsize

    def zero(self, states: FitState):
        return jax.device_put(np.zeros((self.layout.num_local, self.size), self.dtype), self.rows_sharding)

    def params(self, states: FitState):
        return jax.device_put(states.params, self.replicated)

    def put(self, batch: _Batch):
        return jax.device_put(batch.X, self.rows_sharding), jax.device_put(batch.weight, self.rows_sharding)

    def add(self, params, totals, X, w):
        return self.add_program(params, totals, X, w)

    def reduce(self, totals) -> PassTotals:
        shards = [shard.data for shard in totals.addressable_shards]
        # The local totals as this process's part of the global (G, S) array (in one process
        # the same devices; on many, each process contributes its devices' rows).
        global_totals = jax.make_array_from_single_device_arrays(
            (self.layout.num_devices, self.size), self.global_sharding, shards
        )
        summed = self.reduce_program(global_totals)
        local = jax.device_put(summed.addressable_shards[0].data, jax.local_devices()[0])
        return _unpack_totals(local, self.how)

    def arrays(self, totals) -> dict[str, np.ndarray]:
        return {"packed_totals": np.asarray(totals)}

    def restore(self, arrays, states: FitState):
        packed = np.asarray(arrays["packed_totals"])
        if packed.shape != (self.layout.num_local, self.size):
            raise ValueError(
                f"the checkpoint's statistics have shape {packed.shape}, expected {(self.layout.num_local, self.size)}."
            )
        return jax.device_put(packed.astype(self.dtype), self.rows_sharding)


# -- checkpoints ----------------------------------------------------------------------------
def state_arrays(states: FitState) -> dict[str, np.ndarray]:
    """The restarts' states as named arrays (for a checkpoint)."""
    leaves = {
        "weights": states.params.weights,
        "means": states.params.means,
        "covariances": states.params.covariances,
        "lower_bound": states.lower_bound,
        "n_iter": states.n_iter,
        "converged": states.converged,
        "lower_bound_history": states.lower_bound_history,
        "collapsed_components": states.collapsed_components,
    }
    return {name: np.asarray(value) for name, value in leaves.items()}


def _totals_arrays(totals: PassTotals) -> dict[str, np.ndarray]:
    leaves = {
        "counts": totals.stats.counts,
        "first_moments": totals.stats.first_moments,
        "second_moments": totals.stats.second_moments,
        "log_likelihood": totals.log_likelihood,
    }
    return {name: np.asarray(value) for name, value in leaves.items()}


def restore_states(arrays, covariance_type: str) -> FitState:
    """The inverse of :func:`state_arrays`."""
    a = {name: jnp.asarray(arrays[name]) for name in FitState._fields if name != "params"}
    params = GMMParams(
        jnp.asarray(arrays["weights"]),
        jnp.asarray(arrays["means"]),
        jnp.asarray(arrays["covariances"]),
        covariance_type,
    )
    return FitState(
        params, a["lower_bound"], a["n_iter"], a["converged"], a["lower_bound_history"], a["collapsed_components"]
    )


def _describe_options(options: FitOptions) -> dict:
    """Every field of ``options`` as JSON values for a checkpoint's fingerprint: the initial
    values as one digest, scalars as floats (a new option is covered without a change here)."""
    initial = ("weights_init", "means_init", "precisions_init")
    description: dict = {"initial_values": array_digest(*(getattr(options, name) for name in initial))}
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name in initial:
            continue
        if value is not None and not isinstance(value, (str, bool, int)):
            value = float(value)  # tol, reg_covar, lower_bound_init: arrays or scalars
        description[field.name] = value
    return description


# -- the front door ---------------------------------------------------------------------------
def auto_batch_size(num_features: int, dtype, num_rows: int | None) -> int:
    """Rows per batch so that one batch of data is about ``BATCH_TARGET_BYTES`` (a multiple of
    8 rows, at most ``N`` rounded up to 8)."""
    rows = max(1024, BATCH_TARGET_BYTES // (num_features * np.dtype(dtype).itemsize))
    rows = rows // _ROW_MULTIPLE * _ROW_MULTIPLE
    if num_rows is not None:
        rows = min(rows, -(-num_rows // _ROW_MULTIPLE) * _ROW_MULTIPLE)
    return int(rows)


def fit_em_streaming(
    key: jax.Array,
    data,
    num_components: int,
    options: FitOptions | None = None,
    *,
    sample_weight=None,
    batch_size: int | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    verbose: bool | int = False,
    checkpoint=None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    resume: bool = False,
    mesh=None,
    data_axis=None,
    **option_keywords,
) -> FitResult:
    """Fits a Gaussian mixture by EM to data streamed in batches: exact out-of-core EM.

    The iterations are those of :func:`gmmjax.fit_em` (same E-step, M-step, ``tol`` /
    ``max_iter`` / convergence test, ``n_init`` restarts vmapped, best restart, result type),
    with each iteration one pass over the data in batches of ``batch_size`` rows; memory is
    the batch buffers plus ``O(n_init·K·D²)``, whatever ``N`` is. From the same starting
    parameters (``weights_init``, ``means_init``, ``precisions_init``) the result equals
    ``fit_em``'s up to floating-point summation order. The start comes from the standard
    ``init_params`` on a reservoir sample of ``max(2**14, 64·K)`` rows (all rows when there
    are fewer, which is then ``fit_em``'s own initialisation). See the module ``gmmjax._streaming``.

    Args:
      key: ``jax.random`` key (initialisation and the reservoir sample).
      data: a ``.npy`` path, a folder of ``.npy`` shards, a list of paths, a ``.parquet``
        file, a folder or list of them (every column a feature; choose columns with
        ``gmmjax._streaming.ParquetSource(path, columns=[...])``), a Zarr array (a ``.zarr``
        path, a store or a ``zarr.Array``), a source object (``ParquetSource``,
        ``ZarrSource``, ...), a NumPy array, a callable returning an iterator of batches, or a
        re-iterable of batches; a batch is an ``(n, D)`` array or an ``(X, sample_weight)``
        pair. Every pass must yield the same rows.
      num_components: ``K``.
      options: :class:`~gmmjax.FitOptions` (``restart_batch_size`` is not used: all restarts
        share every batch).
      sample_weight: for file and array sources, ``(N,)`` weights: an array or a 1-D ``.npy``
        path (read batch by batch). Iterables carry theirs in the batches; a source object
        takes its own (``ParquetSource(..., sample_weight=w)``).
      batch_size: rows per batch (``None``: about 32 MiB of data, at most ``N``).
      max_in_flight: batches dispatched to the device and not yet finished, at most (≥ 1; 2
        is double buffering: one computing, one being transferred).
      verbose: progress on stderr after each pass (iteration, lower bound, rows/s, time left).
      checkpoint: a file to write checkpoints to (``.npz``, atomic; see ``gmmjax._checkpoint``).
      checkpoint_every: write one every this many iterations (at the end of the pass).
      checkpoint_seconds: also write one after a batch when this many seconds have passed since
        the last (mid-pass: the partial statistics and the data position are saved).
        With ``checkpoint`` and neither given: every iteration.
      resume: continue from ``checkpoint`` (which must exist and have been written by a fit
        with the same data, options, key and batch size: otherwise a
        ``CheckpointMismatchError`` (a ``ValueError``) says what differs). The result
        equals that of an uninterrupted fit.
      mesh: a ``jax.sharding.Mesh``: split every batch over the devices of its ``data_axis``
        (``batch_size`` rounded up to a multiple of this process's devices; each device adds
        the statistics of its rows into its own totals, no collective per batch) and sum the
        statistics once per pass by ONE all-reduce of the packed statistics. Under
        ``jax.distributed`` with a mesh over every process's devices, each process streams its
        OWN ``data`` (its shard files, its iterator; ragged row counts allowed) and every
        process gets the same model, equal to a one-process fit of the processes' data
        concatenated in process order (initialised from the union of every process's
        reservoir sample, all-gathered: see ``docs/scaling/streaming.md``). Checkpoints of a
        multi-process fit are written by process 0 at the end of a pass (``checkpoint_every``;
        the file must be readable by every process on ``resume``).
      data_axis: the mesh axis of the rows (default: the mesh's only axis).
      **option_keywords: fields of :class:`~gmmjax.FitOptions`.

    Returns:
      A :class:`~gmmjax.FitResult`.

    Raises:
      ValueError: (``gmmjax._streaming.StreamError``) malformed data, naming the file or batch: shards with
        other feature counts or dtypes, a truncated ``.npy`` or Parquet file, a corrupt Zarr
        chunk, non-numeric columns, NaN (a Parquet null) or infinity in a batch, an empty
        source, an iterable that yields nothing or changes length between passes.
      ImportError: a Parquet or Zarr source without pyarrow or zarr (``pip install 'gmmjax[parquet]'``).
    """
    options = fit_options(options, **option_keywords)
    require_no_prior(options.prior, "streaming fits")
    key = v.check_key(key)
    num_components = v.check_int("num_components", num_components, 1)
    report_every = check_verbose(verbose, 1, key)
    max_in_flight = v.check_int("max_in_flight", max_in_flight, 1)
    layout = None if mesh is None else stream_layout(mesh, data_axis)
    if mesh is None and data_axis is not None:
        raise ValueError("data_axis names an axis of mesh=: pass the mesh too.")
    source = as_source(data, sample_weight)
    many = layout is not None and layout.num_processes > 1
    if many:  # before anything else that could differ between processes: one small all-gather
        agree_across_processes(
            0, source.num_features, source.dtype, _has_weights(source), what="data", error=StreamError
        )
    dtype = v.working_dtype(source.dtype)
    options = check_fit_options(options, num_components, source.num_features)
    if checkpoint is None and (checkpoint_every or checkpoint_seconds or resume):
        raise ValueError("checkpoint_every, checkpoint_seconds and resume need checkpoint= (a file path).")
    if many and checkpoint_seconds is not None:
        raise ValueError(
            "checkpoint_seconds (mid-pass checkpoints) is not available for a fit over several processes: "
            "each process is at another place in its data. Use checkpoint_every (end of a pass)."
        )
    if checkpoint is not None and checkpoint_every is None and checkpoint_seconds is None:
        checkpoint_every = 1
    if checkpoint_every is not None:
        checkpoint_every = v.check_int("checkpoint_every", checkpoint_every, 1)
    if batch_size is not None:
        batch_size = v.check_int("batch_size", batch_size, 1)
    key_data = np.asarray(jax.random.key_data(key))
    covariance_type, n_init, max_iter = options.covariance_type, options.n_init, options.max_iter
    K, D = num_components, source.num_features
    writer = not many or jax.process_index() == 0  # on many processes, process 0 writes the checkpoints

    def describe(batch: int) -> dict:
        description = {
            "num_components": K,
            "options": _describe_options(options),
            "dtype": np.dtype(dtype).str,
            "key": key_data.tolist(),
            "batch_size": batch,
            "data": source.describe(),
            "num_rows": source.num_rows,
        }
        if layout is not None:
            description["devices"] = layout.num_devices
        if many:  # every process's own data and batch size, all-gathered as digests
            description["data"] = process_digests(fingerprint({"data": source.describe(), "batch_size": batch}))
            del description["num_rows"], description["batch_size"]
        return description

    def layout_batch(batch: int) -> int:
        if layout is None:
            return batch
        return -(-batch // layout.num_local) * layout.num_local  # each device gets the same rows

    reporter = streaming_reporter(n_init, max_iter) if report_every else None
    try:
        if resume:
            arrays, meta = load_checkpoint(checkpoint)  # the batch size is needed to check the rest
            if many:
                batch = layout_batch(batch_size or int(meta["batch_sizes"][jax.process_index()]))
                source.num_rows = (
                    source.num_rows if source.num_rows is not None else meta["num_rows"][jax.process_index()]
                )
            else:
                batch = int(meta["description"]["batch_size"]) if batch_size is None else layout_batch(batch_size)
                if source.num_rows is None:
                    source.num_rows = meta["description"].get("num_rows")
            arrays, meta = load_checkpoint(checkpoint, describe(batch))
            states = restore_states(arrays, covariance_type)
            start_batch, rows_done, weight_done = int(meta["batch"]), int(meta["rows"]), float(meta["weight"])
            if isinstance(source, IterableSource) and not many:
                source.num_batches = meta.get("num_batches")
        else:
            states = _initial_states(key, source, K, options, dtype, many)
            batch = layout_batch(batch_size or auto_batch_size(D, dtype, source.num_rows))
            start_batch, rows_done, weight_done = 0, 0, 0.0
        per_device = batch // (1 if layout is None else layout.num_local)
        chunk = resolve_chunk_size(options.chunk_size, per_device, K, D, dtype, batch=n_init)
        if layout is None:
            accumulator: _Accumulator = _Accumulator(chunk, n_init > 1, covariance_type)
        else:
            accumulator = _ShardedAccumulator(
                chunk, n_init > 1, covariance_type, layout, _zero_totals(states, covariance_type)
            )
        totals = accumulator.restore(arrays, states) if resume else accumulator.zero(states)
        tol, reg_covar = np.asarray(options.tol, dtype), np.asarray(options.reg_covar, dtype)
        last_save = time.monotonic()
        global_rows: list = [None]  # (rows, weight) of every process together, after the first pass

        def save(batch_index: int, rows: int, weight: float) -> None:
            description = describe(batch)
            meta = {
                "description": description,
                "fingerprint": fingerprint(description),
                "batch": batch_index,
                "rows": rows,
                "weight": weight,
                "iteration": int(np.max(np.asarray(states.n_iter))),
                "num_batches": getattr(source, "num_batches", None),
            }
            if many:  # what each process needs to resume (checkpoints are written at pass ends only)
                counts = np.asarray(gather_values([batch, source.num_rows or 0])).reshape(-1, 2)
                meta["batch_sizes"], meta["num_rows"] = counts[:, 0].tolist(), counts[:, 1].tolist()
            if writer:
                arrays = {**state_arrays(states), **accumulator.arrays(totals), "key_data": key_data}
                save_checkpoint(checkpoint, arrays, meta)

        running = _running(states, max_iter)
        while running.any():
            in_flight: collections.deque = collections.deque()
            batch_index = start_batch
            params = accumulator.params(states)
            for item in fixed_batches(source, batch, dtype, start_batch):
                X_device, w_device = accumulator.put(item)
                if len(in_flight) >= max_in_flight:  # bound what asynchronous dispatch reads ahead
                    in_flight.popleft().block_until_ready()
                totals, done = accumulator.add(params, totals, X_device, w_device)
                in_flight.append(done)
                rows_done += item.rows
                weight_done += item.weight_sum
                batch_index += 1
                if reporter is not None:
                    reporter.add_rows(item.rows)
                if checkpoint_seconds is not None and time.monotonic() - last_save >= checkpoint_seconds:
                    save(batch_index, rows_done, weight_done)
                    last_save = time.monotonic()
            while in_flight:  # the pass's last batches (the M-step waits for them anyway)
                in_flight.popleft().block_until_ready()
            if source.num_rows is not None and rows_done != source.num_rows:
                raise StreamError(f"a pass read {rows_done} rows, but the data has {source.num_rows}.")
            if many:  # once per fit: every process's rows and weight (an all-gather of 2 numbers each)
                if global_rows[0] is None:
                    both = np.asarray(gather_values([rows_done, weight_done]), np.float64).reshape(-1, 2)
                    global_rows[0] = (int(both[:, 0].sum()), float(both[:, 1].sum()))
                all_rows, all_weight = global_rows[0]
            else:
                all_rows, all_weight = rows_done, weight_done
            if all_rows == 0:
                raise StreamError("the data has no rows to fit.")
            if all_rows < K:
                raise ValueError(
                    f"the data has {all_rows} samples, fewer than num_components={K}: provide more samples "
                    "or decrease num_components."
                )
            if not all_weight > 0:
                raise ValueError("sample_weight must have a positive sum.")
            total_weight = np.asarray(
                all_rows if sample_weight is None and not _has_weights(source) else all_weight, dtype
            )
            states = _finish_pass(states, accumulator.reduce(totals), total_weight, tol, reg_covar, max_iter=max_iter)
            totals = accumulator.zero(states)
            start_batch, rows_done, weight_done = 0, 0, 0.0
            running = _running(states, max_iter)
            if reporter is not None:
                reporter.pass_done(states)
            iteration = int(np.max(np.asarray(states.n_iter)))
            if checkpoint is not None and (
                (checkpoint_every is not None and iteration % checkpoint_every == 0) or not running.any()
            ):
                save(0, 0, 0.0)
                last_save = time.monotonic()
    finally:
        if reporter is not None:
            reporter.close()
    return choose_best(states)


# -- many processes -----------------------------------------------------------------------------
def _gathered_sample(keys, index, X, weight, rows: int, size: int):
    """The union of every process's bottom-``size`` sample, cut to the ``size`` smallest keys,
    in (process, row) order: a uniform sample of all processes' rows, the same on every process."""
    from jax.experimental import multihost_utils

    D = X.shape[1]
    have = keys.shape[0]
    padded_keys = np.full(size, np.inf)
    padded_keys[:have] = keys
    padded_index = np.zeros(size, np.float64)
    padded_index[:have] = index
    X_pad = np.zeros((size, D), X.dtype)
    X_pad[:have] = X
    w_pad = np.zeros(size, X.dtype)
    if weight is not None:
        w_pad[:have] = weight
    numbers = gather_values(np.concatenate([padded_keys, padded_index, [rows]]))  # (P, 2·size + 1)
    X_all = np.asarray(multihost_utils.process_allgather(X_pad)).reshape(-1, size, D)
    w_all = np.asarray(multihost_utils.process_allgather(w_pad)).reshape(-1, size)
    P = numbers.shape[0]
    all_keys, all_index = numbers[:, :size], numbers[:, size : 2 * size]
    process = np.repeat(np.arange(P), size).reshape(P, size)
    flat_keys = all_keys.ravel()
    valid = np.flatnonzero(np.isfinite(flat_keys))
    if valid.size > size:
        valid = valid[np.argsort(flat_keys[valid], kind="stable")[:size]]
    order = np.lexsort((all_index.ravel()[valid], process.ravel()[valid]))
    chosen = valid[order]
    X_s = X_all.reshape(-1, D)[chosen]
    w_s = None if weight is None else w_all.ravel()[chosen]
    return X_s, w_s, int(numbers[:, -1].sum())


def _has_weights(source: _Source) -> bool:
    return bool(getattr(source, "weight", None) is not None or getattr(source, "has_weights", False))


def _running(states: FitState, max_iter: int) -> np.ndarray:
    return np.asarray((states.n_iter < max_iter) & ~states.converged)


def _initial_states(key, source: _Source, num_components: int, options: FitOptions, dtype, many=False) -> FitState:
    """Each restart's starting state: the options' initialisation on a reservoir sample (on
    many processes: the union of their samples, all-gathered, so every process starts alike)."""
    if options.has_initial_parameters and not (
        options.weights_init is None or options.means_init is None or options.precisions_init is None
    ):
        X_sample = jnp.zeros((num_components, source.num_features), dtype)  # not read: the *_init are used
        w_sample = None
    else:
        size = seeding_sample_size(num_components)
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
        if many:  # each process draws its own keys; the smallest `size` of all processes win
            X_np, w_np, rows, keys, index = reservoir_sample(
                source, size, seed + [jax.process_index()], dtype, with_keys=True
            )
            X_np, w_np, rows = _gathered_sample(keys, index, X_np, w_np, rows, size)
        else:
            X_np, w_np, rows = reservoir_sample(source, size, seed, dtype)
        if rows < num_components:
            raise ValueError(
                f"the data has {rows} samples, fewer than num_components={num_components}: provide more "
                "samples or decrease num_components."
            )
        X_sample, w_sample = jnp.asarray(X_np), None if w_np is None else jnp.asarray(w_np)
    return _init_restarts(key, X_sample, w_sample, traced_leaves(options, dtype), num_components)


@functools.partial(jax.jit, static_argnames=("num_components",))
def _init_restarts(key, X, sample_weight, options: FitOptions, num_components: int) -> FitState:
    def one(restart_key):
        params, collapsed = initial_params(restart_key, X, sample_weight, options, num_components)
        return initial_state(params, collapsed, options.max_iter, options.lower_bound_init)

    keys = restart_keys(key, options.n_init)
    if options.n_init == 1:
        return jax.tree_util.tree_map(lambda leaf: leaf[None], one(keys[0]))
    return jax.vmap(one)(keys)
