"""Renders the repository's notebooks (``docs/notebooks/*.ipynb``, links to ``notebooks/``) as pages.

The notebooks are committed with their outputs stripped and are executed by
``tests/test_notebooks.py``; the documentation shows them as written, without executing them.
That needs no Jupyter stack: each markdown cell is MyST Markdown as it stands, and each code
cell becomes a fenced ``python`` block, so the page goes through the same parser (myst-parser)
as the guides. (myst-nb would do the same with ``nb_execution_mode = "off"``, at the price of
the Jupyter machinery it installs for the execution and output rendering that is not used here.)
"""

from __future__ import annotations

import json

from myst_parser.parsers.sphinx_ import MystParser

# Longer than any run of backticks inside a code cell, so that a cell cannot close its fence.
_FENCE = "`" * 4


def notebook_to_myst(text: str) -> str:
    """The MyST Markdown of a notebook's JSON text: markdown cells as they are, code cells fenced."""
    notebook = json.loads(text)
    parts = []
    for cell in notebook.get("cells", []):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "markdown":
            parts.append(source)
        elif cell.get("cell_type") == "code" and source.strip():
            fence = _FENCE
            while fence in source:
                fence += "`"
            parts.append(f"{fence}python\n{source.rstrip()}\n{fence}")
    return "\n\n".join(parts) + "\n"


class NotebookParser(MystParser):
    """A Sphinx source parser for ``.ipynb`` files: the notebook as MyST Markdown (see the module)."""

    supported = ("ipynb",)

    def parse(self, inputstring: str, document) -> None:
        super().parse(notebook_to_myst(inputstring), document)


def setup(app):
    app.add_source_suffix(".ipynb", "ipynb")
    app.add_source_parser(NotebookParser)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
