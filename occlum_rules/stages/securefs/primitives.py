"""The three crypto primitives the SGX protected-file format is built from.

Everything here is a thin, allocation-conscious wrapper over ``cryptography`` so the
format code can stay readable and the hot loops can bind the bound methods once.
The IV is always twelve zero bytes: the format never reuses a key, so a fixed IV is safe
and, in integrity-only mode (all keys zero), it is what makes the output deterministic.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ZERO_IV = bytes(12)
ZERO_KEY = bytes(16)
TAG_SIZE = 16

# SP800-108 labels of the protected FS key hierarchy.
LABEL_MASTER = b"SGX-PROTECTED-FS-MASTER-KEY"
LABEL_RANDOM = b"SGX-PROTECTED-FS-RANDOM-KEY"
LABEL_METADATA = b"SGX-PROTECTED-FS-METADATA-KEY"

# A source of random bytes: ``rng(n) -> n bytes``. Production uses os.urandom; tests
# inject a counter so the vectors made with the SDK's counter RNG can be reproduced.
RandomSource = Callable[[int], bytes]

_KDF_HEAD = struct.Struct("<I64s4x")  # index, label, padding
_KDF_TAIL = struct.Struct("<Q32sI4x")  # node number, nonce, output bits


def kdf_block(label: bytes, node_number: int, nonce: bytes) -> bytes:
    """The 120-byte KDF input block (C layout of the SDK's ``kdf_input_t``)."""
    return _KDF_HEAD.pack(1, label) + _KDF_TAIL.pack(node_number, nonce.ljust(32, b"\0"), 0x80)


def aes_cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def derive_key(kdk: bytes, label: bytes, node_number: int, nonce: bytes) -> bytes:
    return aes_cmac(kdk, kdf_block(label, node_number, nonce))


class BatchKdf:
    """CMAC-based node-key derivation for many nodes under one master key.

    The first four AES blocks of every KDF input (index + label) are the same for all node
    keys of a session, so their CBC-MAC chaining value is computed once; each key then
    costs the last four blocks, done as four batched ECB calls over all nodes at once
    instead of one ``CMAC`` object per node (which dominates encrypted-mode packing).
    """

    def __init__(self, master_key: bytes, label: bytes = LABEL_RANDOM):
        self._ecb = Cipher(algorithms.AES(master_key), modes.ECB()).encryptor()
        # CMAC subkey K2 (the last block of the 120-byte message is partial: 8 bytes).
        el = int.from_bytes(self._ecb.update(bytes(16)), "big")
        k1 = ((el << 1) ^ (0x87 if el >> 127 else 0)) & ((1 << 128) - 1)
        k2 = ((k1 << 1) ^ (0x87 if k1 >> 127 else 0)) & ((1 << 128) - 1)
        self._k2 = k2
        head = _KDF_HEAD.pack(1, label)  # 72 bytes: blocks 0..3 plus 8 bytes of block 4
        state = 0
        for i in range(4):
            blk = int.from_bytes(head[16 * i : 16 * i + 16], "big")
            state = int.from_bytes(self._ecb.update((state ^ blk).to_bytes(16, "big")), "big")
        self._state = state
        self._head_tail = head[64:72]  # first half of block 4 (padding of label + pad)

    def derive(self, node_numbers: list[int], nonces: list[bytes]) -> list[bytes]:
        n = len(node_numbers)
        if n == 0:
            return []
        tail = b"".join(
            _KDF_TAIL.pack(num, nonce.ljust(32, b"\0"), 0x80)
            for num, nonce in zip(node_numbers, nonces, strict=True)
        )  # 48 bytes each: second half of block 4, blocks 5, 6 and the partial block 7
        # Per node, message blocks 4..7 (block 7 is 8 bytes + 10* padding, xor K2).
        blocks = []
        for j in range(4):
            parts = []
            for i in range(n):
                off = 48 * i
                if j == 0:
                    parts.append(self._head_tail + tail[off : off + 8])
                elif j < 3:
                    parts.append(tail[off + 8 + 16 * (j - 1) : off + 24 + 16 * (j - 1)])
                else:
                    parts.append(tail[off + 40 : off + 48] + b"\x80" + bytes(7))
            blocks.append(b"".join(parts))
        width = 16 * n
        rep = lambda v: int.from_bytes(v.to_bytes(16, "big") * n, "big")  # noqa: E731
        chain = rep(self._state)
        for j in range(4):
            x = int.from_bytes(blocks[j], "big") ^ chain
            if j == 3:
                x ^= rep(self._k2)
            chain = int.from_bytes(self._ecb.update(x.to_bytes(width, "big")), "big")
        out = chain.to_bytes(width, "big")
        return [out[16 * i : 16 * i + 16] for i in range(n)]


def gmac_of(aead: AESGCM, data) -> bytes:
    """Integrity-only tag: GCM with empty plaintext and ``data`` as AAD."""
    return aead.encrypt(ZERO_IV, b"", data)


def urandom(n: int) -> bytes:
    return os.urandom(n)


class CounterRandom:
    """The deterministic byte counter the reference vectors were made with (0,1,2,...)."""

    def __init__(self, start: int = 0):
        self._next = start

    def __call__(self, n: int) -> bytes:
        out = bytes((self._next + i) & 0xFF for i in range(n))
        self._next += n
        return out
