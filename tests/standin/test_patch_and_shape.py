"""The slot takes Occlum's in-place 48-byte MAC patch, and the shape checker catches bad ELFs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from occlum_rules.errors import UserError
from occlum_rules.standin.build import StandinFiles
from occlum_rules.standin.shape import check_libos_shape

# The `occlum-protect-integrity show-mac` format: 16 lower-case hex pairs joined by '-', then '\n'.
SAMPLE_MAC_TEXT = "-".join(f"{b:02x}" for b in bytes(range(0xA0, 0xB0))).encode() + b"\n"


def _slot(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        sec = ELFFile(fh).get_section_by_name(".builtin_config")
        return sec["sh_offset"], sec["sh_size"]


def test_objcopy_update_section_patches_in_place(standin: StandinFiles, tmp_path: Path) -> None:
    """What occlum_build.mk does: objcopy grows the slot to 48 bytes and moves nothing."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        pytest.skip("GNU objcopy not found")
    assert len(SAMPLE_MAC_TEXT) == 48
    target = tmp_path / "libocclum-libos.so.0.31.0"
    shutil.copyfile(standin.libos, target)
    mac = tmp_path / "tmp_mac"
    mac.write_bytes(SAMPLE_MAC_TEXT)
    proc = subprocess.run(
        [objcopy, "--update-section", f".builtin_config={mac}", str(target)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", "objcopy warned: the section could not be grown in place"

    before, after = standin.libos.read_bytes(), target.read_bytes()
    assert len(after) == len(before)
    offset, size = _slot(target)
    assert (offset, size) == (_slot(standin.libos)[0], 48)
    assert after[offset : offset + 48] == SAMPLE_MAC_TEXT
    diff = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    outside = [i for i in diff if not offset <= i < offset + 48]
    assert len(outside) == 1, "only the low byte of the section's sh_size may change elsewhere"


def test_shape_checker_accepts_the_stand_in(standin: StandinFiles) -> None:
    shape = check_libos_shape(standin.libos)
    assert shape.sdk_version == standin.sdk_version == (2, 20, 100)
    assert shape.builtin_config_size == 47
    assert shape.builtin_config_slack >= 1
    assert shape.builtin_config_offset == _slot(standin.libos)[0]


def test_shape_checker_rejects_a_grown_slot(standin: StandinFiles, tmp_path: Path) -> None:
    """A LibOS whose slot is already 48 bytes is not a pristine LibOS any more."""
    data = bytearray(standin.libos.read_bytes())
    with open(standin.libos, "rb") as fh:
        elf = ELFFile(fh)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".builtin_config")
        shoff, shentsize = elf.header.e_shoff, elf.header.e_shentsize
    size_field = shoff + index * shentsize + 32  # sh_size in an Elf64_Shdr
    data[size_field] = 48
    bad = tmp_path / "grown.so"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="47 aligned 1"):
        check_libos_shape(bad)


def test_shape_checker_rejects_an_ordinary_pie(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    src = tmp_path / "plain.c"
    src.write_text("int main(void) { return 0; }\n")
    out = tmp_path / "plain"
    subprocess.run(["gcc", "-fpie", "-pie", str(src), "-o", str(out)], check=True)
    with pytest.raises(UserError) as info:
        check_libos_shape(out)
    assert str(out) in str(info.value)
    assert "PT_INTERP" in info.value.message


def test_shape_checker_rejects_non_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf at all")
    with pytest.raises(UserError, match="not a valid ELF"):
        check_libos_shape(junk)
    with pytest.raises(UserError, match="cannot read"):
        check_libos_shape(tmp_path / "missing.so")
