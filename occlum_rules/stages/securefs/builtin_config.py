"""Write the config MAC into the LibOS's ``.builtin_config`` section, without objcopy.

Occlum runs ``objcopy --update-section .builtin_config=tmp_mac``. On a LibOS whose
section is followed by padding, that rewrites the section bytes in place and sets
``sh_size`` to the new length (47 → 48: the MAC text plus its newline), changing nothing
else. We do exactly that, and refuse — rather than imitate objcopy's relayout — when the
new content would not fit before the next section, the header tables, or the end of the
segment that loads it (that relayout would change the measured layout in ways no vector
covers).
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from occlum_rules.atomic_write import write_atomic
from occlum_rules.errors import UserError

SECTION = ".builtin_config"


def _find_section(ef: ELFFile, where: str | None) -> int:
    """Index of ``.builtin_config``; a UserError naming ``where`` if it is not an ELF with one."""
    try:
        for i, sec in enumerate(ef.iter_sections()):
            if sec.name == SECTION:
                return i
    except ELFError as exc:
        raise UserError(f"not a valid ELF file: {exc}", where) from None
    raise UserError(f"no {SECTION} section (is this an Occlum LibOS?)", where)


def _open_elf(stream: BinaryIO, where: str | None) -> ELFFile:
    try:
        return ELFFile(stream)
    except ELFError as exc:
        raise UserError(f"not a valid ELF file: {exc}", where) from None


def read_builtin_config(so_path: str | os.PathLike[str]) -> bytes:
    """The bytes of the LibOS's ``.builtin_config`` section (what the patch wrote there)."""
    where = os.fspath(so_path)
    try:
        with open(so_path, "rb") as f:
            ef = _open_elf(f, where)
            try:
                data: bytes = ef.get_section(_find_section(ef, where)).data()
            except ELFError as exc:
                raise UserError(f"not a valid ELF file: {exc}", where) from None
            return data
    except FileNotFoundError:
        raise UserError("LibOS file not found", where) from None


def patch_builtin_config_bytes(elf: bytes, content: bytes, where: str | None = None) -> bytes:
    """The ELF bytes with ``.builtin_config`` replaced by ``content`` (same file length)."""
    ef = _open_elf(io.BytesIO(elf), where)
    index = _find_section(ef, where)
    sec = ef.get_section(index)
    hdr = sec.header
    if hdr["sh_type"] != "SHT_PROGBITS":
        raise UserError(f"{SECTION} is {hdr['sh_type']}, expected PROGBITS", where)
    start, old_size = hdr["sh_offset"], hdr["sh_size"]
    end = start + len(content)

    limits: list[tuple[int, str]] = []
    for i, other in enumerate(ef.iter_sections()):
        oh = other.header
        if i == index or oh["sh_type"] == "SHT_NULL":
            continue
        if oh["sh_offset"] > start or (oh["sh_offset"] == start and i > index):
            limits.append((oh["sh_offset"], f"section {other.name or i}"))
    eh = ef.header
    for off, what in ((eh["e_shoff"], "section header table"), (eh["e_phoff"], "program headers")):
        if off > start:
            limits.append((off, what))
    limits.append((len(elf), "end of file"))
    for seg in ef.iter_segments():
        ph = seg.header
        if ph["p_type"] == "PT_NULL" or ph["p_filesz"] == 0:
            continue
        if ph["p_offset"] <= start < ph["p_offset"] + ph["p_filesz"]:
            limits.append((ph["p_offset"] + ph["p_filesz"], f"end of its {ph['p_type']} segment"))
    room, blocker = min(limits)
    if end > room:
        raise UserError(
            f"{SECTION} holds {old_size} bytes with {room - start - old_size} byte(s) of padding "
            f"before the {blocker}; the {len(content)}-byte MAC text does not fit in place "
            "(objcopy would move sections; refusing)",
            where,
        )
    tail = elf[start + old_size : end]
    if tail.strip(b"\0"):
        raise UserError(f"the bytes after {SECTION} are not zero padding; refusing to overwrite", where)

    out = bytearray(elf)
    out[start:end] = content
    if len(content) < old_size:
        out[end : start + old_size] = bytes(old_size - len(content))
    # sh_size lives at offset 32 (ELF64) / 20 (ELF32) inside the section header entry.
    fmt = ("<" if ef.little_endian else ">") + ("Q" if ef.elfclass == 64 else "I")
    field = 32 if ef.elfclass == 64 else 20
    pos = eh["e_shoff"] + index * eh["e_shentsize"] + field
    struct.pack_into(fmt, out, pos, len(content))
    return bytes(out)


def patch_builtin_config(so_path: str | os.PathLike, mac_text_bytes: bytes) -> None:
    """Patch the LibOS in place (the real file behind any symlinks, as objcopy does)."""
    path = os.path.realpath(os.fspath(so_path))
    try:
        with open(path, "rb") as f:
            elf = f.read()
    except FileNotFoundError:
        raise UserError("LibOS file not found", os.fspath(so_path)) from None
    patched = patch_builtin_config_bytes(elf, bytes(mac_text_bytes), where=os.fspath(so_path))
    write_atomic(path, patched, mode=os.stat(path).st_mode & 0o7777)
