"""Style gates, as in optax and equinox: ``ruff check``, ``ruff format --check`` and ``mypy``.

Each runs over the tree with the configuration in ``pyproject.toml`` (``[tool.ruff]``,
``[tool.mypy]``), in a subprocess from the repository root, and the test fails with the
tool's report. The tools are in the ``test`` extra; a test is skipped only where its tool
is not installed. To fix what they report: ``ruff check --fix``, ``ruff format``; mypy's
findings by hand.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(module: str, *args: str, timeout: float) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it is in the test extra: pip install -e '.[test]')")
    command = [sys.executable, "-m", module, *args]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"`python -m {module} {' '.join(args)}` reported:\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff_check():
    _run("ruff", "check", "--output-format", "full", timeout=120)


def test_ruff_format():
    _run("ruff", "format", "--check", "--diff", timeout=120)


def test_mypy():
    # Cache in .mypy_cache (git-ignored): a warm run takes a few seconds, a cold one up to a minute.
    _run("mypy", timeout=600)
