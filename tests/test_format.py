"""Code style: ``ruff format --check`` over the repository, with the settings in pyproject.toml
(``[tool.ruff]`` line length, ``[tool.ruff.format]``). The fix is ``ruff format`` at the root."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_is_ruff_formatted():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it is in the test extra: pip install -e '.[test]')")
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode in (0, 1), f"ruff format --check could not run:\n{r.stderr}{r.stdout}"
    files = sorted({line.split(":")[0] for line in r.stdout.splitlines() if "would be reformatted" in line})
    if files:
        pytest.fail(
            f"{len(files)} files are not formatted as `ruff format` would write them; run `ruff format` at the "
            "repository root:\n  " + "\n  ".join(files),
            pytrace=False,
        )
