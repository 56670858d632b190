"""The public API is typed: ``mypy --strict`` passes on the package and on user code.

One mypy run (configured by pyproject.toml's ``[tool.mypy]``) checks the
package and tests/typing/user_code.py, the documented forms as a service
author writes them; each test looks at the errors of its own files. A second
run checks the same file the way a user does: copied to a folder of its own,
with the installed tavrida (README's ``pip install -e``) and no config of ours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in requirements-dev.txt")

ROOT = Path(__file__).resolve().parents[2]
USER_CODE = "tests/typing/user_code.py"
#: The asyncio API (tavrida.aio) as docs/asyncio.rst spells it.
AIO_USER_CODE = "tests/typing/aio_user_code.py"

_ERROR = re.compile(r"^(?P<path>[^:\n]+):\d+(?::\d+)?: error: ", re.MULTILINE)


@pytest.fixture(scope="module")
def errors() -> Dict[str, List[str]]:
    """mypy's error lines, by file (paths relative to the repository)."""
    cwd = os.getcwd()
    limit = sys.getrecursionlimit()  # mypy raises it for the whole process
    os.chdir(ROOT)
    try:
        stdout, stderr, status = mypy_api.run(
            ["--config-file", "pyproject.toml", "--no-error-summary", "tavrida", USER_CODE,
             AIO_USER_CODE])
    finally:
        os.chdir(cwd)
        sys.setrecursionlimit(limit)
    assert status in (0, 1), f"mypy could not run (status {status}):\n{stderr}{stdout}"
    found: Dict[str, List[str]] = {}
    for match in _ERROR.finditer(stdout):
        line = stdout[match.start():stdout.find("\n", match.start())]
        found.setdefault(match.group("path").replace(os.sep, "/"), []).append(line)
    return found


def test_package_is_strict_clean(errors):
    assert {path: lines for path, lines in errors.items() if path.startswith("tavrida/")} == {}


def test_documented_user_code_type_checks(errors):
    """The documented forms type-check, and the misuses in the sample are still caught."""
    assert errors.get(USER_CODE, []) == []


def test_documented_asyncio_user_code_type_checks(errors):
    """``await`` gives the answer's type, as the blocking call does; misuses are caught."""
    assert errors.get(AIO_USER_CODE, []) == []


def test_user_code_in_a_folder_of_its_own_finds_tavrida(tmp_path):
    """``mypy --strict app.py`` in a user's folder resolves the installed tavrida.

    An editable install through setuptools' import hook fails here ("Cannot find
    implementation or library stub for module named 'tavrida'"): type checkers
    do not run import hooks; setup.py's ``package_dir`` makes it a .pth file.
    If tavrida were not resolved, every ``type: ignore`` of the sample's misuses
    would be reported unused, so a silent Any cannot pass.
    """
    assert ROOT not in tmp_path.resolve().parents, "the user's folder must be outside the repo"
    shutil.copy(ROOT / USER_CODE, tmp_path / "app.py")
    shutil.copy(ROOT / AIO_USER_CODE, tmp_path / "aio_app.py")
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONPATH", "MYPYPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "app.py", "aio_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mypy --strict in {tmp_path}:\n{done.stdout}{done.stderr}"
