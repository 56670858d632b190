"""Sphinx configuration of the tavrida documentation.

Build (the one command, as .ci/run, tox and the README run it)::

    python -m sphinx -W -b html docs docs/_build/html

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
    "sphinxcontrib.mermaid",  # topology.rst: the diagram of the examples
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

# Docstrings are plain reST (no napoleon). Members keep source order.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build"]
templates_path = []
html_static_path = ["_static"]
html_css_files = ["tavrida.css"]  # code blocks and signatures that fit the page
html_theme = "alabaster"
html_theme_options = {
    "description": "Services that talk over a message broker",
    "fixed_sidebar": True,
    # Fits 1280 px screens: 220 px of sidebar, ~100 columns of code in the body.
    "page_width": "1240px",
    "sidebar_width": "220px",
}
pygments_style = "sphinx"
