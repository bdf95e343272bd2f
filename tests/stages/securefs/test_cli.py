"""The drop-in CLIs: protect-integrity and sefs-cli behave like Occlum's tools."""

from __future__ import annotations

import os
import random
import shutil

from occlum_rules.cli import main as cli
from tests.conftest import vectors_path

from .helpers import listing_of, make_random_tree


def test_protect_show_show_mac(tmp_path, capsys, monkeypatch):
    v = vectors_path("sefs", "pfs", "integrity")
    shutil.copy(v / ".Occlum_sys.json", tmp_path)
    monkeypatch.chdir(tmp_path)  # Occlum runs `cd build; ... protect .Occlum_sys.json`
    assert cli(["protect-integrity", "protect", ".Occlum_sys.json"]) == 0
    prot = tmp_path / ".Occlum_sys.json.protected"
    assert prot.read_bytes() == (v / ".Occlum_sys.json.protected").read_bytes()
    capsys.readouterr()
    assert cli(["protect-integrity", "show-mac", str(prot)]) == 0
    want = dict(ln.split() for ln in (v / "mac.txt").read_text().splitlines())[prot.name]
    assert capsys.readouterr().out == want + "\n"
    assert cli(["protect-integrity", "show-mac", str(prot), "tmp_mac"]) == 0
    assert (tmp_path / "tmp_mac").read_bytes() == (want + "\n").encode()
    assert len((tmp_path / "tmp_mac").read_bytes()) == 48
    assert cli(["protect-integrity", "show", str(prot), "plain"]) == 0
    assert (tmp_path / "plain").read_bytes() == (v / ".Occlum_sys.json").read_bytes()
    capsys.readouterr()
    assert cli(["protect-integrity", "show", str(prot)]) == 0
    assert capsys.readouterr().out.encode() == (v / ".Occlum_sys.json").read_bytes()


def test_protect_errors(tmp_path, capsys):
    assert cli(["protect-integrity", "protect", str(tmp_path / "missing")]) == 1
    assert "error:" in capsys.readouterr().err
    (tmp_path / "f.protected").write_bytes(b"garbage" * 1000)
    assert cli(["protect-integrity", "show-mac", str(tmp_path / "f.protected")]) == 1
    assert "not a protected file" in capsys.readouterr().err


def test_sefs_cli_zip_unzip_with_key(tmp_path, capsys):
    make_random_tree(tmp_path / "src", random.Random(1), files=20)
    assert cli(["gen-image-key", str(tmp_path / "key")]) == 0
    assert cli(["sefs-cli", "zip", "--key", str(tmp_path / "key"), str(tmp_path / "src"),
                str(tmp_path / "img"), str(tmp_path / "mac")]) == 0
    assert len((tmp_path / "mac").read_bytes()) == 47
    capsys.readouterr()
    assert cli(["sefs-cli", "unzip", str(tmp_path / "img"), str(tmp_path / "out")]) == 1
    assert "-p" in capsys.readouterr().err
    assert cli(["sefs-cli", "unzip", "-k", str(tmp_path / "key"), "--mac", str(tmp_path / "mac"),
                str(tmp_path / "img"), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == "Decrypt the SEFS image successfully\n"
    assert listing_of(tmp_path / "out") == listing_of(tmp_path / "src")


def test_sefs_cli_incremental_extension(tmp_path):
    make_random_tree(tmp_path / "src", random.Random(2), files=20)
    args = ["sefs-cli", "zip", "--state", str(tmp_path / "st"), str(tmp_path / "src"),
            str(tmp_path / "img"), str(tmp_path / "mac")]
    assert cli(args) == 0
    first = (tmp_path / "mac").read_text()
    (tmp_path / "src" / "new").write_bytes(b"hello")
    assert cli(args) == 0
    assert cli(["sefs-cli", "zip", str(tmp_path / "src"), str(tmp_path / "img2"), str(tmp_path / "mac2")]) == 0
    assert (tmp_path / "mac").read_text() == (tmp_path / "mac2").read_text() != first
    assert cli(["sefs-cli", "unzip", "-p", str(tmp_path / "img"), str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(tmp_path / "src"))


def test_help_works(capsys):
    for cmd in (["protect-integrity"], ["sefs-cli"], ["patch-builtin-config"], ["gen-image-key"]):
        try:
            cli([*cmd, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert "usage:" in capsys.readouterr().out
