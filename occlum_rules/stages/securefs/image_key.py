"""Occlum image keys: the ``xx-xx-…`` key-file format, generation, and a public fingerprint.

The key itself is a secret: nothing here logs it, and the build keys actions on
:func:`key_fingerprint` (a salted SHA-256, not reversible for a 128-bit key) instead.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.errors import UserError
from occlum_rules.user_files import read_user_file

KEY_SIZE = 16
_PIECE = re.compile(r"\+?[0-9a-fA-F]+")
_FINGERPRINT_DOMAIN = b"occlum-rules/image-key-fingerprint/v1\0"


def parse_image_key(text: str, where: str | None = None) -> bytes:
    """Parse the key-string format the way sefs-cli does.

    Trailing CR/LF are trimmed; the rest must split on ``-`` into exactly 16 pieces, each a
    hexadecimal number below 256 (Rust's ``u8::from_str_radix`` accepts 1+ digits and a
    leading ``+``, so we do too). Error messages never echo the key material.
    """
    s = text.rstrip("\r\n")
    pieces = s.split("-")
    if len(pieces) != KEY_SIZE:
        raise UserError(
            f"malformed image key: expected 16 hex bytes joined by '-' (xx-xx-...-xx), "
            f"found {len(pieces)} field(s)",
            where,
        )
    out = bytearray()
    for i, piece in enumerate(pieces):
        if not _PIECE.fullmatch(piece) or int(piece, 16) > 255:
            raise UserError(f"malformed image key: field {i + 1} is not a hex byte", where)
        out.append(int(piece, 16))
    return bytes(out)


def load_image_key(path: str | os.PathLike) -> bytes:
    """Read and parse a key file (as ``sefs-cli --key`` does)."""
    p = Path(path)
    raw = read_user_file(p, "image key file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("malformed image key: not UTF-8 text", str(p)) from None
    return parse_image_key(text, str(p))


def format_image_key(key: bytes) -> str:
    """Key-file text as ``occlum gen-image-key`` writes it (47 chars + newline)."""
    if len(key) != KEY_SIZE:
        raise ValueError("an image key is 16 bytes")
    return "-".join(f"{b:02x}" for b in key) + "\n"


def generate_image_key(path: str | os.PathLike) -> None:
    """Write a fresh random key file, readable only by its owner, atomically."""
    with AtomicFile(path, mode=0o600, makedirs=False) as f:  # created 0600: never readable
        f.write(format_image_key(os.urandom(KEY_SIZE)).encode())


def key_fingerprint(key: bytes) -> str:
    """A public, non-reversible name for a key, safe to put in action keys and logs."""
    if len(key) != KEY_SIZE:
        raise ValueError("an image key is 16 bytes")
    return "sha256:" + hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()
