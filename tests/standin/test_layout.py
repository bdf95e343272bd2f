"""The stand-in LibOS has the ELF shape the signer and the `.builtin_config` patch need.

These tests read the built file with pyelftools directly rather than through
``occlum_rules.standin.shape``, so a mistake in that checker cannot hide a bad layout.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from occlum_rules.standin.build import StandinFiles

R_X86_64_RELATIVE = 8


def _elf(path: Path) -> tuple[ELFFile, bytes]:
    data = path.read_bytes()
    fh = open(path, "rb")  # noqa: SIM115 - kept open for pyelftools' lazy reads
    return ELFFile(fh), data


@pytest.fixture(scope="module")
def libos(standin: StandinFiles):
    elf, data = _elf(standin.libos)
    yield elf, data
    elf.stream.close()


def _sdk_word(elf: ELFFile, data: bytes) -> int:
    sym = elf.get_section_by_name(".dynsym").get_symbol_by_name("g_global_data")[0]
    for seg in elf.iter_segments():
        lo = seg["p_vaddr"]
        if seg["p_type"] == "PT_LOAD" and lo <= sym["st_value"] < lo + seg["p_filesz"]:
            return struct.unpack_from("<Q", data, seg["p_offset"] + sym["st_value"] - lo)[0]
    raise AssertionError("g_global_data not file-backed")


def test_is_a_pie_without_interpreter(libos) -> None:
    elf, _ = libos
    assert elf.elfclass == 64 and elf.little_endian
    assert elf.header.e_machine == "EM_X86_64"
    assert elf.header.e_type == "ET_DYN"
    types = [s["p_type"] for s in elf.iter_segments()]
    assert "PT_INTERP" not in types
    assert "PT_DYNAMIC" in types
    assert types.count("PT_TLS") == 1
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD":
            assert seg["p_align"] % 4096 == 0
            assert seg["p_flags"] & (P_FLAGS.PF_R | P_FLAGS.PF_W | P_FLAGS.PF_X)


def test_builtin_config_slot_shape_and_slack(libos) -> None:
    elf, data = libos
    sec = elf.get_section_by_name(".builtin_config")
    assert sec is not None
    assert sec["sh_type"] == "SHT_PROGBITS"
    assert sec["sh_flags"] == SH_FLAGS.SHF_ALLOC
    assert sec["sh_size"] == 47
    assert sec["sh_addralign"] == 1
    start, end = sec["sh_offset"], sec["sh_offset"] + sec["sh_size"]
    assert data[start:end] == bytes(47)
    seg = _load_containing(elf, start)
    assert sec["sh_addr"] - seg["p_vaddr"] == start - seg["p_offset"]
    assert seg["p_flags"] == P_FLAGS.PF_R, "the slot must be in a read-only, measured segment"
    assert end + 1 <= seg["p_offset"] + seg["p_filesz"], "the 48th byte must stay in the segment"
    following = [
        s["sh_offset"]
        for s in elf.iter_sections()
        if s.name != ".builtin_config" and s["sh_type"] != "SHT_NULL" and s["sh_offset"] >= end
    ]
    assert min(following) - end >= 1, "objcopy needs slack to grow the slot to 48 bytes in place"


def _load_containing(elf: ELFFile, offset: int):
    for seg in elf.iter_segments():
        if (
            seg["p_type"] == "PT_LOAD"
            and seg["p_offset"] <= offset < seg["p_offset"] + seg["p_filesz"]
        ):
            return seg
    raise AssertionError(f"offset {offset:#x} is in no PT_LOAD")


def test_slot_is_read_by_code(libos) -> None:
    """Some RIP-relative operand in .text resolves to the slot, so the slot is really read."""
    elf, data = libos
    slot = elf.get_section_by_name(".builtin_config")["sh_addr"]
    text = elf.get_section_by_name(".text")
    code = text.data()
    hits = [
        i
        for i in range(len(code) - 4)
        if text["sh_addr"] + i + 4 + struct.unpack_from("<i", code, i)[0] == slot
    ]
    assert hits, "no RIP-relative reference to .builtin_config in .text"


def test_metadata_note(libos) -> None:
    elf, data = libos
    note = elf.get_section_by_name(".note.sgxmeta")
    assert note["sh_type"] == "SHT_NOTE"
    assert not note["sh_flags"] & SH_FLAGS.SHF_ALLOC
    namesz, descsz, ntype = struct.unpack_from("<III", data, note["sh_offset"])
    assert (namesz, descsz, ntype) == (13, 0x5000, 1)
    assert data[note["sh_offset"] + 12 : note["sh_offset"] + 25] == b"sgx_metadata\0"
    align = note["sh_addralign"]
    assert note["sh_size"] == -(-(12 + 13 + 0x5000) // align) * align == 0x501C


def test_required_symbols_and_sdk_version(libos, standin_221: StandinFiles) -> None:
    elf, data = libos
    dynsym = elf.get_section_by_name(".dynsym")
    names = {s.name: s for s in dynsym.iter_symbols() if s.name}
    for name in ("enclave_entry", "g_global_data", "g_peak_heap_used", "g_peak_rsrv_mem_committed"):
        assert name in names and names[name]["st_shndx"] != "SHN_UNDEF", name
    assert names["g_global_data"]["st_size"] == 1760
    assert names["enclave_entry"]["st_value"] == elf.header.e_entry
    assert _sdk_word(elf, data) == (2 << 32) | (20 << 16) | 100

    elf21, data21 = _elf(standin_221.libos)
    with elf21.stream:
        assert _sdk_word(elf21, data21) == (2 << 32) | (21 << 16) | 100
    assert standin_221.sdk_version == (2, 21, 100)
    # Only the version word differs between the two profiles.
    assert len(data21) == len(data)
    assert sum(a != b for a, b in zip(data, data21, strict=True)) == 1


def test_no_undefined_symbols_no_text_relocations(libos) -> None:
    elf, _ = libos
    for sym in elf.get_section_by_name(".dynsym").iter_symbols():
        if sym.name:
            assert sym["st_shndx"] != "SHN_UNDEF", sym.name
    exec_ranges = [
        (s["sh_addr"], s["sh_addr"] + s["sh_size"])
        for s in elf.iter_sections()
        if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR
    ]
    relocs = [
        r
        for s in elf.iter_sections()
        if isinstance(s, RelocationSection)
        for r in s.iter_relocations()
    ]
    assert relocs, "expected at least one RELATIVE relocation (a pointer in .data)"
    for rel in relocs:
        assert rel["r_info_type"] == R_X86_64_RELATIVE
        assert not any(lo <= rel["r_offset"] < hi for lo, hi in exec_ranges)
    tags = {t.entry.d_tag for t in elf.get_section_by_name(".dynamic").iter_tags()}
    assert "DT_TEXTREL" not in tags and "DT_REL" not in tags
    assert elf.get_section_by_name(".init") is None and elf.get_section_by_name(".ctors") is None


def test_every_file_says_it_is_a_stand_in(standin: StandinFiles) -> None:
    for path in (standin.libos, standin.pal, standin.init, standin.occlum_run):
        assert b"stand-in LibOS: this instance cannot run on SGX" in path.read_bytes(), path.name
