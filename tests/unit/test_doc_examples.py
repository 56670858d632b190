"""The runnable examples of the docs (docs/examples/*.py) pass, as the docs promise.

``python -m pytest tests`` does not collect ``docs/``; this test runs them
in a separate pytest so their module-level services stay their own.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_doc_examples_pass_and_none_is_skipped():
    files = sorted(EXAMPLES.glob("test_*.py"))
    assert files, "no doc examples found"
    declared = sum(len(re.findall(r"^(?:async )?def test_", path.read_text(), re.M))
                   for path in files)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-rs", str(EXAMPLES)], capture_output=True, text=True, timeout=120,
                         cwd=EXAMPLES.parents[1])
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(rf"\b{declared} passed\b", out.stdout), out.stdout
    assert "skipped" not in out.stdout and "xfail" not in out.stdout
