"""Checkpoints of long fits: atomic ``.npz`` files of arrays plus JSON metadata, no pickle.

A checkpoint holds named NumPy arrays (the fit's state: parameters of every restart, the
statistics accumulated so far in the current pass, the iteration counters, the random key)
and one JSON document (what the fit was: a fingerprint of its configuration and data, the
position in the data, the format version). Both live in one ``.npz`` file: the JSON is stored
as a ``uint8`` array, so the file is read with ``allow_pickle=False`` and nothing in it is
executed. Writing is atomic: the file is written under a temporary name in the same folder,
flushed to disk and renamed over the old checkpoint with :func:`os.replace`, so an
interruption at any moment leaves either the previous checkpoint or the new one, never a
torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT = "gmmjax-checkpoint"
VERSION = 1
_META = "__metadata__"


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a fit with another configuration or other data."""


def fingerprint(description: Mapping[str, Any]) -> str:
    """A stable hex digest of a JSON-serialisable description (keys sorted)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def array_digest(*arrays) -> str:
    """A hex digest of arrays' dtypes, shapes and bytes (``None`` entries allowed)."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _flatten(description: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"options": {"tol": 0.1}}`` → ``{"options.tol": 0.1}`` (for naming what differs)."""
    flat: dict[str, Any] = {}
    for key, value in description.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save_checkpoint(path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Writes ``arrays`` and ``metadata`` (JSON-serialisable) to ``path`` atomically.

    Args:
      path: destination file (conventionally ``.npz``; the name is used as given).
      arrays: name -> array; names must not start with ``__``.
      metadata: JSON-serialisable mapping.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    document = {"format": FORMAT, "version": VERSION, **metadata}
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    if any(name.startswith("__") for name in payload):
        raise ValueError("checkpoint array names must not start with '__'.")
    payload[_META] = np.frombuffer(json.dumps(document, sort_keys=True).encode(), dtype=np.uint8)
    handle, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **payload)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_checkpoint(path, expected: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a checkpoint written by :func:`save_checkpoint`: ``(arrays, metadata)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a gmmjax checkpoint, or a newer format.
      CheckpointMismatchError: ``expected`` (a description, see :func:`fingerprint`) given and
        the checkpoint was written for another one; the message names the fields that differ.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist: nothing to resume (start without resume=).")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path!r} is not a readable gmmjax checkpoint: {exc}") from None
    if _META not in arrays:
        raise ValueError(f"{path!r} is not a gmmjax checkpoint (no metadata).")
    metadata = json.loads(arrays.pop(_META).tobytes().decode())
    if metadata.get("format") != FORMAT or int(metadata.get("version", 0)) > VERSION:
        raise ValueError(
            f"{path!r} is not a gmmjax checkpoint of version <= {VERSION} "
            f"(format {metadata.get('format')!r}, version {metadata.get('version')!r})."
        )
    if expected is not None and metadata.get("fingerprint") != fingerprint(expected):
        written, wanted = _flatten(metadata.get("description", {})), _flatten(expected)
        keys = sorted(set(written) | set(wanted))
        differ = [key for key in keys if fingerprint({"v": written.get(key)}) != fingerprint({"v": wanted.get(key)})]
        details = "; ".join(f"{key}: checkpoint {written.get(key)!r}, this fit {wanted.get(key)!r}" for key in differ)
        raise CheckpointMismatchError(
            f"checkpoint {path!r} was written by a fit with another configuration or other data "
            f"({details or 'fingerprints differ'}): resume with the same data, number of components, "
            "options, seed and batch size, or start afresh without resume= (or with another checkpoint file)."
        )
    return arrays, metadata
