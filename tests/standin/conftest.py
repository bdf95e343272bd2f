"""Build the stand-in once per test session; every layout test reads the same files."""

from __future__ import annotations

import shutil

import pytest

from occlum_rules.standin.build import StandinFiles, build_standin


def _need_gcc() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: the stand-in LibOS is compiled with the host C compiler")


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> StandinFiles:
    _need_gcc()
    return build_standin(tmp_path_factory.mktemp("standin-2.20"))


@pytest.fixture(scope="session")
def standin_221(tmp_path_factory: pytest.TempPathFactory) -> StandinFiles:
    _need_gcc()
    return build_standin(tmp_path_factory.mktemp("standin-2.21"), sdk_minor=21)
