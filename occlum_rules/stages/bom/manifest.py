"""The image manifest: one JSON-able record per path, for later stages to reuse.

Later stages (SEFS packing, packaging) need every file's size and sha256 and every ELF's
DT_NEEDED; ``apply_plan`` produces this list while it already has the bytes in hand, and
:func:`image_manifest` rebuilds it from disk when no apply result is at hand.
"""

from __future__ import annotations

import json
import os
import stat

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.digests import sha256_file

from .elf_deps import read_elf


def image_manifest(root: str | os.PathLike[str]) -> list[dict]:
    """Entries sorted by path ("" = root): path, type (file|dir|symlink), mode, and
    size+sha256(+needed for ELF files) for files, target for symlinks."""
    root_s = os.fspath(root)
    out: list[dict] = []

    def add(full: str, rel: str) -> None:
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out.append({"path": rel, "type": "symlink", "mode": mode, "target": os.readlink(full)})
        elif stat.S_ISDIR(st.st_mode):
            out.append({"path": rel, "type": "dir", "mode": mode})
        elif stat.S_ISREG(st.st_mode):
            item = {"path": rel, "type": "file", "mode": mode, "size": st.st_size,
                    "sha256": sha256_file(full)}
            info = read_elf(full)
            if info is not None:
                item["needed"] = list(info.needed)
            out.append(item)

    add(root_s, "")
    for dirpath, dirnames, filenames in os.walk(root_s):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            add(full, os.path.relpath(full, root_s))
    out.sort(key=lambda e: e["path"].encode())
    return out


_ROW = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # one encoder, not one per row


def encode_manifest(entries: list[dict]) -> bytes:
    """Canonical manifest text: a JSON array with exactly one record per line.

    One record per line lets a consumer (the SEFS pack) find the rows that changed since
    its last run by comparing lines, without decoding the 20k unchanged ones.
    """
    rows = [_ROW.encode(e) for e in entries]
    return ("[\n" + ",\n".join(rows) + ("\n" if rows else "") + "]\n").encode()


def write_manifest(path: str | os.PathLike[str], entries: list[dict]) -> None:
    """Write the manifest (see :func:`encode_manifest`) via a temp file + rename."""
    write_atomic(path, encode_manifest(entries), sole_writer=True)  # an output: no leftovers
