"""How an action record keeps the inputs its action discovered (a BOM's copies of host and
source files): grouped by directory, each group one canonical byte string.

Canonical (names and digests joined by NUL, in the order given) so that two images copying
one shared directory record byte-equal groups for it, whatever objects built the lists:
a null build checks each distinct group once, by its hash (``keys.dynamic_unchanged``).
Pure functions, no I/O."""

from __future__ import annotations

import posixpath


def pack_dynamic(pairs: list) -> dict[str, bytes]:
    """[[path, digest], ...] -> {directory: b"name\\0digest\\0name\\0digest..."}."""
    groups: dict[str, list[str]] = {}
    for path, digest in pairs:
        directory, name = posixpath.split(path)
        groups.setdefault(directory, []).extend((name, digest))
    return {d: "\0".join(items).encode("utf-8", "surrogateescape") for d, items in groups.items()}


def unpack_dynamic(groups: dict[str, bytes]) -> list[list[str]]:
    """The inverse of :func:`pack_dynamic` (pairs grouped by directory)."""
    pairs: list[list[str]] = []
    for directory, packed in groups.items():
        items = packed.decode("utf-8", "surrogateescape").split("\0")
        pairs.extend([posixpath.join(directory, items[i]), items[i + 1]]
                     for i in range(0, len(items) - 1, 2))
    return pairs
