"""Check that an ELF has the shape of Occlum's LibOS enclave, as the build stages need it.

The stand-in is compiled on the user's machine with whatever gcc/ld is there, and a different
linker could lay it out differently. Checking the result here turns a bad layout into one clear
error at build time, instead of a confusing failure later in the MAC patch or the signer.
The checks are the ones ``sgx_sign`` makes on an enclave (sgx-sign spec §2.1, Occlum profile
sizes) plus the `.builtin_config` slot rules of the Occlum LibOS spec.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from occlum_rules.errors import UserError

BUILTIN_CONFIG_SECTION = ".builtin_config"
BUILTIN_CONFIG_SIZE = 47  # 16 MAC bytes as two hex digits each, joined by 15 '-'
BUILTIN_CONFIG_PATCH_SIZE = 48  # what `occlum-protect-integrity show-mac` writes: the text + '\n'
GLOBAL_DATA_SIZE = 1760  # sizeof(global_data_t) in the occlum/linux-sgx 2.20/2.21 forks
METADATA_NOTE_DESC_SIZE = 0x5000  # METADATA_SIZE in the same forks
METADATA_NOTE_NAME = b"sgx_metadata\0"
REQUIRED_DYNAMIC_SYMBOLS = ("enclave_entry", "g_global_data")

# Relocation types sgx_sign accepts (x86-64): NONE, 64, GLOB_DAT, JUMP_SLOT, RELATIVE,
# DTPMOD64, DTPOFF64, TPOFF64.
_ALLOWED_RELOC_TYPES = frozenset({0, 1, 6, 7, 8, 16, 17, 18})
_PT_LOAD_ALIGN = 4096


@dataclass(frozen=True)
class LibosShape:
    """What the later stages need to know about a LibOS-shaped ELF."""

    sdk_version: tuple[int, int, int]
    builtin_config_offset: int
    builtin_config_size: int
    builtin_config_slack: int  # bytes free after the slot before the next section/segment end


def check_libos_shape(path: Path) -> LibosShape:
    """Validate ``path`` as a signable, MAC-patchable LibOS ELF; raise UserError naming the flaw."""
    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            fh.seek(0)
            elf = ELFFile(fh)
            return _check(elf, data, where)
    except OSError as exc:
        raise UserError(f"cannot read LibOS ELF: {exc.strerror or exc}", where=where) from exc
    except ELFError as exc:
        raise UserError(f"not a valid ELF file: {exc}", where=where) from exc


def _check(elf: ELFFile, data: bytes, where: str) -> LibosShape:
    def fail(message: str) -> UserError:
        return UserError(f"not shaped like an Occlum LibOS enclave: {message}", where=where)

    header = elf.header
    if elf.elfclass != 64 or not elf.little_endian or header.e_machine != "EM_X86_64":
        raise fail("expected a 64-bit little-endian x86-64 ELF")
    if header.e_type != "ET_DYN":
        raise fail(f"e_type is {header.e_type}, expected ET_DYN (a PIE)")

    segments = list(elf.iter_segments())
    loads = [s for s in segments if s["p_type"] == "PT_LOAD"]
    if any(s["p_type"] == "PT_INTERP" for s in segments):
        raise fail("has a PT_INTERP; an enclave has no dynamic loader")
    if not any(s["p_type"] == "PT_DYNAMIC" for s in segments):
        raise fail("has no PT_DYNAMIC segment")
    for seg in loads:
        if seg["p_align"] % _PT_LOAD_ALIGN:
            raise fail(f"PT_LOAD at {seg['p_vaddr']:#x} has p_align {seg['p_align']:#x}")
        if seg["p_offset"] + seg["p_filesz"] > len(data):
            raise fail(f"PT_LOAD at {seg['p_vaddr']:#x} runs past the end of the file")

    _check_dynamic(elf, fail)
    _check_relocations(elf, fail)
    for name in (".init", ".ctors"):
        if elf.get_section_by_name(name) is not None:
            raise fail(f"has a {name} section, which sgx_sign rejects")
    _check_metadata_note(elf, data, fail)
    sdk_version = _read_sdk_version(elf, loads, data, fail)
    offset, size, slack = _check_builtin_config(elf, loads, fail)
    return LibosShape(sdk_version, offset, size, slack)


def _check_dynamic(elf: ELFFile, fail) -> None:
    dynsym = elf.get_section_by_name(".dynsym")
    if not isinstance(dynsym, SymbolTableSection):
        raise fail("has no .dynsym")
    names = set()
    for sym in dynsym.iter_symbols():
        if not sym.name:
            continue
        names.add(sym.name)
        if sym["st_shndx"] == "SHN_UNDEF" and sym["st_info"]["bind"] != "STB_WEAK":
            raise fail(f"undefined dynamic symbol {sym.name!r}")
    missing = [n for n in REQUIRED_DYNAMIC_SYMBOLS if n not in names]
    if missing:
        raise fail(f"does not export {', '.join(missing)}")
    dynamic = elf.get_section_by_name(".dynamic")
    for tag in dynamic.iter_tags() if isinstance(dynamic, DynamicSection) else ():
        if tag.entry.d_tag in ("DT_TEXTREL", "DT_REL"):
            raise fail(f"has {tag.entry.d_tag}")
        if tag.entry.d_tag == "DT_FLAGS" and tag.entry.d_val & 0x4:  # DF_TEXTREL
            raise fail("has DF_TEXTREL (text relocations)")


def _check_relocations(elf: ELFFile, fail) -> None:
    exec_ranges = [
        (s["sh_addr"], s["sh_addr"] + s["sh_size"], s.name)
        for s in elf.iter_sections()
        if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR
    ]
    for section in elf.iter_sections():
        if (
            not isinstance(section, RelocationSection)
            or not section["sh_flags"] & SH_FLAGS.SHF_ALLOC
        ):
            continue
        if not section.is_RELA():
            raise fail(f"{section.name} is REL; x86-64 enclaves use RELA only")
        for rel in section.iter_relocations():
            if rel["r_info_type"] not in _ALLOWED_RELOC_TYPES:
                raise fail(f"relocation type {rel['r_info_type']} in {section.name}")
            for lo, hi, name in exec_ranges:
                if lo <= rel["r_offset"] < hi:
                    raise fail(f"text relocation at {rel['r_offset']:#x} in {name}")


def _check_metadata_note(elf: ELFFile, data: bytes, fail) -> None:
    note = elf.get_section_by_name(".note.sgxmeta")
    if note is None:
        raise fail("has no .note.sgxmeta section")
    if note["sh_flags"] & SH_FLAGS.SHF_ALLOC:
        raise fail(".note.sgxmeta must not be SHF_ALLOC")
    off = note["sh_offset"]
    namesz, descsz, ntype = struct.unpack_from("<III", data, off)
    name = data[off + 12 : off + 12 + namesz]
    if namesz != len(METADATA_NOTE_NAME) or name != METADATA_NOTE_NAME or ntype != 1:
        raise fail(".note.sgxmeta is not an 'sgx_metadata' note of type 1")
    if descsz != METADATA_NOTE_DESC_SIZE:
        raise fail(
            f".note.sgxmeta desc is {descsz:#x} bytes, the Occlum SDK needs {METADATA_NOTE_DESC_SIZE:#x}"
        )
    align = max(note["sh_addralign"], 1)
    want = -(-(12 + namesz + descsz) // align) * align
    if note["sh_size"] != want:
        raise fail(f".note.sgxmeta sh_size is {note['sh_size']:#x}, expected {want:#x}")


def _read_sdk_version(elf: ELFFile, loads, data: bytes, fail) -> tuple[int, int, int]:
    dynsym = elf.get_section_by_name(".dynsym")
    found = dynsym.get_symbol_by_name("g_global_data") if isinstance(dynsym, SymbolTableSection) else None
    if not found:
        raise fail("does not define g_global_data")
    sym = found[0]
    if sym["st_size"] != GLOBAL_DATA_SIZE:
        raise fail(
            f"g_global_data is {sym['st_size']} bytes, the Occlum SDK needs {GLOBAL_DATA_SIZE}"
        )
    addr = sym["st_value"]
    for seg in loads:
        if seg["p_vaddr"] <= addr and addr + 8 <= seg["p_vaddr"] + seg["p_filesz"]:
            (word,) = struct.unpack_from("<Q", data, seg["p_offset"] + addr - seg["p_vaddr"])
            return (word >> 32, (word >> 16) & 0xFFFF, word & 0xFFFF)
    raise fail("g_global_data is not in file-backed bytes of a PT_LOAD")


def _check_builtin_config(elf: ELFFile, loads, fail) -> tuple[int, int, int]:
    section = elf.get_section_by_name(BUILTIN_CONFIG_SECTION)
    if section is None:
        raise fail(f"has no {BUILTIN_CONFIG_SECTION} section")
    if section["sh_type"] != "SHT_PROGBITS":
        raise fail(f"{BUILTIN_CONFIG_SECTION} is {section['sh_type']}, expected PROGBITS")
    if section["sh_flags"] != SH_FLAGS.SHF_ALLOC:
        raise fail(f"{BUILTIN_CONFIG_SECTION} must be read-only data (flags 'a')")
    if section["sh_size"] != BUILTIN_CONFIG_SIZE or section["sh_addralign"] != 1:
        raise fail(
            f"{BUILTIN_CONFIG_SECTION} is {section['sh_size']} bytes aligned "
            f"{section['sh_addralign']}, expected {BUILTIN_CONFIG_SIZE} aligned 1"
        )
    start = section["sh_offset"]
    end = start + section["sh_size"]
    segment = next(
        (s for s in loads if s["p_offset"] <= start and end <= s["p_offset"] + s["p_filesz"]), None
    )
    if segment is None:
        raise fail(f"{BUILTIN_CONFIG_SECTION} is not in the file bytes of a PT_LOAD (not measured)")
    if segment["p_flags"] & (P_FLAGS.PF_W | P_FLAGS.PF_X):
        raise fail(f"{BUILTIN_CONFIG_SECTION} is in a writable or executable segment")
    limit = segment["p_offset"] + segment["p_filesz"]
    for other in elf.iter_sections():
        if other is section or other["sh_type"] in ("SHT_NULL", "SHT_NOBITS"):
            continue
        if other["sh_offset"] >= end:
            limit = min(limit, other["sh_offset"])
        elif other["sh_offset"] < end < other["sh_offset"] + other["sh_size"]:
            raise fail(f"{BUILTIN_CONFIG_SECTION} overlaps {other.name}")
    slack = limit - end
    if start + BUILTIN_CONFIG_PATCH_SIZE > limit:
        raise fail(
            f"no slack after {BUILTIN_CONFIG_SECTION}: the {BUILTIN_CONFIG_PATCH_SIZE}-byte MAC "
            "text would not fit in place"
        )
    return start, section["sh_size"], slack
