"""Layers are deterministic: same content, same digest, whatever the path, times and modes
the tree has on disk; the diff_id is the uncompressed tar's digest."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.oci.layer import file_members, tree_members, write_layer

SDE = 1704067200


def _tree(root: Path, mtime: int, umask_mode: int) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "bin" / "app").write_bytes(b"\x7fELF app")
    (root / "lib" / "libx.so.1").write_bytes(b"lib" * 1000)
    os.symlink("libx.so.1", root / "lib" / "libx.so")
    (root / "bin" / "app").chmod(0o777 & umask_mode | 0o100)
    (root / "lib" / "libx.so.1").chmod(0o666 & umask_mode)
    for path in [*root.rglob("*"), root]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return root


def test_same_tree_same_digest_anywhere(tmp_path):
    a = _tree(tmp_path / "a", 1_000_000_000, 0o755)
    b = _tree(tmp_path / "some" / "other" / "b", 1_700_000_000, 0o700)
    la = write_layer(tree_members(a, "/opt/app"), tmp_path / "a.tar.gz", mtime=SDE)
    lb = write_layer(tree_members(b, "/opt/app"), tmp_path / "b.tar.gz", mtime=SDE)
    assert la.digest == lb.digest and la.diff_id == lb.diff_id
    data = (tmp_path / "a.tar.gz").read_bytes()
    assert la.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert la.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        infos = {i.name: i for i in tar.getmembers()}
    # parents first, sorted, fixed owners and times, normalised modes
    assert list(infos) == ["opt", "opt/app", "opt/app/bin", "opt/app/bin/app", "opt/app/lib",
                           "opt/app/lib/libx.so", "opt/app/lib/libx.so.1"]
    assert {(i.uid, i.gid, i.uname, i.mtime) for i in infos.values()} == {(0, 0, "", SDE)}
    assert infos["opt/app/bin/app"].mode == 0o755 and infos["opt/app/lib/libx.so.1"].mode == 0o644
    assert infos["opt/app/lib/libx.so"].linkname == "libx.so.1"
    assert ["opt/app/lib/libx.so", "symlink", 0o777, "libx.so.1"] in la.entries


def test_files_go_to_their_container_paths(tmp_path):
    src = tmp_path / "tool"
    src.write_bytes(b"#!/bin/sh\n")
    src.chmod(0o700)
    layer = write_layer(file_members([("/usr/local/bin/tool", src)]), tmp_path / "l.tar.gz",
                        mtime=SDE)
    assert [e[0] for e in layer.entries] == ["usr", "usr/local", "usr/local/bin",
                                            "usr/local/bin/tool"]
    assert layer.entries[-1][2] == 0o755


@pytest.mark.parametrize("prefix", ["opt/app", "/opt/../etc"])
def test_a_bad_prefix_is_named(tmp_path, prefix):
    with pytest.raises(UserError, match="prefix"):
        tree_members(_tree(tmp_path / "t", SDE, 0o755), prefix)
