"""The marshal format (what ``marshal.loads`` reads) written a piece at a time.

Action records, output stamps and the digest cache are marshal dicts of tens of thousands of
entries on a big image, and ``marshal.dumps`` makes their whole encoding at once, beside the
value: at the top of a build's peak RSS. marshal frames a dict as ``{``, key, value, key,
value, …, ``0``; lists and tuples as a type byte and a 32-bit count; a version 2 item has no
back-references to earlier ones, so each item's bytes stand alone inside a frame, and a
frame can be written item by item.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

DICT_OPEN = b"{"
DICT_CLOSE = b"0"  # TYPE_NULL ends a dict
BIG_BYTES = 1 << 16  # a bytes value this large is passed through, never copied
_COUNT = struct.Struct("<i")


class DictEncoder:
    """A marshal dict encoded as its items are set, without the dict."""

    def __init__(self) -> None:
        self._pending = bytearray(DICT_OPEN)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._pending += marshal.dumps(key, 2)
        self._pending += marshal.dumps(value, 2)

    def extend(self, encoded: bytes) -> None:
        """Add the items of another encoder's :meth:`encoded` dict, as they are."""
        if not (encoded.startswith(DICT_OPEN) and encoded.endswith(DICT_CLOSE)):
            raise ValueError("not an encoded marshal dict")
        self._pending += memoryview(encoded)[len(DICT_OPEN):-len(DICT_CLOSE)]

    def pending(self) -> int:
        """Bytes encoded and not yet taken."""
        return len(self._pending)

    def take(self) -> bytes:
        """The bytes encoded so far; the frame goes on with the next item."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def encoded(self) -> bytes:
        """The rest of the frame, closed; the encoder starts a new dict after it."""
        self._pending += DICT_CLOSE
        data = bytes(self._pending)
        self._pending = bytearray(DICT_OPEN)
        return data


def marshal_parts(value: object) -> list[bytes | memoryview]:
    """``value`` in the marshal format, as parts to write one after the other: a bytes value
    of :data:`BIG_BYTES` or more is one part by itself, never copied (an image's record holds
    its stamps and tree entries as blobs of megabytes each). Dicts, lists and tuples are
    framed here; everything else is ``marshal.dumps`` version 2."""
    parts: list[bytes | memoryview] = []
    small = bytearray()

    def emit(v: Any) -> None:
        if type(v) is bytes and len(v) >= BIG_BYTES:
            small.extend(b"s" + _COUNT.pack(len(v)))
            parts.append(bytes(small))
            small.clear()
            parts.append(memoryview(v))
        elif type(v) is dict:
            small.extend(DICT_OPEN)
            for k, item in v.items():
                emit(k)
                emit(item)
            small.extend(DICT_CLOSE)
        elif type(v) in (list, tuple):
            small.extend((b"[" if type(v) is list else b"(") + _COUNT.pack(len(v)))
            for item in v:
                emit(item)
        else:
            small.extend(marshal.dumps(v, 2))

    emit(value)
    parts.append(bytes(small))
    return parts
