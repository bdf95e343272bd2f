"""Rust ``std::path`` string semantics that copy_bom's observable behaviour depends on.

copy_bom builds every path by ``PathBuf::join`` on strings, never normalising. Where a
result is visible (log lines, include lookup, which dir a relative source resolves against)
we reproduce those exact strings; image-side paths are normalised afterwards.
"""

from __future__ import annotations

from occlum_rules.errors import UserError


def rust_join(base: str, part: str) -> str:
    """``PathBuf::from(base).join(part)``: an absolute ``part`` replaces ``base``."""
    if part.startswith("/") or base == "":
        return part
    if base.endswith("/"):
        return base + part
    return base + "/" + part


def rust_parent(path: str) -> str | None:
    """``Path::parent`` as a string ("image" -> "", "/" -> None, "out/image/" -> "out")."""
    comps = _components(path)
    if not comps:
        return None
    if comps == ["/"]:
        return None
    rest = comps[:-1]
    if not rest:
        return ""
    if rest == ["/"]:
        return "/"
    return ("/" if rest[0] == "/" else "") + "/".join(c for c in rest if c != "/")


def rust_file_name(path: str) -> str | None:
    """``Path::file_name``: last normal component (trailing "/" and "." ignored)."""
    comps = _components(path)
    if not comps:
        return None
    last = comps[-1]
    if last in ("/", ".", ".."):
        return None
    return last


def _components(path: str) -> list[str]:
    if path == "":
        return []
    out: list[str] = []
    if path.startswith("/"):
        out.append("/")
    parts = path.split("/")
    for i, p in enumerate(parts):
        if p == "":
            continue
        if p == "." and not (i == 0 and not path.startswith("/")):
            continue
        out.append(p)
    return out


def normalize_image_path(path: str, what: str, where: str | None) -> str:
    """Image-relative path ("" = root) from a path inside the image; ``..`` may not escape."""
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise UserError(f"{what} '{path}' escapes the image root", where=where, exit_code=253)
            parts.pop()
            continue
        parts.append(comp)
    return "/".join(parts)
