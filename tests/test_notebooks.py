"""Every ``notebooks/*.ipynb`` runs, with small sizes, and is committed with its outputs stripped.

Each notebook runs in a fresh Python process with ``GMMJAX_NOTEBOOK_QUICK=1`` and the Agg
backend: its code cells are executed in order in one namespace, as a Jupyter kernel would
(no kernel needed). This file is also the runner, usable by hand::

    GMMJAX_NOTEBOOK_QUICK=1 python tests/test_notebooks.py notebooks/quickstart.ipynb
    GMMJAX_NOTEBOOK_FIGURES=/tmp/figures python tests/test_notebooks.py notebooks/*.ipynb

With ``GMMJAX_NOTEBOOK_FIGURES=DIR`` every figure a notebook shows (``plt.show()``, or left
open at the end of a cell, as Jupyter's inline backend shows it) is saved as
``DIR/<notebook>-cell<N>-<i>.png`` (N counts code cells from 1), so the pictures can be looked at;
a relative ``DIR`` is relative to the folder the runner is started from (each notebook itself runs
in its own folder, as in Jupyter).

Convention for notebooks (checked here): nbformat 4, plain Python code cells (no ``%magics``
or ``!shell`` lines), the first code cell sets
``QUICK = os.environ.get("GMMJAX_NOTEBOOK_QUICK") == "1"`` and sizes follow ``QUICK``;
figures with matplotlib and ``plt.show()``; outputs stripped (``python notebooks/strip_outputs.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
FAILURE_MARKER = "NOTEBOOK FAILED"
QUICK_SWITCH = 'QUICK = os.environ.get("GMMJAX_NOTEBOOK_QUICK") == "1"'


def code_cells(notebook: dict) -> list:
    """``(position in the notebook, source)`` of each code cell, in order."""
    return [
        (position, "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        for position, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code"
    ]


# --------------------------------------------------------------------------- the runner


class _FigureSaver:
    """Replaces ``plt.show``: saves (when asked) and closes every open figure, like an inline backend."""

    def __init__(self, plt, folder, prefix):
        self.plt, self.folder, self.prefix = plt, folder, prefix
        self.cell, self.count = 0, 0

    def show(self, *args, **kwargs):
        for number in self.plt.get_fignums():
            figure = self.plt.figure(number)
            if self.folder is not None:
                self.count += 1
                figure.savefig(
                    self.folder / f"{self.prefix}-cell{self.cell}-{self.count}.png", dpi=80, bbox_inches="tight"
                )
            self.plt.close(figure)


def run_notebook(path: pathlib.Path) -> int:
    """Executes ``path``'s code cells in order in one namespace; returns a process exit status."""
    path = pathlib.Path(path).resolve()
    notebook = json.loads(path.read_text(encoding="utf-8"))
    folder = os.environ.get("GMMJAX_NOTEBOOK_FIGURES")
    # Relative to the caller's folder (resolved before the chdir below, which is undone at the end).
    folder = pathlib.Path(folder).resolve() if folder else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    saver = None
    try:
        import matplotlib  # noqa: F401  (only whether it is installed: the notebooks run without it)
    except ImportError:
        pass
    else:
        import matplotlib.pyplot as plt

        plt.switch_backend("Agg")  # headless whatever MPLBACKEND says; resolved now, so show stays patched
        saver = _FigureSaver(plt, folder, path.stem)
        plt.show = lambda *args, **kwargs: saver.show()
    caller_folder = os.getcwd()
    os.chdir(path.parent)  # as Jupyter: relative paths from the notebook's folder
    try:
        return _run_cells(path, notebook, saver)
    finally:
        os.chdir(caller_folder)  # the next notebook (and GMMJAX_NOTEBOOK_FIGURES) starts from the caller's


