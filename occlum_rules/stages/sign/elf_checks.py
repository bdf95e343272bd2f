"""The enclave ELF as sgx_sign sees it: structural checks and the facts the signer needs.

sgx_sign's ELF parser is strict in specific ways (ET_DYN only, RELA only with a short list
of relocation types, no undefined strong dynamic symbols, a ``.note.sgxmeta`` note with an
unpadded ``sgx_metadata`` name, ...). Every check here mirrors one of its checks, so an
enclave we accept is one the real tool accepts, and the loader later agrees with us.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from occlum_rules.stages.sign.errors import SignError

INVALID_ENCLAVE = "The input enclave file is not correct."

PT_LOAD, PT_DYNAMIC, PT_TLS = 1, 2, 7
PF_X, PF_W, PF_R = 1, 2, 4
SI_R, SI_W, SI_X, SI_REG, SI_TCS = 0x1, 0x2, 0x4, 0x200, 0x100
SHF_EXECINSTR = 0x4
DT_NULL, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ = 0, 5, 6, 7, 8
DT_REL, DT_TEXTREL, DT_PLTRELSZ, DT_JMPREL = 17, 22, 2, 23
# R_X86_64_NONE, 64, GLOB_DAT, JUMP_SLOT, RELATIVE, DTPMOD64, DTPOFF64, TPOFF64
ALLOWED_RELOCS = frozenset({0, 1, 6, 7, 8, 16, 17, 18})
WANTED_SYMBOLS = ("enclave_entry", "g_global_data_sim", "g_peak_heap_used", "g_global_data",
                  "g_peak_rsrv_mem_committed")
PAGE = 0x1000


def round_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1) if align > 1 else value


@dataclass(frozen=True)
class LoadSegment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int  # p_flags

    @property
    def si_flags(self) -> int:
        si = SI_REG
        if self.flags & PF_R:
            si |= SI_R
        if self.flags & PF_W:
            si |= SI_W
        if self.flags & PF_X:
            si |= SI_X
        return si


@dataclass
class EnclaveElf:
    """What signing needs to know about one enclave file."""

    data: bytes
    segments: list[LoadSegment]
    tls_vsize: int | None
    symbols: dict[str, int]
    meta_offset: int  # file offset of the metadata blob inside .note.sgxmeta
    meta_block_size: int  # the note's descsz
    has_init: bool
    textrel_offsets: list[int]  # r_offset of relocations inside executable sections
    reloc_pages: set[int] = field(default_factory=set)  # pages made writable (DT_TEXTREL)

    @property
    def image_end(self) -> int:
        """Page-rounded end of the PT_LOAD with the highest vaddr (sgx_sign's rule)."""
        last = None
        for seg in self.segments:
            if seg.vaddr > (last.vaddr if last else 0):
                last = seg
        if last is None:
            raise SignError(INVALID_ENCLAVE, "Sections size is 0")
        return round_up(last.vaddr + last.memsz, PAGE)

    def rva_to_offset(self, rva: int, size: int) -> int | None:
        """File offset of ``size`` file-backed bytes at ``rva``, or None (e.g. in .bss)."""
        for seg in self.segments:
            start = seg.vaddr & ~(PAGE - 1)
            end = round_up(seg.vaddr + seg.memsz, PAGE)
            if start <= rva < end:
                delta = rva - seg.vaddr
                if delta < 0 or delta + size > seg.filesz:
                    return None
                return seg.offset + delta
        return None

    def global_data_offset(self, size: int) -> int:
        rva = self.symbols.get("g_global_data", 0)
        if rva == 0:
            raise SignError(INVALID_ENCLAVE, "Could not find g_global_data")
        off = self.rva_to_offset(rva, size)
        if off is None:
            raise SignError(INVALID_ENCLAVE, "g_global_data is not in file-backed data of a PT_LOAD")
        return off

    def sdk_version_word(self) -> int:
        off = self.global_data_offset(8)
        return struct.unpack_from("<Q", self.data, off)[0]


def _fail(*detail: str) -> SignError:
    return SignError(INVALID_ENCLAVE, *detail)


def parse_enclave_elf(data: bytes) -> EnclaveElf:
    """Run sgx_sign's ELF parser checks and collect what signing needs."""
    try:
        return _parse(data)
    except (ELFError, struct.error, IndexError, KeyError, ValueError) as exc:
        raise _fail(f"({exc})") from exc


def _parse(data: bytes) -> EnclaveElf:
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise _fail("Incorrect magic number")
    if data[4] != 2 or data[5] != 1 or data[6] != 1:
        raise _fail("Expected a 64-bit little-endian ELF (ELFCLASS64, ELFDATA2LSB, EV_CURRENT)")
    (e_type, e_machine, _, e_entry, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, _,
     _, _) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_type != 3:
        raise _fail("Expected ET_DYN (build the enclave with -fpie/-pie)")
    if e_phentsize != 56:
        raise _fail("Expected e_phentsize == 56")
    if e_machine != 62:
        raise _fail("Expected EM_X86_64")

    phdrs = [struct.unpack_from("<IIQQQQQQ", data, e_phoff + 56 * i) for i in range(e_phnum)]
    spans: list[tuple[int, int]] = []
    for p_type, _, p_offset, p_vaddr, _, p_filesz, p_memsz, p_align in phdrs:
        if len(data) < p_offset + p_filesz:
            raise _fail("A segment lies beyond the end of the file")
        if p_type == PT_LOAD:
            if p_align % PAGE:
                raise _fail(f"A segment is not PAGE aligned, alignment = {p_align:#x}")
            span = (p_vaddr, round_up(p_vaddr + p_memsz, p_align) - 1)
            for other in spans:
                if span[0] <= other[1] and other[0] <= span[1]:
                    raise _fail("Overlapping PT_LOAD segments")
            spans.append(span)

    dyn = _parse_dynamic(data, phdrs)
    elf = ELFFile(io.BytesIO(data))
    sections = list(elf.iter_sections())

    def by_addr(addr: int):
        return next((s for s in sections if s["sh_addr"] == addr), None)

    def by_name(name: str):
        return next((s for s in sections if s.name == name), None)

    symbols = _check_symbols(data, dyn, by_addr, e_entry)
    _check_relocations(data, dyn, by_addr)
    if by_name(".ctors") is not None:
        raise _fail("ERROR: .ctors section is found, global initializers will not be invoked correctly!")
    meta_offset, meta_block_size = _metadata_note(data, by_name(".note.sgxmeta"))

    segments: list[LoadSegment] = []
    tls_vsize = None
    for p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, p_align in phdrs:
        if p_type not in (PT_LOAD, PT_TLS):
            continue
        if not p_flags & (PF_R | PF_W | PF_X):
            raise _fail("A PT_LOAD/PT_TLS segment has none of the R, W, X flags")
        if p_type == PT_LOAD:
            segments.append(LoadSegment(p_vaddr, p_offset, p_filesz, p_memsz, p_flags))
        else:
            tls_vsize = p_memsz if p_align <= 1 else round_up(p_memsz, p_align)

    return EnclaveElf(
        data=data,
        segments=segments,
        tls_vsize=tls_vsize,
        symbols=symbols,
        meta_offset=meta_offset,
        meta_block_size=meta_block_size,
        has_init=by_name(".init") is not None,
        textrel_offsets=_text_relocations(data, sections, by_name),
        reloc_pages=_reloc_pages(data, dyn, by_addr) if DT_TEXTREL in dyn else set(),
    )


def _parse_dynamic(data: bytes, phdrs) -> dict[int, int]:
    for p_type, _, p_offset, *_ in phdrs:
        if p_type != PT_DYNAMIC:
            continue
        dyn: dict[int, int] = {}
        pos = p_offset
        while True:
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            dyn[tag] = val
            pos += 16
        if not dyn:
            raise _fail("The dynamic segment is empty")
        return dyn
    raise _fail("There is no PT_DYNAMIC segment")


def _check_symbols(data: bytes, dyn: dict[int, int], by_addr, e_entry: int) -> dict[str, int]:
    symtab = by_addr(dyn.get(DT_SYMTAB, 0))
    if symtab is None:
        raise _fail("There is no .dynsym section")
    if symtab["sh_entsize"] == 0:
        raise _fail("In section .dynsym, sh_entsize is 0.")
    strtab = by_addr(dyn.get(DT_STRTAB, 0))
    str_off = strtab["sh_offset"] if strtab is not None else 0
    found: dict[str, int] = {}
    count = symtab["sh_size"] // symtab["sh_entsize"]
    for idx in range(1, count):
        st_name, st_info, _, st_shndx, st_value, _ = struct.unpack_from(
            "<IBBHQQ", data, symtab["sh_offset"] + idx * symtab["sh_entsize"]
        )
        if st_name == 0:
            continue
        end = data.index(b"\0", str_off + st_name)
        name = data[str_off + st_name : end].decode("utf-8", "replace")
        if st_shndx == 0 and (st_info >> 4) != 2:  # SHN_UNDEF and not STB_WEAK
            raise _fail(f"symbol '{name}' is undefined")
        if name in WANTED_SYMBOLS:
            found[name] = st_value
    found.setdefault("enclave_entry", e_entry)
    return found


def _rela_entries(data: bytes, section, size: int):
    if size == 0:
        return
    if section is None:
        raise _fail("A relocation table named by the dynamic section has no section")
    base = section["sh_offset"]
    for i in range(size // 24):
        yield struct.unpack_from("<QQq", data, base + 24 * i)


def _check_relocations(data: bytes, dyn: dict[int, int], by_addr) -> None:
    if dyn.get(DT_REL, 0):
        raise _fail("Rel struct detected on x64")
    for addr_tag, size_tag in ((DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)):
        section = by_addr(dyn.get(addr_tag, 0))
        for _, r_info, _ in _rela_entries(data, section, dyn.get(size_tag, 0)):
            if r_info & 0xFFFFFFFF not in ALLOWED_RELOCS:
                raise _fail(f"unsupported relocation type {r_info & 0xFFFFFFFF} detected")


def _reloc_pages(data: bytes, dyn: dict[int, int], by_addr) -> set[int]:
    pages: set[int] = set()
    for addr_tag, size_tag in ((DT_JMPREL, DT_PLTRELSZ), (DT_RELA, DT_RELASZ)):
        if not dyn.get(addr_tag):
            continue
        section = by_addr(dyn[addr_tag])
        for r_offset, r_info, _ in _rela_entries(data, section, dyn.get(size_tag, 0)):
            if r_info & 0xFFFFFFFF == 0:
                continue
            pages.add(r_offset >> 12)
            if (r_offset & (PAGE - 1)) > PAGE - 8:
                pages.add((r_offset >> 12) + 1)
    return pages


def _text_relocations(data: bytes, sections, by_name) -> list[int]:
    found: list[int] = []
    for sec in sections:
        if not sec["sh_flags"] & SHF_EXECINSTR:
            continue
        target = by_name(sec.name)
        start, end = target["sh_addr"], target["sh_addr"] + target["sh_size"]
        for rel in sections:
            if rel["sh_type"] not in ("SHT_RELA", "SHT_REL") or not rel["sh_entsize"]:
                continue
            for i in range(rel["sh_size"] // rel["sh_entsize"]):
                (r_offset,) = struct.unpack_from("<Q", data, rel["sh_offset"] + i * rel["sh_entsize"])
                if start <= r_offset < end:
                    found.append(r_offset)
    return found


def _metadata_note(data: bytes, shdr) -> tuple[int, int]:
    if shdr is None:
        raise _fail("ERROR: The enclave image should have '.note.sgxmeta' section")
    off = shdr["sh_offset"]
    namesz, descsz, _ = struct.unpack_from("<III", data, off)
    if shdr["sh_size"] != round_up(12 + namesz + descsz, max(shdr["sh_addralign"], 1)):
        raise _fail("ERROR: The '.note.sgxmeta' section size is not correct.")
    if namesz != 13 or data[off + 12 : off + 12 + 13] != b"sgx_metadata\0":
        raise _fail('ERROR: The note in the \'.note.sgxmeta\' section must be named as "sgx_metadata"')
    return off + 12 + namesz, descsz
