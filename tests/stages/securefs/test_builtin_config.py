"""The .builtin_config patch: stand-in vector, real gcc/objcopy output, refusals."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from occlum_rules.cli import main as cli
from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.builtin_config import patch_builtin_config
from tests.conftest import vectors_path

MAC = b"3e-0b-8c-71-fa-12-9d-44-a0-5e-c3-27-b6-d9-01-8f\n"

SLOT = '__asm__(".section .builtin_config,\\"a\\",@progbits\\n.zero 47\\n{after}.text\\n");\nint f(void) {{ return 0; }}\n'


def _compile(tmp_path, name: str, after: str = "") -> str:
    if not shutil.which("gcc"):
        pytest.skip("gcc not available")
    c = tmp_path / f"{name}.c"
    c.write_text(SLOT.format(after=after))
    out = tmp_path / f"{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(c)], check=True)
    return str(out)


def test_standin_vector_through_symlinks(tmp_path, capsys):
    v = vectors_path("libos-standin")
    real = tmp_path / "libocclum-libos.so.0.31.0"
    shutil.copy(v / "libos_standin_unpatched.so", real)
    os.symlink(real.name, tmp_path / "libocclum-libos.so.0")
    os.symlink("libocclum-libos.so.0", tmp_path / "libocclum-libos.so")
    rc = cli(["patch-builtin-config", str(tmp_path / "libocclum-libos.so"), str(v / "tmp_mac")])
    assert rc == 0, capsys.readouterr().err
    assert real.read_bytes() == (v / "libos_standin_patched.so").read_bytes()
    assert os.path.islink(tmp_path / "libocclum-libos.so")  # the real file was patched
    assert os.stat(real).st_mode & 0o777 == os.stat(v / "libos_standin_unpatched.so").st_mode & 0o777


def test_matches_objcopy_on_a_gcc_built_library(tmp_path):
    so = _compile(tmp_path, "ok")
    if not shutil.which("objcopy"):
        pytest.skip("objcopy not available")
    ref = tmp_path / "ref.so"
    shutil.copy(so, ref)
    (tmp_path / "mac").write_bytes(MAC)
    subprocess.run(["objcopy", "--update-section", f".builtin_config={tmp_path / 'mac'}", str(ref)], check=True)
    patch_builtin_config(so, MAC)
    assert open(so, "rb").read() == ref.read_bytes()


def test_refuses_when_the_next_section_leaves_no_room(tmp_path):
    so = _compile(tmp_path, "tight", after='.section .after_cfg,\\"a\\",@progbits\\n.byte 1\\n')
    before = open(so, "rb").read()
    with pytest.raises(UserError, match="does not fit in place"):
        patch_builtin_config(so, MAC)
    assert open(so, "rb").read() == before


def test_refuses_without_the_section_or_an_elf(tmp_path, capsys):
    if not shutil.which("gcc"):
        pytest.skip("gcc not available")
    (tmp_path / "plain.c").write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "plain.so"), str(tmp_path / "plain.c")], check=True)
    (tmp_path / "mac").write_bytes(MAC)
    assert cli(["patch-builtin-config", str(tmp_path / "plain.so"), str(tmp_path / "mac")]) == 1
    assert "no .builtin_config section" in capsys.readouterr().err
    (tmp_path / "junk.so").write_bytes(b"not an elf at all")
    with pytest.raises(UserError, match="not a valid ELF"):
        patch_builtin_config(tmp_path / "junk.so", MAC)
    with pytest.raises(UserError, match="not found"):
        patch_builtin_config(tmp_path / "missing.so", MAC)
