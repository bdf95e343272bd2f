"""Property tests: any content round-trips through the protected-file writer and reader."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from occlum_rules.stages.securefs.pfs import (
    NODE_SIZE,
    IntegrityError,
    patch_integrity_only,
    protect_bytes,
    protected_size,
    read_protected,
)

BOUNDARIES = [0, 1, 3071, 3072, 3073, 3072 + NODE_SIZE, 3072 + 96 * NODE_SIZE, 3072 + 96 * NODE_SIZE + 1]


@settings(max_examples=40, deadline=None)
@given(
    size=st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 3072 + 98 * NODE_SIZE)),
    keyed=st.booleans(),
    seed=st.integers(0, 255),
)
def test_round_trip(tmp_path_factory, size, keyed, seed):
    data = bytes((seed + i * 7) & 0xFF for i in range(size))
    key = bytes(range(16)) if keyed else None
    blob, mac = protect_bytes(data, "p.protected", key=key)
    assert len(blob) == protected_size(size)
    path = tmp_path_factory.mktemp("rt") / "p.protected"
    path.write_bytes(blob)
    got, mac2 = read_protected(path, key=key)
    assert got == data and mac2 == mac
    if not keyed:  # integrity-only output is a pure function of (name, bytes)
        assert protect_bytes(data, "p.protected")[0] == blob
        assert blob[4096 + (NODE_SIZE if size > 3072 else 0):][: max(0, min(size - 3072, 16))] == data[3072:3088]
    os.unlink(path)


# 34 MHT nodes: MHT 0 has 32 children and MHT 1 one, so patches climb two levels
_MULTI_LEVEL = 3072 + (33 * 96 + 5) * NODE_SIZE


@settings(max_examples=30, deadline=None)
@given(
    size=st.one_of(st.sampled_from([*BOUNDARIES, _MULTI_LEVEL]), st.integers(1, 3072 + 98 * NODE_SIZE)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=9000)),
                   min_size=1, max_size=4),
    seed=st.integers(0, 255),
)
@example(size=_MULTI_LEVEL, edits=[(0.999, b"z" * 5000), (0.0001, b"q"), (0.5, b"m")], seed=1)
def test_patch_in_place_equals_a_fresh_write(tmp_path_factory, size, edits, seed):
    """Patching nodes in place gives the bytes (and MAC) of protecting the new content anew."""
    data = bytearray(bytes((seed + i * 13) & 0xFF for i in range(size)))
    path = tmp_path_factory.mktemp("patch") / "metadata"
    path.write_bytes(protect_bytes(bytes(data), "metadata")[0])
    placed = []
    for where, raw in edits:
        offset = int(where * size)
        raw = raw[: size - offset]
        data[offset : offset + len(raw)] = raw
        placed.append((offset, raw))
    mac = patch_integrity_only(path, placed)
    blob, want_mac = protect_bytes(bytes(data), "metadata")
    assert mac == want_mac and path.read_bytes() == blob


def test_patch_in_place_refuses_a_damaged_node(tmp_path):
    path = tmp_path / "metadata"
    path.write_bytes(protect_bytes(bytes(3072 + 5 * NODE_SIZE), "metadata")[0])
    blob = bytearray(path.read_bytes())
    blob[3 * NODE_SIZE + 7] ^= 1  # inside data node 1 (physical node 3)
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="node 3"):
        patch_integrity_only(path, [(3072 + NODE_SIZE + 100, b"x")])
