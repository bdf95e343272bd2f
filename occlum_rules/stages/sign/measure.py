"""MRENCLAVE: the SHA-256 over ECREATE, EADD and EEXTEND records, without SGX hardware.

Each record is one 64-byte block (EEXTEND also hashes its 256 data bytes), all chained into
one digest. Big enclaves add millions of identical pages (reserved memory, stacks), so the
bulk path builds one buffer of many page records from a template, fills in the offsets with
strided array writes (C speed) and hashes it with a single ``update`` call.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Sequence

from occlum_rules.stages.sign import layout as L
from occlum_rules.stages.sign.elf_checks import PAGE, EnclaveElf, round_up

CHUNK = 256
ZERO_PAGE = bytes(PAGE)
_EADD = b"EADD\0\0\0\0"
_EEXTEND = b"EEXTEND\0"
# SECINFO bits sgx_sign accepts: R, W, X and the page type byte.
SECINFO_ALLOWED = 0x7 | 0xFF00
_BATCH_BYTES = 512 << 10


class Measurement:
    """A running MRENCLAVE computation, the way sgx_sign's sign-mode enclave creator does it."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.pages_added = 0
        self._templates: dict = {}

    def ecreate(self, ssa_frame_size: int, size: int) -> None:
        self._hash.update(b"ECREATE\0" + struct.pack("<IQ", ssa_frame_size, size) + bytes(44))

    def add_pages(self, rva: int, count: int, si_flags: int, page: bytes | None, extend: bool) -> None:
        """EADD (and EEXTEND) ``count`` consecutive pages that all hold ``page``."""
        if count <= 0:
            return
        if si_flags & ~SECINFO_ALLOWED:
            raise ValueError(f"invalid SECINFO flags {si_flags:#x}")
        buf, words, rec_len, batch = self._template(si_flags, page, extend)
        stride = rec_len // 8
        done = 0
        while done < count:
            n = min(batch, count - done)
            base = rva + done * PAGE
            end = base + n * PAGE
            words[1 : n * stride : stride] = array("Q", range(base, end, PAGE))
            if extend:
                for j in range(0, PAGE, CHUNK):
                    pos = (64 + (j // CHUNK) * (64 + CHUNK) + 8) // 8
                    words[pos : n * stride : stride] = array("Q", range(base + j, end + j, PAGE))
            self._hash.update(memoryview(buf)[: n * rec_len])
            done += n
        self.pages_added += count

    def _template(self, si_flags: int, page: bytes | None, extend: bool):
        """A reusable buffer of identical page records; only their offsets change per use."""
        key = (si_flags, page, extend)
        cached = self._templates.get(key)
        if cached is None:
            page = ZERO_PAGE if page is None else page
            record = bytearray(_EADD + bytes(8) + struct.pack("<Q", si_flags) + bytes(40))
            if extend:
                for j in range(0, PAGE, CHUNK):
                    record += _EEXTEND + bytes(56) + page[j : j + CHUNK]
            batch = max(1, _BATCH_BYTES // len(record))
            buf = bytearray(record * batch)
            cached = (buf, memoryview(buf).cast("Q"), len(record), batch)
            if len(self._templates) > 8:
                self._templates.clear()
            self._templates[key] = cached
        return cached

    def digest(self) -> bytes:
        return self._hash.digest()


def measure_segments(m: Measurement, image: bytes, elf: EnclaveElf) -> None:
    """EADD+EEXTEND every PT_LOAD page from the patched image (sgx_sign's build_mem_region)."""
    for seg in elf.segments:
        si = seg.si_flags
        offset = 0
        while offset < seg.filesz:
            rva = seg.vaddr + offset
            in_page = rva & (PAGE - 1)
            size = min(PAGE - in_page, seg.filesz - offset)
            src = seg.offset + offset
            page = bytes(in_page) + image[src : src + size]
            page += bytes(PAGE - len(page))
            page_si = si | 0x2 if (rva >> 12) in elf.reloc_pages else si
            m.add_pages(rva - in_page, 1, page_si, page, True)
            offset += PAGE - in_page
        if seg.memsz > offset:
            rva = seg.vaddr + offset
            size = round_up(seg.memsz - offset + (rva & (PAGE - 1)), PAGE)
            m.add_pages(rva & ~(PAGE - 1), size // PAGE, si, None, True)


def _tcs_page(template: bytes, rva: int) -> bytes:
    page = bytearray(PAGE)
    page[: len(template)] = template
    mask = (1 << 64) - 1
    for off in (16, 48, 56):  # ossa, ofs_base, ogs_base are relative to the TCS
        (value,) = struct.unpack_from("<Q", page, off)
        struct.pack_into("<Q", page, off, (value + rva) & mask)
    return bytes(page)


def measure_layout(m: Measurement, items: Sequence[L.Item], metadata: bytes, delta: int = 0) -> None:
    """Walk the layout table like the loader's build_contexts (groups repeat earlier entries)."""
    for i, item in enumerate(items):
        if isinstance(item, L.Group):
            first = i - item.entry_count
            for k in range(1, item.load_times + 1):
                measure_layout(m, items[first:i], metadata, delta + k * item.load_step)
            continue
        if not item.attributes & L.EADD:
            continue
        rva = delta + item.rva
        extend = bool(item.attributes & L.EEXTEND)
        if item.content_offset:
            content = metadata[item.content_offset : item.content_offset + item.content_size]
            if item.si_flags == L.SI_TCS:
                m.add_pages(rva, item.page_count, item.si_flags, _tcs_page(content, rva), extend)
            else:
                for p in range(item.page_count):
                    chunk = content[p * PAGE : (p + 1) * PAGE]
                    m.add_pages(rva + p * PAGE, 1, item.si_flags, chunk + bytes(PAGE - len(chunk)), True)
        elif item.si_flags:
            page = struct.pack("<I", item.content_size) * (PAGE // 4) if item.content_size else None
            m.add_pages(rva, item.page_count, item.si_flags, page, extend)


def mrenclave(image: bytes, elf: EnclaveElf, items: Sequence[L.Item], metadata: bytes,
              ssa_frame_size: int, enclave_size: int) -> tuple[bytes, int]:
    """(MRENCLAVE, bytes of EPC the enclave needs at load time)."""
    m = Measurement()
    m.ecreate(ssa_frame_size, enclave_size)
    measure_segments(m, image, elf)
    measure_layout(m, items, metadata)
    return m.digest(), m.pages_added * PAGE
