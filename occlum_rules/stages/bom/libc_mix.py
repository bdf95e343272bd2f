"""Say *who* is missing libraries among the files rules place in an image, and why.

The files of ``occlum_bom(deps=...)`` come from build targets, not from BOM lines, so a
missing library there has no BOM location to point at. The usual cause is two C libraries
in one image: a musl program (occlum-gcc, musl-gcc) beside a library built for glibc (host
cargo or gcc), or the other way round. The loader copy_bom picks for a library without an
interpreter is the one the image's programs use, so the glibc library's needs are searched
in musl's directories and not found. This module names the targets, their toolchains and
their C libraries so the message says what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from occlum_rules.stages.bom.elf_deps import ElfInfo


def libc_of(info: ElfInfo | None) -> str | None:
    """'musl', 'glibc' or None, from the interpreter, else the libc the ELF needs."""
    if info is None:
        return None
    names = [info.interp or "", *info.needed]
    if any("ld-musl" in n for n in names) or "libc.so" in info.needed:
        return "musl"
    if any("ld-linux" in n for n in names) or "libc.so.6" in info.needed:
        return "glibc"
    return None


def loader_libc(interp: str) -> str | None:
    name = interp.rsplit("/", 1)[-1]
    return "musl" if name.startswith("ld-musl") else "glibc" if name.startswith("ld-linux") else None


def _who(path: str, origins: Mapping[str, str], libc: str | None) -> str:
    origin = origins.get(path)
    if origin is None:
        return f"{path}" + (f" ({libc})" if libc else "")
    return f"{origin.rstrip(')')}, {libc})" if libc and origin.endswith(")") else origin


def explain_missing(missing: Sequence[tuple[str, str, str]], origins: Mapping[str, str],
                    loader: tuple[str, str] | None, loader_users: Sequence[str],
                    read: Callable[[str], ElfInfo | None]) -> str:
    """One message for libraries missing from rule-placed files.

    ``missing``: (elf, needed name, needed by) triples; ``origins``: host file ->
    "//pkg:target (rule toolchain)"; ``loader``: the (Occlum loader, interpreter) copy_bom
    chose for files without one; ``loader_users``: the files whose interpreter that is.
    """
    by_elf: dict[str, list[str]] = {}
    for elf, name, needed_by in missing:
        shown = name if needed_by == elf else f"{name} (via {needed_by.rsplit('/', 1)[-1]})"
        by_elf.setdefault(elf, []).append(shown)
    image_libc = loader_libc(loader[1]) if loader else None
    parts = []
    for elf, names in by_elf.items():
        libc = libc_of(read(elf))
        base = elf.rsplit("/", 1)[-1]
        needs = f"{base} needs {', '.join(names)}"
        who = _who(elf, origins, libc)
        if loader and libc and image_libc and libc != image_libc:
            users = ", ".join(_who(u, origins, libc_of(read(u))) for u in loader_users) or "its programs"
            parts.append(
                f"{who} is linked against {libc} ({needs}) but the image's loader is {image_libc} "
                f"({loader[1]}, the interpreter of {users}): one image has one C library; build "
                f"them with matching toolchains (occlum-gcc/musl-gcc with occlum-cargo for musl, "
                f"or gcc with host cargo for glibc)")
        else:
            parts.append(f"{who}: {needs}")
    return "; ".join(parts)
