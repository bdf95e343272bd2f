"""Key Separation and Sharing ids (ISVEXTPRODID / ISVFAMILYID) from Occlum.json.

Occlum reads each id as hexadecimal after stripping every leading ``0x`` (so ``"42"``
means 0x42 and ``"0x0x10"`` is 0x10, but ``"0X10"`` is an error) and writes the numbers
to Enclave.xml in decimal. With KSS off the strings are never looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from occlum_rules.errors import UserError
from occlum_rules.stages.config.schema import MetaId, OcclumConfig, json_quote

_HEX_U64 = re.compile(r"\+?[0-9a-fA-F]+")


@dataclass(frozen=True)
class KssIds:
    enable_kss: int
    ext_prod_id_high: int
    ext_prod_id_low: int
    family_id_high: int
    family_id_low: int


def parse_kss_id(text: str, path: str, source: str = "Occlum.json") -> int:
    """One 64-bit id half, read like Rust's ``u64::from_str_radix(s.trim_start_matches("0x"), 16)``."""
    digits = text
    while digits.startswith("0x"):
        digits = digits[2:]
    if _HEX_U64.fullmatch(digits):
        value = int(digits, 16)
        if value < 1 << 64:
            return value
    raise UserError(
        f"{json_quote(text)} is not allowed; expected a 64-bit hex string such as "
        '"0x1234567812345678" (lowercase 0x prefix optional)',
        f"{source}: {path}",
    )


def _pair(meta_id: MetaId, path: str, source: str) -> tuple[int, int]:
    return (
        parse_kss_id(meta_id.high, f"{path}.high", source),
        parse_kss_id(meta_id.low, f"{path}.low", source),
    )


def kss_ids(config: OcclumConfig, source: str = "Occlum.json") -> KssIds:
    meta = config.metadata
    if not meta.enable_kss:
        return KssIds(0, 0, 0, 0, 0)
    ext = _pair(meta.ext_prod_id, "metadata.ext_prod_id", source)
    family = _pair(meta.family_id, "metadata.family_id", source)
    return KssIds(1, ext[0], ext[1], family[0], family[1])
