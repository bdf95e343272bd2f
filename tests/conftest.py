"""Shared fixtures: where the golden vectors are, and how to skip visibly without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from occlum_rules.core.outputs import CHECK_DESCRIBED

# Every build the suite runs (in this process and in the doit processes it starts) walks the
# output trees that stages describe themselves, and fails on any difference.
os.environ[CHECK_DESCRIBED] = "1"

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


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real registry (Debian's docker-registry) on 127.0.0.1, one per test module."""
    from tests.support.registry import REGISTRY, needs_registry, run_registry

    if REGISTRY is None:
        pytest.skip(needs_registry.kwargs["reason"])
    with run_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running
