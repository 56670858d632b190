"""Packaging: one version, a license, metadata a package index shows."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re

import tavrida

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_version_is_written_once_and_the_installed_metadata_has_it():
    written = re.findall(r'^__version__ = "([^"]+)"$', (REPO / "tavrida" / "_version.py")
                         .read_text(), re.M)
    assert written == [tavrida.__version__]
    assert importlib.metadata.version("tavrida") == tavrida.__version__
    for path in [REPO / "setup.py", REPO / "tavrida" / "__init__.py", REPO / "docs" / "conf.py"]:
        assert tavrida.__version__ not in path.read_text(), f"{path} repeats the version"


def test_license_and_metadata():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    meta = importlib.metadata.metadata("tavrida")
    assert meta["License"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.10"
    versions = [classifier.rsplit(" :: ", 1)[1] for classifier in meta.get_all("Classifier")
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", classifier)]
    assert versions == ["3.10", "3.11", "3.12", "3.13"], "the Pythons .ci/run tests on"
    assert meta["Author"]
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL"))
    assert urls["Source"].startswith("https://") and urls["Issues"].startswith("https://")


SPHINX = "python -m sphinx -W -b html docs docs/_build/html"


def test_one_sphinx_command_everywhere_it_is_written():
    for name in ["README.md", "docs/installation.rst", "docs/conf.py", "tox.ini"]:
        text = (REPO / name).read_text()
        assert SPHINX in text, f"{name} does not give the docs command"
        assert text.count("-m sphinx") == text.count(SPHINX), f"{name} gives another one"


def test_every_module_has_its_api_page_public_ones_first():
    def name(path: pathlib.Path) -> str:
        parts = path.relative_to(REPO / "tavrida").with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = sorted(name(path) for path in (REPO / "tavrida").rglob("*.py")
                     if not path.name.startswith("_") or path.name == "__init__.py")
    modules.remove("")  # tavrida itself: its docstring is the list in api.rst
    pages = re.findall(r"^   api/(\S+)$", (REPO / "docs" / "api.rst").read_text(), re.M)
    assert sorted(pages) == modules, "a module without an API page (docs/api/NAME.rst)"
    assert pages[:3] == ["client", "server", "service"]
    assert pages.index("testing") < pages.index("transports")
    for page in pages:
        assert f".. automodule:: tavrida.{page}\n" in (REPO / "docs" / "api" / f"{page}.rst"
                                                       ).read_text()
