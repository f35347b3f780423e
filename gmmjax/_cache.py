"""Opt-in persistent compilation cache: compiled fits survive the process."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_cache_directory() -> Path:
    """``$GMMJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/gmmjax/xla``, else ``~/.cache/gmmjax/xla``."""
    if os.environ.get("GMMJAX_CACHE_DIR"):
        return Path(os.environ["GMMJAX_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gmmjax" / "xla"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Stores every program JAX compiles in ``directory`` and reuses it in later processes.

    Compilation (≈1–2 s per new combination of data shape, number of components,
    covariance type, ``max_iter``, ``n_init``…) then happens once per machine instead of
    once per process. This is JAX's own persistent cache (``jax_compilation_cache_dir``)
    with the minimum compile time lowered to zero so that small programs are kept too; it is
    global to the process, so it also caches the caller's other JAX programs. Call it before
    the first fit. Entries are keyed by the program, the JAX version and the device, so a
    stale entry is never used; delete the directory to reclaim the space.

    Args:
      directory: where to keep the cache (created if missing); default
        ``default_cache_directory()``.

    Returns:
      The cache directory.
    """
    path = Path(directory) if directory is not None else default_cache_directory()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
