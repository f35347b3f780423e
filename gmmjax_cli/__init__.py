"""The ``gmmjax`` console script: the command line, with ``--help`` and argument errors free of JAX.

:mod:`gmmjax._cli` imports only the standard library, NumPy and :mod:`gmmjax._names` and
imports JAX inside each command. Importing any ``gmmjax.<module>`` the usual way first runs
``gmmjax/__init__.py``, which imports JAX (≈2 s before anything is printed). This launcher
loads those two modules from the package's folder under their own names (the import system's
documented recipe, :func:`importlib.util.module_from_spec`) without running the package's
``__init__``; the first command that needs the library imports ``gmmjax`` normally, and the
package then uses the same two modules. ``python -m gmmjax`` imports the package (and so JAX)
first; ``python -m gmmjax_cli`` is this fast path too.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

_JAX_FREE = ("gmmjax._names", "gmmjax._cli")  # in import order


def _load_jax_free_modules() -> None:
    if "gmmjax" in sys.modules or "gmmjax._cli" in sys.modules:
        return  # the package is imported already: nothing to save
    package = importlib.util.find_spec("gmmjax")
    if package is None or not package.submodule_search_locations:
        return  # not installed: the plain import below says so
    for name in _JAX_FREE:
        spec = importlib.machinery.PathFinder.find_spec(name, list(package.submodule_search_locations))
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise


def main(argv=None) -> int:
    """Entry point of the ``gmmjax`` console script (see :func:`gmmjax._cli.main`)."""
    _load_jax_free_modules()
    from gmmjax._cli import main as cli_main

    return cli_main(argv)
