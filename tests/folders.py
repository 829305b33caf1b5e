"""The tests' private folders: data/pytest-* and build/pytest-* inside the repository.

Tests write params whose data and report folders live there (the pipeline refuses output
folders outside the repository). `safe_rmtree` is the only way tests delete them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from samrep.config import REPO_ROOT


def is_test_folder(path: Path) -> bool:
    """Whether `path` is REPO_ROOT/data/pytest-* or REPO_ROOT/build/pytest-*."""
    path = Path(path).resolve()
    root = REPO_ROOT.resolve()
    return path.parent in (root / "data", root / "build") and path.name.startswith("pytest-")


def safe_rmtree(path: Path) -> None:
    """Remove a test's own folder, and only that; anything else is left alone.

    (A cleanup that resolved to the repository itself once deleted a whole checkout: a
    bad-params case named the repository root as its report folder.)
    """
    if is_test_folder(path):
        shutil.rmtree(path, ignore_errors=True)
