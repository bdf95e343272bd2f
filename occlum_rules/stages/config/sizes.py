"""Occlum size strings ("32MB", " 4 MB ", "314572800B").

gen_internal_conf's ``parse_memory_size`` has a few sharp edges that decide whether a
config is accepted, so they are kept exactly: units are binary and case-sensitive, they
are tried in the order KB, MB, GB, TB, B (so "256XB" fails at the number, not the unit),
whitespace around the number and unit is allowed, a leading ``+`` is allowed, and only
whole numbers are. The one deliberate difference: a product of 2^64 or more panics (debug
build) or wraps (release build) in Occlum; here it is an ordinary, explained error.
"""

from __future__ import annotations

import re

UNITS: tuple[tuple[str, int], ...] = (
    ("KB", 1 << 10),
    ("MB", 1 << 20),
    ("GB", 1 << 30),
    ("TB", 1 << 40),
    ("B", 1),
)
SIZE_LIMIT = 1 << 64  # usize on x86_64
ALLOWED_SIZE_TEXT = (
    'a whole number followed by KB, MB, GB, TB or B (binary units, case-sensitive), e.g. "32MB"'
)

# Rust's str::trim() removes Unicode White_Space, which is not quite Python's isspace().
RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_USIZE_TEXT = re.compile(r"\+?[0-9]+")


class SizeError(ValueError):
    """A size string that Occlum would reject (``reason`` says which part is wrong)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_size(text: str) -> int:
    """Bytes for an Occlum size string, or :class:`SizeError`."""
    stripped = text.strip(RUST_WHITESPACE)
    match = next(((u, f) for u, f in UNITS if stripped.endswith(u)), None)
    if match is None:
        raise SizeError("no unit")
    unit, factor = match
    number = stripped[: len(stripped) - len(unit)].strip(RUST_WHITESPACE)
    if not _USIZE_TEXT.fullmatch(number):
        raise SizeError("no number")
    value = int(number)
    if value >= SIZE_LIMIT:
        raise SizeError("number too large")
    if value * factor >= SIZE_LIMIT:
        raise SizeError("2^64 bytes or more")
    return value * factor


def format_size(num_bytes: int) -> str:
    """The shortest exact Occlum size string for a byte count (1073741824 -> "1GB")."""
    if num_bytes < 0 or num_bytes >= SIZE_LIMIT:
        raise ValueError(f"{num_bytes} is not a byte count Occlum can express")
    for unit, factor in reversed(UNITS[:4]):
        if num_bytes and num_bytes % factor == 0:
            return f"{num_bytes // factor}{unit}"
    return f"{num_bytes}B"


def human_size(num_bytes: int) -> str:
    """A short human reading of a byte count for messages ("256 MiB")."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if num_bytes >= factor:
            amount = num_bytes / factor
            return f"{amount:g} {unit}" if amount == int(amount) else f"{amount:.2f} {unit}"
    return f"{num_bytes} B"
