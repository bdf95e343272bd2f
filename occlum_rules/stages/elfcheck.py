"""Is this ELF something Occlum can load? Occlum only runs position-independent code."""

from __future__ import annotations

from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

DF_1_PIE = 0x08000000


def pie_kind(path: Path) -> str:
    """'pie' (ET_DYN with PT_INTERP), 'static-pie', 'shared' (a library), or 'not-pie'."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.header["e_type"] != "ET_DYN":
                return "not-pie"
            has_interp = any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments())
            if has_interp:
                return "pie"
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_FLAGS_1" and tag.entry.d_val & DF_1_PIE:
                            return "static-pie"
            return "shared"
    except (ELFError, OSError):
        return "not-elf"


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False
