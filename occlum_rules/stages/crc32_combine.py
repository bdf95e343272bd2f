"""CRC-32 of a concatenation from the CRCs of its parts (zlib's ``crc32_combine``).

Python's zlib module does not expose it. CRC-32 is linear over GF(2): appending ``n`` bytes
to a message maps its CRC through a fixed 32x32 bit matrix (the effect of ``n`` zero bytes),
then XORs the CRC of the appended bytes. The matrices for 2**k zero bytes are squared once
and kept, so one combination costs at most ~40 matrix-vector products.
"""

from __future__ import annotations

_POLY = 0xEDB88320  # reflected CRC-32 polynomial
_BYTE_POWERS: list[list[int]] = []  # [k] = operator for 2**k zero bytes


def _times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, column) for column in matrix]


def _power(k: int) -> list[int]:
    if not _BYTE_POWERS:
        one_bit = [_POLY] + [1 << n for n in range(31)]  # one zero bit shifted through
        m = one_bit
        for _ in range(3):  # 2, 4, 8 zero bits: one zero byte
            m = _square(m)
        _BYTE_POWERS.append(m)
    while len(_BYTE_POWERS) <= k:
        _BYTE_POWERS.append(_square(_BYTE_POWERS[-1]))
    return _BYTE_POWERS[k]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` given ``crc32(A)``, ``crc32(B)`` and ``len(B)``."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _times(_power(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
