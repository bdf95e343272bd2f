"""SEFS images made by sefs-cli zip, reproduced byte for byte (through the drop-in CLI)."""

from __future__ import annotations

import hashlib
import os
import tarfile

from occlum_rules.cli import main as cli
from occlum_rules.stages.securefs.sefs import verify_image
from tests.conftest import vectors_path
from tests.support.tar import extract_all


def _extract(tar_path, dst):
    dst.mkdir()
    extract_all(tar_path, dst)


def test_tree1_byte_for_byte(tmp_path, capsys):
    v = vectors_path("sefs", "sefs", "tree1")
    _extract(v / "input_tree.tar", tmp_path / "in")
    os.chmod(tmp_path / "in", 0o700)  # the root's own mode is irrelevant (always 0755)
    rc = cli(["sefs-cli", "--enclave", "ignored.so", "zip", str(tmp_path / "in"),
              str(tmp_path / "out" / "__ROOT"), str(tmp_path / "ROOT_MAC")])
    assert rc == 0
    assert capsys.readouterr().out == "Generate the SEFS image successfully\n"
    assert (tmp_path / "ROOT_MAC").read_bytes() == (v / "ROOT_MAC").read_bytes()
    want = sorted(os.listdir(v / "__ROOT"))
    assert sorted(os.listdir(tmp_path / "out" / "__ROOT")) == want
    for name in want:
        assert (tmp_path / "out" / "__ROOT" / name).read_bytes() == (v / "__ROOT" / name).read_bytes(), name
    paths = [e.path for e in verify_image(tmp_path / "out" / "__ROOT", expected_mac=(v / "ROOT_MAC").read_text())]
    assert paths == ["a.txt", "big.bin", "link", "sub", "sub/c.txt"]


def test_tree2_second_group_fifo_hardlink_unicode(tmp_path):
    v = vectors_path("sefs", "sefs", "tree2")
    _extract(v / "input_tree.tar.gz", tmp_path / "in")
    os.mkfifo(tmp_path / "in" / "fifo")  # present at zip time, silently skipped
    assert os.stat(tmp_path / "in" / "large").st_nlink == 2
    rc = cli(["sefs-cli", "zip", str(tmp_path / "in"), str(tmp_path / "__ROOT"), str(tmp_path / "mac")])
    assert rc == 0
    assert (tmp_path / "mac").read_bytes() == (v / "ROOT_MAC").read_bytes()
    want = {ln.split()[1]: ln.split()[0] for ln in (v / "image_sha256.txt").read_text().splitlines()}
    got = {
        n: hashlib.sha256((tmp_path / "__ROOT" / n).read_bytes()).hexdigest()
        for n in os.listdir(tmp_path / "__ROOT")
    }
    assert got == want
    assert any(int.from_bytes(bytes.fromhex(n), "little") > 1024 for n in got if n != "metadata")
    with tarfile.open(v / "image___ROOT.tar.gz") as tf:
        member = tf.getmember("./metadata")
        assert tf.extractfile(member).read() == (tmp_path / "__ROOT" / "metadata").read_bytes()


def test_zip_refuses_existing_image_dir(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "img").mkdir()
    rc = cli(["sefs-cli", "zip", str(tmp_path / "src"), str(tmp_path / "img"), str(tmp_path / "m")])
    assert rc == 1
    assert "already exists" in capsys.readouterr().err
