"""Property tests: any content round-trips through the protected-file writer and reader."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from occlum_rules.stages.securefs.pfs import (
    NODE_SIZE,
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
