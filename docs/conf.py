"""Sphinx configuration of gmmjax's documentation (``pip install -e ".[docs]"``).

Build: ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``; tests/test_docs.py
runs exactly that (warnings are errors, ``-n``: every cross-reference must resolve) and executes
every ``python`` block of the guides.
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the gmmjax of this checkout, also without an install

import gmmjax  # noqa: E402

project = "gmmjax"
author = "gmmjax developers"
copyright = "gmmjax developers"
release = version = gmmjax.__version__

extensions = [
    "myst_parser",  # the pages are MyST Markdown
    "sphinx.ext.autodoc",  # the API reference comes from the docstrings...
    "sphinx.ext.napoleon",  # ...which are Google style
    "sphinx.ext.mathjax",
    "notebook_pages",  # docs/_ext: notebooks rendered as pages, not executed
]

source_suffix = {".md": "markdown"}  # notebook_pages adds .ipynb
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# Broken cross-references fail the build (-n is nitpicky mode; the test also passes -W).
nitpicky = True
# References to other libraries cannot be resolved offline (intersphinx would fetch their
# inventories over the network), so they are the only ones let through; every reference to a
# gmmjax name must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|optax|sklearn|scipy|matplotlib|numpyro|distrax|chex)(\..*)?"),
    (r"py:.*", r"(Array|ArrayLike|PRNGKeyArray|DTypeLike|Axes|Figure|Callable|Sequence|Mapping|Any|Optional)"),
    (r"py:.*", r"(array|array-like|arrays|optional|callable|tuple|int|float|bool|str|dict|list|None)"),
    # Private names (a component starting with "_", e.g. gmmjax._implicit): docstrings name them
    # for developers; the reference documents the public API only.
    (r"py:.*", r"(.*\.)?_[^.]*(\..*)?"),
]

autodoc_typehints = "none"  # shapes and dtypes are in the docstrings' Args; hints repeat them less readably
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = False

html_theme = "alabaster"  # ships with Sphinx: the docs extra stays two packages
html_title = f"gmmjax {release}"
html_theme_options = {
    "description": "Gaussian mixture models in JAX",
    "fixed_sidebar": True,
    "page_width": "1240px",
    "body_max_width": "none",
    "sidebar_width": "250px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
