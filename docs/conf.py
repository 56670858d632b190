"""Sphinx configuration of the tavrida documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
Nothing is fetched from the network.
"""

import os
import sys

# Document the tavrida next to these docs, not an installed copy.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import tavrida  # noqa: E402

project = "tavrida"
author = "tavrida contributors"
copyright = "tavrida contributors"  # noqa: A001
release = tavrida.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",  # performance.md and reliability.md are Markdown
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

# Docstrings are plain reST (no napoleon). Members keep source order.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_theme_options = {
    "description": "Services that talk over a message broker",
    "fixed_sidebar": True,
}
pygments_style = "sphinx"
