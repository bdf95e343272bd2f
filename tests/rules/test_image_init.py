"""occlum_bom starts from the image/ `occlum init` makes; the BOM's files win on conflicts.

No Occlum install here (WORKSPACE.yaml points at a directory that is none), so `occlum init`'s
musl runtime is the host's musl, named as a stand-in in the build output. The expected
init files are ../shared/specs/occlum-install.md section (b) "occlum init".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.workspace import make_workspace, run_doit

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'
OWN_HOSTS = "10.0.0.1   db\n"
BOM = ("targets:\n  - target: /\n    mkdirs: [bin, etc]\n"
       "  - target: /etc\n    copy:\n      - files:\n          - hosts\n")


def _workspace(root: Path, occlum_init: bool | None) -> Path:
    flag = "" if occlum_init is None else f", occlum_init = {occlum_init}"
    build = (
        'occlum_cc_binary(name = "hello", srcs = ["hello.c"])\n'
        f'occlum_bom(name = "image", src = "image.yaml", deps = {{"/bin": [":hello"]}}{flag})\n'
        'occlum_instance(name = "instance", bom = ":image")\n'
    )
    return make_workspace(root, {"app/hello.c": HELLO_C, "app/image.yaml": BOM,
                                 "app/hosts": OWN_HOSTS, "app/BUILD.py": build},
                          "source_date_epoch: 0\nstages: python\nocclum:\n  home: /nonexistent\n")


def _image(ws: Path) -> Path:
    return (ws / "out/bin/app/instance/image").resolve()


def _build(ws: Path, cache: Path) -> str:
    result = run_doit(ws, "build", cache=cache, env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    return result.output


def test_bom_file_wins_over_occlum_init_and_init_files_are_there(tmp_path):
    ws = _workspace(tmp_path / "ws", None)
    output = _build(ws, tmp_path / "cache")
    image = _image(ws)
    assert (image / "etc/hosts").read_text() == OWN_HOSTS  # the BOM's copy came later
    assert (image / "etc/localtime").read_bytes() == Path("/etc/localtime").read_bytes()
    for d in ("lib64", "root", "host", "tmp", "dev", "proc", "sbin", "ext2"):  # newest release
        assert (image / d).is_dir(), d
    assert not (image / "opt").exists()  # no Occlum glibc without an install
    loader = Path("/lib/ld-musl-x86_64.so.1")
    if loader.exists():  # the host's musl stands in, and the build says so
        assert (image / "lib/ld-musl-x86_64.so.1").read_bytes() == loader.read_bytes()
        assert "musl runtime: the host's musl" in output and "stands in" in output
    manifest = json.loads((ws / "out/bin/app/image/image.manifest.json").read_text())
    assert {"etc/hosts", "etc/localtime", "sbin"} <= {e["path"] for e in manifest}


def test_occlum_init_false_is_the_bom_alone(tmp_path):
    ws = _workspace(tmp_path / "ws", False)
    _build(ws, tmp_path / "cache")
    image = _image(ws)
    # the BOM's directories, and lib/ for the program's libraries (dependency discovery)
    assert set(os.listdir(image)) <= {"bin", "etc", "lib"}
    assert sorted(os.listdir(image / "etc")) == ["hosts"]


def test_turning_occlum_init_off_changes_the_image_mac(tmp_path):
    macs = []
    for flag in (True, False):
        ws = _workspace(tmp_path / f"ws-{flag}", flag)
        _build(ws, tmp_path / "cache")
        macs.append((ws / "out/bin/app/instance/build/mount/.ROOT_MAC").read_text())
    assert macs[0] != macs[1]