def _run_cells(path: pathlib.Path, notebook: dict, saver) -> int:
    namespace = {"__name__": "__main__"}
    for number, (position, source) in enumerate(code_cells(notebook), start=1):
        if saver is not None:
            saver.cell, saver.count = number, 0
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            exec(compile(source, f"<{path.name} code cell {number}>", "exec"), namespace)
            if saver is not None:
                saver.show()  # figures left open at the end of a cell are shown, as in Jupyter
        except BaseException:  # noqa: BLE001 - report anything, including SystemExit, with its cell
            first_line = next((line for line in source.splitlines() if line.strip()), "")
            print(
                f"{FAILURE_MARKER}: {path.name}, code cell {number} (cell {position + 1} of the notebook), "
                f"starting {first_line!r}",
                file=sys.stderr,
            )
            traceback.print_exc()
            return 1
        print(
            f"{path.name} code cell {number}: {time.perf_counter() - start:.2f} s "
            f"(CPU {time.process_time() - start_cpu:.2f} s)",
            flush=True,
        )
    return 0


# --------------------------------------------------------------------------- the tests


def _load_strip_outputs():
    spec = importlib.util.spec_from_file_location("strip_outputs", NOTEBOOKS_DIR / "strip_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook_id(path):
    return path.stem


def _start_notebook(path: pathlib.Path):
    """Starts the runner on ``path`` in a fresh process (quick sizes, Agg); output goes to temporary files."""
    import tempfile

    env = dict(os.environ, GMMJAX_NOTEBOOK_QUICK="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    # Files, not pipes: a full pipe would block a notebook while the test waits on another one.
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, __file__, str(path)], stdout=out, stderr=err, env=env, cwd=REPO_ROOT, text=True
    )
    proc.output_files = (out, err)
    return proc


