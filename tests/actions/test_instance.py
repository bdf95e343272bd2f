"""actions/instance.py and actions/bom.py: the in-place adapters keep their state in the
private directory the engine gives them, and nowhere else."""

from __future__ import annotations

import subprocess

import pytest

from occlum_rules.actions.bom import assemble
from occlum_rules.actions.instance import assemble_initfs, pack
from occlum_rules.stages.securefs.incremental import STATE_KIND, STATE_VERSION
from occlum_rules.state_file import read_state
from tests.actions.support import make_ctx
from tests.stages.bom.helpers import need_tool


def test_pack_keeps_its_state_in_the_private_dir_and_packs_incrementally(tmp_path, capsys):
    src = tmp_path / "image"
    (src / "bin").mkdir(parents=True)
    for i in range(5):
        (src / "bin" / f"f{i}").write_bytes(bytes([i]) * 5000)
    ctx = make_ctx(tmp_path, inputs=["image"], outputs=["build/mount/__ROOT", "build/mount/.ROOT_MAC"],
                   params={"what": "image"})
    pack(ctx)
    assert "packed in full" in capsys.readouterr().err
    state = ctx.state_dir / "pack.state"
    assert isinstance(read_state(state, STATE_KIND, STATE_VERSION), memoryview)
    assert sorted(p.name for p in ctx.state_dir.iterdir()) == ["pack.state"]
    first_mac = (tmp_path / "build/mount/.ROOT_MAC").read_text()
    (src / "bin" / "f3").write_bytes(b"changed" * 100)
    pack(ctx)
    assert "packed incrementally" in capsys.readouterr().err
    assert (tmp_path / "build/mount/.ROOT_MAC").read_text() != first_mac


def test_pack_with_a_key_keeps_no_state(tmp_path):
    src = tmp_path / "image"
    src.mkdir()
    (src / "a").write_text("secret\n")
    key = tmp_path / "image.key"
    key.write_text("-".join(f"{i:02x}" for i in range(16)) + "\n")
    ctx = make_ctx(tmp_path, inputs=["image"], outputs=["build/mount/__ROOT", "build/mount/.ROOT_MAC"],
                   params={"what": "image"}, secrets={"image_key": key})
    pack(ctx)
    assert list(ctx.state_dir.iterdir()) == []


def test_assemble_initfs_declares_the_host_files_it_copied(tmp_path):
    host = tmp_path / "host" / "init"
    host.parent.mkdir()
    host.write_bytes(b"\x7fELF init")
    host.chmod(0o755)
    entries = [{"path": "bin", "kind": "dir"},
               {"path": "bin/init", "kind": "copy", "src": str(host), "optional": False},
               {"path": "lib/missing.so", "kind": "copy", "src": str(tmp_path / "nope"),
                "optional": True},
               {"path": "etc/hostname", "kind": "text", "text": "occlum\n"}]
    ctx = make_ctx(tmp_path, outputs=["initfs", "build/image_config.json"],
                   params={"entries": entries, "encrypted": False, "buildin_image_key": False})
    assemble_initfs(ctx)
    initfs = tmp_path / "initfs"
    assert (initfs / "bin/init").read_bytes() == b"\x7fELF init"
    assert (initfs / "bin/init").stat().st_mode & 0o777 == 0o755
    assert not (initfs / "lib/missing.so").exists()
    assert (initfs / "etc/image_config.json").read_bytes() == (
        tmp_path / "build/image_config.json").read_bytes()
    assert b"integrity-only" in (initfs / "etc/image_config.json").read_bytes()
    assert ctx.discovered == [str(host)]


def test_copy_bom_keeps_elf_facts_in_the_private_dir(tmp_path):
    cc = need_tool("cc")
    (tmp_path / "app.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "out").mkdir()
    subprocess.run([cc, "-fPIE", "-pie", "app.c", "-o", "out/app"], cwd=tmp_path, check=True)
    (tmp_path / "app.yaml").write_text("targets:\n  - target: /\n    mkdirs:\n      - bin\n")
    ctx = make_ctx(tmp_path, outputs=["out/image", "out/image.manifest.json"],
                   params={"bom": "app.yaml", "include_dirs": [], "extra_files": {"/bin": ["out/app"]},
                           "origins": {}, "env": {}, "loader_config": None, "glibc": "host",
                           "out_dir": "out"})
    assemble(ctx)
    assert (tmp_path / "out/image/bin/app").is_file()
    facts = ctx.state_dir / "elf-headers.state"
    assert isinstance(read_state(facts, "elf-headers", 2), memoryview)
    assert sorted(p.name for p in ctx.state_dir.iterdir()) == ["elf-headers.state"]
    assert not (tmp_path / "out" / ".occlum-rules" / "elf-headers.marshal").exists()


@pytest.mark.parametrize("kind", ["symlink", "copy", "text"])
def test_layout_writes_each_kind(tmp_path, kind):
    from occlum_rules.actions.instance import layout

    (tmp_path / "src.txt").write_text("source\n")
    spec = {"symlink": {"kind": "symlink", "target": "src.txt"},
            "copy": {"kind": "copy", "src": "src.txt", "mode": 0o640},
            "text": {"kind": "text", "text": "HW\n"}}[kind]
    ctx = make_ctx(tmp_path, outputs=["inst/thing"],
                   params={"names": ["thing"], "entries": {"thing": spec}, "instance_dir": "inst"})
    layout(ctx)
    thing = tmp_path / "inst/thing"
    if kind == "symlink":
        assert thing.is_symlink() and str(thing.readlink()) == "src.txt"
    elif kind == "copy":
        assert thing.read_text() == "source\n" and thing.stat().st_mode & 0o777 == 0o640
    else:
        assert thing.read_text() == "HW\n"
    assert (tmp_path / "inst/run/mount/__ROOT").is_dir()
