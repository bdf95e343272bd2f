"""Reproducible builds from anywhere, and clear errors when the compiler is missing or fails."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from occlum_rules.errors import UserError
from occlum_rules.standin.build import build_standin, standin_sources, toolchain_identity

OUTPUTS = ("libocclum-libos.so", "libocclum-pal.so", "init", "occlum-run")


def _copy_sources(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for src in standin_sources():
        shutil.copyfile(src, dest / src.name)
    return dest


@pytest.fixture
def gcc() -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    return "gcc"


def test_sources_list_is_complete_and_sorted() -> None:
    sources = standin_sources()
    assert [p.name for p in sources] == sorted(p.name for p in sources)
    assert all(p.is_file() for p in sources)
    names = {p.name for p in sources}
    assert {"libos_standin.c", "pal_standin.c", "init_standin.c", "run_standin.c"} <= names
    assert {"standin.h", "standin.lds", "build.py"} <= names


def test_same_sources_same_bytes_from_two_directories(tmp_path: Path, gcc: str) -> None:
    src_a = _copy_sources(tmp_path / "a")
    src_b = _copy_sources(tmp_path / "some" / "much" / "longer" / "checkout-path" / "b")
    out_a = build_standin(tmp_path / "out-a", cc=gcc, src_dir=src_a)
    out_b = build_standin(tmp_path / "elsewhere" / "out-b", cc=gcc, src_dir=src_b)
    for name in OUTPUTS:
        a = (tmp_path / "out-a" / name).read_bytes()
        b = (tmp_path / "elsewhere" / "out-b" / name).read_bytes()
        assert a == b, f"{name} differs between builds from two directories"
        for leak in (str(tmp_path), "checkout-path", ".standin-build-"):
            assert leak.encode() not in a, f"{name} leaks {leak!r}"
    assert out_a.libos.name == out_b.libos.name == "libocclum-libos.so"


def test_outputs_are_executable_and_no_work_dir_is_left(tmp_path: Path, gcc: str) -> None:
    files = build_standin(tmp_path / "out", cc=gcc)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    for path in (files.libos, files.pal, files.init, files.occlum_run):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_missing_compiler_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        build_standin(tmp_path / "out", cc="no-such-cc-for-standin")
    assert "no-such-cc-for-standin" in info.value.message
    assert "not found" in info.value.message


def test_compiler_failure_names_compiler_and_its_error(tmp_path: Path, gcc: str) -> None:
    src = _copy_sources(tmp_path / "src")
    with open(src / "libos_standin.c", "a") as fh:
        fh.write("\nthis is not C;\n")
    with pytest.raises(UserError) as info:
        build_standin(tmp_path / "out", cc=gcc, src_dir=src)
    message = info.value.message
    assert "'gcc'" in message and "stand-in LibOS" in message
    assert "libos_standin.c" in message and "error" in message
    assert "\n" not in message
    assert ".standin-build-" not in message
    assert not (tmp_path / "out" / "libocclum-libos.so").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_source_is_a_user_error(tmp_path: Path, gcc: str) -> None:
    src = _copy_sources(tmp_path / "src")
    (src / "standin.lds").unlink()
    with pytest.raises(UserError) as info:
        build_standin(tmp_path / "out", cc=gcc, src_dir=src)
    assert info.value.where == str(src / "standin.lds")


def test_unsupported_sdk_version_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="2.26"):
        build_standin(tmp_path / "out", sdk_minor=26)


def test_layout_without_slack_is_refused(tmp_path: Path, gcc: str) -> None:
    """A linker layout that leaves no room for the 48-byte patch fails the build loudly."""
    src = _copy_sources(tmp_path / "src")
    (src / "standin.lds").write_text(
        "SECTIONS\n{\n  .builtin_config : { KEEP(*(.builtin_config)) }\n"
        "  .right_after : { BYTE(1) }\n}\nINSERT AFTER .rodata;\n"
    )
    with pytest.raises(UserError, match="no slack after .builtin_config") as info:
        build_standin(tmp_path / "out", cc=gcc, src_dir=src)
    assert "'gcc'" in info.value.message
    assert list((tmp_path / "out").iterdir()) == []


def test_toolchain_identity_names_compiler_and_linker(gcc: str) -> None:
    identity = toolchain_identity(gcc)
    compiler_line, linker_line = identity.split("; ")
    assert compiler_line and linker_line
    assert identity == toolchain_identity(gcc)
    with pytest.raises(UserError, match="no-such-cc"):
        toolchain_identity("no-such-cc")


def test_compiler_for_another_target_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "aarch64-cc"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = -dumpmachine ] && echo aarch64-linux-gnu && exit 0\nexit 1\n'
    )
    fake.chmod(0o755)
    with pytest.raises(UserError, match="does not target x86-64") as info:
        build_standin(tmp_path / "out", cc=str(fake))
    assert "aarch64-linux-gnu" in info.value.message
    assert not (tmp_path / "out").exists()
