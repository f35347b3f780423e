"""The documentation site (``docs/``): it builds, its references resolve, its examples run.

- Sphinx builds it with warnings as errors and in nitpicky mode (``-W --keep-going -n``), so a
  broken cross-reference, a docstring with bad markup or a page left out of every toctree
  fails the test; the build runs in a subprocess while the examples below run here.
- Every name in ``gmmjax.__all__`` and ``gmmjax.plot.__all__`` is in the API reference
  (``docs/api/*.md``, and in the built inventory).
- Every fenced ```` ```python ```` block of every page runs: the blocks of one page in order, in
  one fresh namespace per page (```` ```bash ```` and ```` ```text ```` blocks are not run).
- Every notebook of ``notebooks/`` is a page (``docs/notebooks/*.ipynb`` are links to them,
  rendered without executing them: tests/test_notebooks.py executes them).

The build tests are skipped only when Sphinx or myst-parser is not installed (both are in the
``test`` and ``docs`` extras). Build by hand: ``python -m sphinx -W -n -b html docs docs/_build/html``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
API_PAGES = sorted((DOCS / "api").glob("*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", flags=re.S | re.M)
# Pages whose examples run only with `pytest -m slow`: those that compile many programs (each
# 10-15 s of XLA compilation on 2 cores), to keep the default suite near 8 minutes. The
# others run in CI.
SLOW_PAGES: set[str] = {
    "guides/numerics.md",
    "guides/differentiating.md",
    "guides/choosing_k.md",
    "guides/restarts_and_batches.md",
}
HAVE_SPHINX = all(importlib.util.find_spec(name) is not None for name in ("sphinx", "myst_parser"))
needs_sphinx = pytest.mark.skipif(
    not HAVE_SPHINX, reason="Sphinx and myst-parser are not installed (pip install -e '.[docs]' or '.[test]')"
)
SPHINX_ARGS = ["-W", "--keep-going", "-n", "-q", "-b", "html"]


def python_blocks(text: str) -> list[str]:
    """The ```` ```python ```` blocks of a Markdown page, in order."""
    return PYTHON_BLOCK.findall(text)


def public_names() -> list[str]:
    import gmmjax.plot

    return [f"gmmjax.{name}" for name in gmmjax.__all__] + [f"gmmjax.plot.{name}" for name in gmmjax.plot.__all__]


def inventory_names(path: pathlib.Path) -> set[str]:
    """The object names in a Sphinx ``objects.inv`` (four header lines, then zlib-compressed lines)."""
    data = path.read_bytes()
    for _ in range(4):
        data = data[data.index(b"\n") + 1 :]
    return {line.split(" ", 1)[0] for line in zlib.decompress(data).decode().splitlines() if line}


class _Build:
    """``sphinx-build`` over ``source`` in a subprocess, its output in temporary files."""

    def __init__(self, source: pathlib.Path, output: pathlib.Path):
        env = dict(os.environ, MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.output = output
        self.files = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
        command = [sys.executable, "-m", "sphinx", *SPHINX_ARGS, str(source), str(output)]
        self.proc = subprocess.Popen(command, stdout=self.files[0], stderr=self.files[1], env=env, cwd=ROOT, text=True)
        self.result: tuple[int, str] | None = None

    def finish(self, timeout: float = 300.0) -> tuple[int, str]:
        """``(exit status, stdout + stderr)``."""
        if self.result is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            texts = []
            for f in self.files:
                f.seek(0)
                texts.append(f.read())
                f.close()
            self.result = (self.proc.returncode, "".join(texts))
        return self.result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Starts the builds at once, so that they run while the examples run in this process."""
    if not HAVE_SPHINX:
        yield None
        return
    site = _Build(DOCS, tmp_path_factory.mktemp("html"))
    # The same configuration over one page with a reference to a name that does not exist.
    broken = tmp_path_factory.mktemp("broken_docs")
    shutil.copy(DOCS / "conf.py", broken / "conf.py")
    shutil.copytree(DOCS / "_ext", broken / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "index.md").write_text("# Broken\n\nSee {func}`gmmjax.no_such_function`.\n")
    broken_build = _Build(broken, tmp_path_factory.mktemp("broken_html"))
    yield {"site": site, "broken": broken_build}
    site.kill()
    broken_build.kill()


# --------------------------------------------------------------------------- without Sphinx


def test_every_public_name_is_in_the_api_reference():
    """Each public name has an entry (autodoc or py directive) in docs/api/*.md. A name added to
    ``__all__`` (e.g. by a scale-out branch) fails here until it is added to its group's page."""
    directive = re.compile(r"^\s*\.\. (?:auto)?(?:function|class|exception|data|module|py:\w+)::\s*(\S+)", re.M)
    documented = {name for page in API_PAGES for name in directive.findall(page.read_text())}
    missing = [name for name in public_names() if name not in documented]
    assert not missing, f"public names missing from docs/api/*.md (add each to its group's page): {missing}"


def test_scaling_pages_are_globbed():
    """docs/scaling/index.md picks up every page of docs/scaling/ (other branches add theirs)."""
    text = (DOCS / "scaling" / "index.md").read_text()
    assert re.search(r"```\{toctree\}[^`]*:glob:[^`]*^\*\s*$", text, flags=re.M | re.S), text
    assert (DOCS / "scaling" / "memory.md").exists()  # so that the glob always matches a page


