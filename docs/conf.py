"""Sphinx configuration: MyST Markdown pages, the CLI reference (sphinx-click) and an API reference of
``aiida_mlpes.core`` generated from the docstrings (autodoc + autosummary, one page per module).

Build (warnings are errors, as in scripts/test.sh):
    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

# Document the checkout these docs belong to, even when another copy of the package is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiida_mlpes

project = "aiida-mlpes"
author = "aiida-mlpes developers"
copyright = "aiida-mlpes developers"
release = version = aiida_mlpes.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_click",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated_*", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# API reference: autosummary writes one page per module of aiida_mlpes.core into docs/api/ (not committed).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_class_signature = "separated"
napoleon_numpy_docstring = False
# Type hints name third-party classes that have no documentation here; do not warn about each of them.
nitpicky = False
suppress_warnings = ["myst.xref_missing"]

html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"aiida-mlpes {release}"