def _finish(proc, timeout: float = 300.0):
    """Waits for a process from :func:`_start_notebook`; returns ``(returncode, stdout, stderr)``."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    texts = []
    for f in proc.output_files:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return proc.returncode, *texts


if __name__ != "__main__":
    import pytest

    def test_there_are_notebooks():
        assert {"quickstart", "restarts_and_batches"} <= {p.stem for p in NOTEBOOKS}

    @pytest.fixture(scope="module")
    def notebook_processes(request):
        """Starts every selected notebook at once, each in its own process, so that they share the cores."""
        selected = [
            item.callspec.params["path"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_notebook_runs"
        ]
        processes = {path: _start_notebook(path) for path in selected}
        yield processes
        for proc in processes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # The differentiable-pipeline notebook (≈ 65 s on 2 cores: gradient fits, a training loop)
    # runs with `pytest -m slow`; the others in CI.
    SLOW_NOTEBOOKS = {"differentiable_pipeline"}

    @pytest.mark.parametrize(
        "path",
        [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW_NOTEBOOKS else []) for p in NOTEBOOKS],
    )
    def test_notebook_runs(path, notebook_processes):
        returncode, stdout, stderr = _finish(notebook_processes[path])
        if returncode != 0:
            failure = stderr[stderr.find(FAILURE_MARKER) :] if FAILURE_MARKER in stderr else stderr
            pytest.fail(
                f"notebooks/{path.name} failed (exit {returncode}):\n{failure[-6000:]}\n"
                f"(stdout ends: {stdout[-1000:]})",
                pytrace=False,
            )

    @pytest.mark.parametrize("path", NOTEBOOKS, ids=_notebook_id)
    def test_notebook_follows_the_convention(path):
        strip_outputs = _load_strip_outputs()
        notebook = json.loads(path.read_text(encoding="utf-8"))
        assert notebook.get("nbformat") == 4, f"{path.name}: not an nbformat-4 notebook"
        assert strip_outputs.is_stripped(notebook), (
            f"{path.name} is committed with outputs or execution counts: run python notebooks/strip_outputs.py"
        )
        cells = code_cells(notebook)
        assert cells, f"{path.name} has no code cells"
        assert QUICK_SWITCH in cells[0][1], f"the first code cell of {path.name} must set {QUICK_SWITCH}"
        for number, (_, source) in enumerate(cells, start=1):
            magics = [line for line in source.splitlines() if line.lstrip().startswith(("%", "!"))]
            assert not magics, f"{path.name} code cell {number}: plain Python only, found {magics}"
            compile(source, f"<{path.name} code cell {number}>", "exec")  # a SyntaxError names the cell

    def test_runner_reports_the_failing_cell(tmp_path):
        cells = [
            {"cell_type": "markdown", "metadata": {}, "source": ["# title"]},
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": ["import os\n", QUICK_SWITCH + "\n", "x = 1"],
            },
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": ["assert QUICK\n", "y = x / 0"],
            },
        ]
        path = tmp_path / "broken.ipynb"
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        returncode, stdout, stderr = _finish(_start_notebook(path))
        assert returncode == 1
        assert "broken.ipynb code cell 1:" in stdout  # the first cell ran (and was timed)
        assert "NOTEBOOK FAILED: broken.ipynb, code cell 2 (cell 3 of the notebook), starting 'assert QUICK'" in stderr
        assert "ZeroDivisionError" in stderr and "<broken.ipynb code cell 2>" in stderr

    def test_relative_figure_folder_is_the_callers(tmp_path):
        """README: ``GMMJAX_NOTEBOOK_FIGURES=figures python tests/test_notebooks.py A.ipynb B.ipynb``
        saves into ./figures of the caller, for every notebook (the runner changes folders)."""
        pytest.importorskip("matplotlib")
        source = [
            "import os\n",
            QUICK_SWITCH + "\n",
            "import matplotlib.pyplot as plt\n",
            "plt.plot([0, 1])\n",
            "plt.show()",
        ]
        cells = [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}]
        notebooks = tmp_path / "notebooks"
        notebooks.mkdir()
        for name in ("first", "second"):
            (notebooks / f"{name}.ipynb").write_text(
                json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
            )
        caller = tmp_path / "caller"
        caller.mkdir()
        env = dict(os.environ, GMMJAX_NOTEBOOK_FIGURES="figures", MPLBACKEND="Agg")
        proc = subprocess.run(
            [sys.executable, __file__, "../notebooks/first.ipynb", "../notebooks/second.ipynb"],
            cwd=caller,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in (caller / "figures").iterdir()) == ["first-cell1-1.png", "second-cell1-1.png"]
        assert not (notebooks / "figures").exists()

    def test_strip_outputs_strips(tmp_path):
        strip_outputs = _load_strip_outputs()
        notebook = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": 3,
                    "id": "a",
                    "metadata": {"execution": {"iopub.status.idle": "..."}, "tags": ["keep"]},
                    "outputs": [{"name": "stdout", "output_type": "stream", "text": ["1\n"]}],
                    "source": "print(1)\nprint(2)",
                }
            ],
            "metadata": {"widgets": {}, "kernelspec": {"name": "python3"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        path = tmp_path / "n.ipynb"
        path.write_text(json.dumps(notebook))
        assert not strip_outputs.is_stripped(notebook)
        assert strip_outputs.main(["--check", str(path)]) == 1
        assert strip_outputs.main([str(path)]) == 0
        stripped = json.loads(path.read_text())
        assert strip_outputs.is_stripped(stripped) and strip_outputs.main(["--check", str(path)]) == 0
        (cell,) = stripped["cells"]
        assert cell["outputs"] == [] and cell["execution_count"] is None
        assert cell["metadata"] == {"tags": ["keep"]} and cell["source"] == ["print(1)\n", "print(2)"]
        assert stripped["metadata"] == {"kernelspec": {"name": "python3"}}


if __name__ == "__main__":
    # Several notebooks given by hand share this process (the tests run each in a fresh one).
    paths = [pathlib.Path(argument).resolve() for argument in sys.argv[1:]] or NOTEBOOKS
    sys.exit(max(run_notebook(path) for path in paths))