def test_every_notebook_is_a_page():
    linked = {p.name: p.resolve() for p in (DOCS / "notebooks").glob("*.ipynb")}
    assert linked == {p.name: p.resolve() for p in NOTEBOOKS}, (
        "docs/notebooks/ should hold one link per notebook: cd docs/notebooks && ln -s ../../notebooks/NAME.ipynb ."
    )


def test_slow_pages_exist():
    assert SLOW_PAGES <= {p.relative_to(DOCS).as_posix() for p in PAGES}


def test_pages_have_examples():
    counts = {p.relative_to(DOCS).as_posix(): len(python_blocks(p.read_text())) for p in PAGES}
    guides = [name for name in counts if name.startswith("guides/") and name != "guides/cli.md"]
    assert guides and all(counts[name] for name in guides), counts


def test_python_block_pattern():
    text = "a\n```python\nx = 1\n```\n\n```bash\nrm -rf /\n```\n````python\nnot a block\n````\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@needs_sphinx
def test_notebook_cells_become_myst():
    spec = importlib.util.spec_from_file_location("notebook_pages", DOCS / "_ext" / "notebook_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cells = [
        {"cell_type": "markdown", "source": ["# Title\n", "Some *text*."]},
        {"cell_type": "code", "source": 'print("```")\n', "outputs": []},
        {"cell_type": "code", "source": "  \n", "outputs": []},  # an empty cell is left out
        {"cell_type": "raw", "source": "left out"},
    ]
    text = module.notebook_to_myst(json.dumps({"cells": cells, "nbformat": 4}))
    assert text == '# Title\nSome *text*.\n\n````python\nprint("```")\n````\n'


# --------------------------------------------------------------------------- the examples


def _page_param(page: pathlib.Path):
    name = page.relative_to(DOCS).as_posix()
    return pytest.param(page, id=name, marks=[pytest.mark.slow] if name in SLOW_PAGES else [])


@pytest.mark.parametrize("page", [_page_param(page) for page in PAGES])
def test_page_examples_run(page, builds, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text())
    if not blocks:
        pytest.skip("no python blocks")
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"<{page.relative_to(ROOT)} python block {number}>", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - name the block, then re-raise with its traceback
            raise AssertionError(f"{page.relative_to(ROOT)}: python block {number} failed: {error!r}") from error
    try:
        import matplotlib.pyplot as plt

        plt.close("all")
    except ImportError:
        pass


# --------------------------------------------------------------------------- the build


@needs_sphinx
def test_docs_build_with_warnings_as_errors(builds):
    returncode, output = builds["site"].finish()
    assert returncode == 0, f"sphinx-build {' '.join(SPHINX_ARGS)} docs failed:\n{output[-8000:]}"


@needs_sphinx
def test_built_reference_has_every_public_name(builds):
    returncode, output = builds["site"].finish()
    assert returncode == 0, output[-4000:]
    names = inventory_names(builds["site"].output / "objects.inv")
    missing = [name for name in public_names() if name not in names]
    assert not missing, f"not in the built API reference: {missing}"


@needs_sphinx
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_pages_show_every_code_cell(builds, notebook):
    returncode, output = builds["site"].finish()
    assert returncode == 0, output[-4000:]
    page = (builds["site"].output / "notebooks" / f"{notebook.stem}.html").read_text()
    cells = json.loads(notebook.read_text())["cells"]
    code_cells = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert page.count('class="highlight-python') == len(code_cells)


@needs_sphinx
def test_a_broken_reference_fails_the_build(builds):
    returncode, output = builds["broken"].finish()
    assert returncode != 0 and "gmmjax.no_such_function" in output, output[-4000:]
