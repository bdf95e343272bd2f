"""``sgx_sign dump``: the text dump of every metadata blob and the raw SIGSTRUCT.

The format is sgx_sign's (C++ iostream hex, arrays as rows of 16 ``0x%02x `` items) so
existing scripts that grep the dump keep working.
"""

from __future__ import annotations

import hashlib
import struct

from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.metadata import MAGIC, OFF_CSS
from occlum_rules.stages.sign.sigstruct import CSS_SIZE

# (name, struct format, offset) of the scalar fields, in print order
_HEAD = (
    ("magic_num", "<Q", 0), ("version", "<Q", 8), ("size", "<I", 16), ("tcs_policy", "<I", 20),
    ("ssa_frame_size", "<I", 24), ("max_save_buffer_size", "<I", 28),
    ("desired_misc_select", "<I", 32), ("enclave_size", "<Q", 40), ("attributes.flags", "<Q", 48),
    ("attributes.xfrm", "<Q", 56),
)
C = OFF_CSS
_CSS = (
    ("enclave_css.header.header", None, C + 0, 12),
    ("enclave_css.header.type", "<I", C + 12),
    ("enclave_css.header.module_vendor", "<I", C + 16),
    ("enclave_css.header.date", "<I", C + 20),
    ("enclave_css.header.header2", None, C + 24, 16),
    ("enclave_css.header.hw_version", "<I", C + 40),
    ("enclave_css.key.modulus", None, C + 128, 384),
    ("enclave_css.key.exponent", None, C + 512, 4),
    ("enclave_css.key.signature", None, C + 516, 384),
    ("enclave_css.body.misc_select", "<I", C + 900),
    ("enclave_css.body.misc_mask", "<I", C + 904),
    ("enclave_css.body.attributes.flags", "<Q", C + 928),
    ("enclave_css.body.attributes.xfrm", "<Q", C + 936),
    ("enclave_css.body.attribute_mask.flags", "<Q", C + 944),
    ("enclave_css.body.attribute_mask.xfrm", "<Q", C + 952),
    ("enclave_css.body.enclave_hash.m", None, C + 960, 32),
    ("enclave_css.body.isv_prod_id", "<H", C + 1024),
    ("enclave_css.body.isv_svn", "<H", C + 1026),
    ("enclave_css.buffer.q1", None, C + 1040, 384),
    ("enclave_css.buffer.q2", None, C + 1424, 384),
)


def _array(prefix: str, name: str, data: bytes) -> str:
    out = [f"{prefix}->{name}:"]
    for i, byte in enumerate(data):
        if i % 16 == 0:
            out.append("\n")
        out.append(f"0x{byte:02x} ")
    out.append("\n")
    return "".join(out)


def _blob_text(area: bytes, pos: int) -> str:
    lines = []
    for name, fmt, off in _HEAD:
        lines.append(f"metadata->{name}: 0x{struct.unpack_from(fmt, area, pos + off)[0]:x}\n")
    for spec in _CSS:
        if spec[1] is None:
            name, _, off, size = spec
            lines.append(_array("metadata", name, area[pos + off : pos + off + size]))
        else:
            name, fmt, off = spec
            lines.append(f"metadata->{name}: 0x{struct.unpack_from(fmt, area, pos + off)[0]:x}\n")
    return "".join(lines)


def dump_text(area: bytes) -> str:
    """The dump file sgx_sign writes for a metadata area (main blob plus compatible ones)."""
    magic, _, size = struct.unpack_from("<QQI", area, 0)
    if magic != MAGIC:
        raise SignError("the enclave has no signed metadata to dump")
    text = ["=============================\nThe metadata information:\n"
            "=============================\n", _blob_text(area, 0)]
    pos, count = 0, 0
    while True:
        nxt = pos + size
        if nxt + 20 > len(area):
            break
        magic, _, nsize = struct.unpack_from("<QQI", area, nxt)
        if magic != MAGIC:
            break
        if nsize == 0:
            raise SignError("the enclave's metadata is corrupt (a blob of size 0)")
        count += 1
        if count == 1:
            text.append("\n\n\n====================================\n"
                        "The compatible metadata information: \n"
                        "====================================\n")
        text.append(f"\nCompatible metadata number {count}:\n------------------------------\n")
        text.append(_blob_text(area, nxt))
        pos, size = nxt, nsize
    modulus = area[pos + C + 128 : pos + C + 512]
    text.append("\n\n===================\nThe mrsigner value:\n===================\n")
    text.append(_array("mrsigner", "value", hashlib.sha256(modulus).digest()))
    return "".join(text)


def sigstruct_of(area: bytes) -> bytes:
    return bytes(area[OFF_CSS : OFF_CSS + CSS_SIZE])
