"""The marshal format written in pieces reads back, with ``marshal.loads``, as the value."""

from __future__ import annotations

import marshal

from occlum_rules.marshal_frames import BIG_BYTES, DictEncoder, marshal_parts

BIG = bytes(range(256)) * (BIG_BYTES // 256 + 3)


def test_parts_read_back_as_the_value() -> None:
    record = {"key": "abc", "stamps": BIG, "manifest": {"outputs": [{"path": "out/a",
              "digest": "0" * 64, "entries_marshal": BIG[:100]}]}, "dynamic": {"": b""},
              "material": ("x", 1, 2**70, -5, 1.5, None, True), "previous": [], "é": "\udcff"}
    parts = marshal_parts(record)
    assert marshal.loads(b"".join(parts)) == record
    big_parts = [p for p in parts if isinstance(p, memoryview)]
    assert len(big_parts) == 1 and big_parts[0].obj is BIG  # passed through, not copied


def test_a_dict_encoded_item_by_item_in_pieces() -> None:
    plain = {f"path/{i}": (i, 2**40 + i, 0o100644) for i in range(1000)}
    encoder, pieces = DictEncoder(), []
    for key, value in plain.items():
        encoder[key] = value
        if encoder.pending() >= 4096:
            pieces.append(encoder.take())
    pieces.append(encoder.encoded())
    assert len(pieces) > 2
    assert marshal.loads(b"".join(pieces)) == plain
    assert marshal.loads(encoder.encoded()) == {}  # a new, empty dict after it
