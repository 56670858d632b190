"""Packaging for tavrida 2."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
#: The home of tavrida 1.0, whose successor this is (same name, API and wire protocol).
REPOSITORY = "https://github.com/sbunatyan/tavrida"


def version():
    """``__version__`` of tavrida/_version.py, read without importing tavrida."""
    text = (HERE / "tavrida" / "_version.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def requirements(name):
    lines = (HERE / name).read_text().splitlines()
    return [line for line in lines if line and not line.startswith(("#", "-r"))]


setup(
    name="tavrida",
    version=version(),
    description="Services that talk over a message broker: RPC, pub/sub, middlewares",
    author="tavrida contributors",
    url=REPOSITORY,
    project_urls={
        "Source": REPOSITORY,
        "Issues": f"{REPOSITORY}/issues",
    },
    license="Apache-2.0",
    license_files=["LICENSE"],
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tavrida", "tavrida.*"]),
    # The root as the one package directory: setuptools then makes `pip install -e`
    # a plain .pth file naming this folder, which type checkers follow (mypy --strict on
    # a user's own code finds tavrida and its py.typed), instead of an import hook they
    # cannot see (tests/unit/test_typing.py checks it from a folder outside the repo).
    package_dir={"": "."},
    package_data={"tavrida": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=requirements("requirements.txt"),
    extras_require={
        "dev": requirements("requirements-dev.txt"),
        # Optional observability (docs/observability.rst): off unless configured.
        "metrics": ["prometheus-client>=0.16"],
        "otel": ["opentelemetry-api>=1.20"],
        # Handler parameters annotated with pydantic models (docs/handlers.rst).
        "pydantic": ["pydantic>=2"],
        # examples/fastapi_app.py: an HTTP endpoint awaiting tavrida calls (docs/asyncio.rst).
        "fastapi": ["fastapi>=0.100,<1", "uvicorn>=0.20"],
        # The peers `python -m bench --peers` measures (docs/performance.md); not for CI.
        "bench": ["nameko>=2.14,<3", "faststream[rabbit]>=0.7,<0.8"],
    },
    entry_points={"console_scripts": ["tavrida = tavrida.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Distributed Computing",
    ],
)
