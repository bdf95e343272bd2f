"""The image manifest: one JSON-able record per path, for later stages to reuse.

Later stages (SEFS packing, packaging) need every file's size and sha256 and every ELF's
DT_NEEDED; ``apply_plan`` produces this list while it already has the bytes in hand, and
:func:`image_manifest` rebuilds it from disk when no apply result is at hand.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence

from occlum_rules.atomic_write import AtomicFile
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


def encode_manifest(entries: Sequence[dict]) -> bytes:
    """Canonical manifest text: a JSON array with exactly one record per line.

    One record per line lets a consumer (the SEFS pack) find the rows that changed since
    its last run by comparing lines, without decoding the 20k unchanged ones.
    """
    return b"".join(manifest_pieces(entries))


_PIECE_ROWS = 1024  # records per piece of :func:`manifest_pieces`


def manifest_pieces(entries: Iterable[dict]) -> Iterator[bytes]:
    """:func:`encode_manifest`'s bytes in pieces of a thousand records: a 4 GiB image's 80k
    rows as one list of strings, joined, then encoded, were three copies of the text at
    once (~40 MiB) next to the records themselves."""
    yield b"["
    piece: list[str] = []
    first = True
    for entry in entries:
        piece.append(("\n" if first else ",\n") + _ROW.encode(entry))
        first = False
        if len(piece) >= _PIECE_ROWS:
            yield "".join(piece).encode()
            piece = []
    piece.append("\n]\n")
    yield "".join(piece).encode()


def write_manifest(path: str | os.PathLike[str], entries: list[dict]) -> None:
    """Write the manifest (see :func:`encode_manifest`) via a temp file + rename."""
    f = AtomicFile(path, sole_writer=True)  # an output: no leftovers
    try:
        for piece in manifest_pieces(entries):
            f.write(piece)
    except BaseException:
        f.discard()
        raise
    f.commit()
