"""Strips outputs from notebooks before they are committed.

    python notebooks/strip_outputs.py                 # every notebooks/*.ipynb, in place
    python notebooks/strip_outputs.py a.ipynb b.ipynb # just these
    python notebooks/strip_outputs.py --check         # exit 1 (and list them) if any is not stripped

Stripping empties every code cell's ``outputs``, sets ``execution_count`` to null, drops
execution metadata (timings, collapsed/scrolled state) and notebook-level widget state, and
writes the notebook as Jupyter does (nbformat 4 JSON, one-space indent, sorted keys), so the
committed file changes only when its code or text changes. Uses only the standard library.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent
# Cell metadata written by Jupyter / nbclient while running or viewing a notebook.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")
VOLATILE_NOTEBOOK_METADATA = ("widgets",)


def _lines(source) -> list:
    """A cell's source as nbformat stores it: a list of lines, each ending in a newline but the last."""
    text = "".join(source) if isinstance(source, list) else source
    return text.splitlines(keepends=True)


def strip(notebook: dict) -> dict:
    """A copy of ``notebook`` (parsed nbformat-4 JSON) without outputs or execution state."""
    notebook = copy.deepcopy(notebook)
    for key in VOLATILE_NOTEBOOK_METADATA:
        notebook.get("metadata", {}).pop(key, None)
    for cell in notebook.get("cells", []):
        cell["source"] = _lines(cell.get("source", ""))
        metadata = cell.setdefault("metadata", {})
        for key in VOLATILE_CELL_METADATA:
            metadata.pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return notebook


def dumps(notebook: dict) -> str:
    """nbformat's own serialisation: ``json.dumps(indent=1, sort_keys=True, ensure_ascii=False)`` + newline."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def is_stripped(notebook: dict) -> bool:
    """Whether stripping would change anything but the JSON layout."""
    return strip(notebook) == strip_source_layout(notebook)


def strip_source_layout(notebook: dict) -> dict:
    """``notebook`` with each cell's source normalised to a list of lines (layout, not content)."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.get("cells", []):
        cell["source"] = _lines(cell.get("source", ""))
    return notebook


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="*", type=pathlib.Path, help="notebooks (default: every .ipynb next to this script)"
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    not_stripped = []
    for path in paths:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        if args.check:
            if not is_stripped(notebook):
                not_stripped.append(path)
            continue
        text = dumps(strip(notebook))
        if text != path.read_text(encoding="utf-8"):
            path.write_text(text, encoding="utf-8")
            print(f"stripped {path}")
    if not_stripped:
        print(
            "not stripped (run python notebooks/strip_outputs.py): " + ", ".join(map(str, not_stripped)),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
