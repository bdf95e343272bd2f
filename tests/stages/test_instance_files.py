"""stages/instance_files.py: carrying out an initfs plan and an instance layout on disk."""

from __future__ import annotations

import os

from occlum_rules.stages.instance_files import (
    assemble_initfs,
    copy_like_cp,
    image_config_json,
    write_layout,
)


def test_copies_take_the_source_mode_less_the_umask(tmp_path):
    src = tmp_path / "tool"
    src.write_text("x")
    src.chmod(0o777)
    copy_like_cp(src, tmp_path / "a" / "copy")
    assert (tmp_path / "a" / "copy").stat().st_mode & 0o777 == 0o755
    copy_like_cp(src, tmp_path / "b", 0o600)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


def test_image_config_names_the_image_type():
    assert b'"image_type": "encrypted"' in image_config_json(True)
    assert b'"image_type": "integrity-only"' in image_config_json(False)


def test_initfs_follows_links_like_cp_and_adds_build_time_files(tmp_path):
    real = tmp_path / "install" / "libc.so.1.2"
    real.parent.mkdir()
    real.write_bytes(b"libc")
    (tmp_path / "install" / "libc.so").symlink_to("libc.so.1.2")
    (tmp_path / "ra.json").write_text("{}\n")
    key = tmp_path / "k"
    key.write_text("key\n")
    entries = [{"path": "lib/libc.so", "kind": "copy", "src": str(tmp_path / "install/libc.so"),
                "optional": False},
               {"path": "lib/ld.so", "kind": "symlink", "target": "libc.so"},
               {"path": "ws.txt", "kind": "copy", "src": "ra.json", "optional": False}]
    initfs, config = tmp_path / "initfs", tmp_path / "build" / "image_config.json"
    read = assemble_initfs(tmp_path, initfs, config, entries, encrypted=True,
                           init_ra_conf="ra.json", image_key=key)
    assert read == [real]  # host files by their resolved path; workspace files are not listed
    assert not (initfs / "lib/libc.so").is_symlink()
    assert (initfs / "lib/libc.so").read_bytes() == b"libc"
    assert os.readlink(initfs / "lib/ld.so") == "libc.so"
    assert (initfs / "etc/init_ra_conf.json").read_text() == "{}\n"
    assert (initfs / "etc/image_key").stat().st_mode & 0o777 == 0o600
    assert config.read_bytes() == image_config_json(True)


def test_layout_replaces_links_and_keeps_run(tmp_path):
    inst = tmp_path / "inst"
    (inst / "run" / "mount" / "__ROOT").mkdir(parents=True)
    (inst / "run" / "mount" / "__ROOT" / "data").write_text("keep me\n")
    (inst / "lib").mkdir()
    (inst / "lib" / "pal").symlink_to("old")
    write_layout(tmp_path, inst, {"pal": {"kind": "symlink", "target": "new"},
                                  "status": {"kind": "text", "text": "built\n"}},
                 {"pal": inst / "lib" / "pal", "status": inst / ".status"})
    assert os.readlink(inst / "lib" / "pal") == "new"
    assert (inst / ".status").read_text() == "built\n"
    assert (inst / "run" / "mount" / "__ROOT" / "data").read_text() == "keep me\n"
    assert (inst / "run" / "initfs" / "__ROOT").is_dir()
