"""The ``xx-xx-…-xx`` text form of a 16-byte MAC used by sefs-cli and show-mac."""

from __future__ import annotations

from occlum_rules.errors import UserError


def mac_text(mac: bytes) -> str:
    """``xx-xx-…`` (47 chars), as sefs-cli writes ROOT_MAC and show-mac prints it (minus ``\\n``)."""
    return "-".join(f"{b:02x}" for b in mac)


def parse_mac_text(text: str) -> bytes:
    pieces = text.strip().split("-")
    try:
        if len(pieces) == 16 and all(len(p) == 2 for p in pieces):
            return bytes(int(p, 16) for p in pieces)
    except ValueError:
        pass
    raise UserError("malformed MAC: expected 16 hex bytes joined by '-'")
