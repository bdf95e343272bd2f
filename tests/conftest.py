"""Shared fixtures: where the golden vectors are, and how to skip visibly without them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS = (REPO_ROOT.parent / "shared" / "vectors").resolve()
SPECS = (REPO_ROOT.parent / "shared" / "specs").resolve()


def vectors_path(*parts: str) -> Path:
    """Path into ../shared/vectors, or skip the test saying why."""
    path = VECTORS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"golden vectors not found at {path} (clone the project beside ../shared)")
    return path


@pytest.fixture
def vectors_dir() -> Path:
    return vectors_path()
