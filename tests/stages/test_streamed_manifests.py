"""Manifests read and written one record at a time give the bytes of the whole-list forms
(the package's release manifest and bill of materials, the image manifest's rows)."""

from __future__ import annotations

import json
import random

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.bom.manifest import encode_manifest
from occlum_rules.stages.manifest_rows import ManifestRows
from occlum_rules.stages.package import (
    bill_of_materials,
    iter_bill_of_materials,
    manifest_bytes,
    manifest_chunks,
    member_sort_key,
)


def _image_manifest(n: int, seed: int = 3) -> list[dict]:
    """Rows in the BOM stage's order (by bytes), with names whose byte order and component
    order differ ("a-b" sorts before "a/b" by bytes, after it by components)."""
    rng = random.Random(seed)
    names = {"", "a", "a/b", "a-b", "a.b", "a/b-c", "a/b/c", "é", "é/x", "z"}
    while len(names) < n:
        depth = rng.randint(1, 3)
        names.add("/".join(rng.choice(["d", "d-1", "d.x", "e", "ü"]) for _ in range(depth))
                   + rng.choice(["", "-f", "/f", ".txt"]))
    rows = []
    for name in sorted(names, key=str.encode):
        kind = rng.choice(["file", "dir", "symlink"]) if name else "dir"
        row: dict = {"path": name, "type": kind, "mode": rng.choice([0o644, 0o755])}
        if kind == "file":
            row.update(size=rng.randint(0, 9), sha256=f"{rng.getrandbits(256):064x}")
            if rng.random() < 0.3:
                row["needed"] = ["libc.so"]
        elif kind == "symlink":
            row["target"] = "/x"
        rows.append(row)
    return rows


def test_manifest_rows_decode_each_line_as_the_whole_text_decodes() -> None:
    for rows in ([], [{"path": "a"}], _image_manifest(200)):
        text = encode_manifest(rows)
        lazy = ManifestRows.parse(text)
        assert lazy is not None and len(lazy) == len(rows)
        assert list(lazy) == rows == json.loads(text)
        assert lazy[-1:] == rows[-1:]


@pytest.mark.parametrize("text", [b"[\n1\n2\n]\n", b"[\n1,\n2,\n]\n", b"[1, 2]\n",
                                  json.dumps([{"a": 1}, {"b": 2}], indent=2).encode()])
def test_other_layouts_are_not_taken_for_rows(text: bytes) -> None:
    assert ManifestRows.parse(text) is None


def test_a_bad_row_is_one_user_error() -> None:
    rows = ManifestRows.parse(b'[\n{"path": "a"},\n{"path": \n]\n')
    assert rows is not None
    with pytest.raises(UserError, match="not valid JSON"):
        list(rows)


def test_streamed_bill_of_materials_is_the_listed_one() -> None:
    manifest = _image_manifest(300)
    expected = bill_of_materials(manifest)
    assert [b["path"][1:] for b in expected] == sorted(
        (m["path"] for m in manifest if m["path"]), key=member_sort_key)
    assert list(iter_bill_of_materials(encode_manifest(manifest))) == expected
    other_layout = json.dumps(manifest, indent=1).encode()
    assert list(iter_bill_of_materials(other_layout)) == expected


def test_manifest_chunks_join_to_manifest_bytes() -> None:
    bom = bill_of_materials(_image_manifest(100))
    manifest = {"contents": [{"path": "x", "size": 1}], "enclave": {"b": 1, "a": [1, 2]},
                "image_bom": bom, "empty": [], "label": "//x:y", "numbers": [1, 2]}
    whole = manifest_bytes(manifest)
    streamed = dict(manifest, contents=iter(manifest["contents"]), image_bom=iter(bom),
                    empty=iter([]))
    assert b"".join(manifest_chunks(streamed)) == whole
    assert json.loads(whole)["image_bom"] == bom
