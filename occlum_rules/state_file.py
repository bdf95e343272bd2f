"""The one on-disk framing of every state file the build keeps between runs.

A state file is what an action (or the engine on its behalf) remembers about its previous
outputs: the engine's action records, the SEFS pack state, package segments, ELF header
facts, a cargo target directory's dependency record. All of them are caches that a wrong
byte must never turn into a wrong output, so all of them share one framing:

    b"occlum-rules/<kind>/<version>\\n" + b"%08x\\n" % crc32(payload) + payload

written atomically (temporary file, then rename). Reading checks the kind, the version and
the CRC-32 of the payload; any mismatch reads as "no state" with a short reason, and the
caller does its work in full. What the payload holds (marshal, JSON, raw columns) is the
owner's business.

This module is a primitive beside ``atomic_write``: stages may import it (it knows nothing
of actions or of where state lives; the engine chooses the directories).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

from occlum_rules.atomic_write import write_atomic


def _header(kind: str, version: int) -> bytes:
    if not kind or "/" in kind or "\n" in kind:
        raise ValueError(f"bad state kind {kind!r}")
    return f"occlum-rules/{kind}/{version}\n".encode()


@dataclass(frozen=True)
class Missing:
    """Why a state file could not be used (``reason`` is a short phrase for a log line)."""

    reason: str

    def __bool__(self) -> bool:  # so ``if not payload`` reads naturally for callers
        return False


def write_state(path: str | os.PathLike, kind: str, version: int, *parts) -> None:
    """Frame ``parts`` (bytes-like, concatenated) as a ``kind``/``version`` state file.

    The parts are written one after another, never joined first: a pack state of 100k
    inodes is tens of megabytes of columns."""
    crc = 0
    views = [memoryview(p).cast("B") for p in parts]
    for view in views:
        crc = zlib.crc32(view, crc)
    write_atomic(path, _header(kind, version) + b"%08x\n" % crc, *views)


def read_state(path: str | os.PathLike, kind: str, version: int) -> memoryview | Missing:
    """The payload of an intact ``kind``/``version`` state file, or ``Missing(reason)``.

    Reasons: "missing", "unreadable (...)", "from another version", "checksum mismatch"."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return Missing("missing")
    except OSError as exc:
        return Missing(f"unreadable ({exc.strerror})")
    header = _header(kind, version)
    head = len(header) + 9
    if not blob.startswith(header) or len(blob) < head or blob[head - 1 : head] != b"\n":
        return Missing("from another version")
    payload = memoryview(blob)[head:]
    if b"%08x" % zlib.crc32(payload) != blob[len(header) : head - 1]:
        return Missing("checksum mismatch")
    return payload


def discard_state(path: str | os.PathLike | None) -> None:
    """Remove a state file (before its owner changes what it describes)."""
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
