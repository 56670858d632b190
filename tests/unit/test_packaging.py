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
    assert "License :: OSI Approved :: Apache Software License" in meta.get_all("Classifier")
    assert meta["Author"]
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL"))
    assert urls["Source"].startswith("https://") and urls["Issues"].startswith("https://")
