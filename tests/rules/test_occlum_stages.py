"""`stages: occlum`: the installed tools get occlum_build.mk's arguments and give the same bytes.

No real Occlum install exists here. The test builds a directory laid out like one whose
tools are thin wrappers around this project's drop-in commands (named as stand-ins in the
scripts), and whose LibOS/PAL/init are the stand-in binaries. That exercises discovery, the
argument lists and the tool-running path; that the real tools accept these arguments is
checked against occlum_build.mk's recipes below.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from occlum_rules.actions import occlum_tools
from occlum_rules.standin.build import build_standin
from tests.support.workspace import copy_examples, outcomes, run_doit

HOME = "/opt/occlum"


def test_argument_lists_follow_occlum_build_mk():
    # recipes of tools/occlum_build.mk (Occlum 690d5dbf): $(SECURE_IMAGE), $(JSON_CONF)-driven
    # .Occlum_sys.json, .Occlum_sys.json.protected, $(LIBOS), $(SIGNED_ENCLAVE)
    assert occlum_tools.sefs_zip(HOME, "I/image", "I/build/mount/__ROOT", "I/build/mount/.ROOT_MAC") == [
        "/opt/occlum/build/bin/sefs-cli_sim", "--enclave", "/opt/occlum/build/lib/libsefs-cli.signed.so",
        "zip", "I/image", "I/build/mount/__ROOT", "I/build/mount/.ROOT_MAC"]
    assert occlum_tools.sefs_zip(HOME, "s", "d", "m", key="k")[3:6] == ["zip", "--key", "k"]
    assert occlum_tools.gen_internal_conf(HOME, "I/Occlum.json", "M1", "M2", "I/build/Enclave.xml",
                                          "I/build/.Occlum_sys.json") == [
        "/opt/occlum/build/bin/gen_internal_conf", "--user_json", "I/Occlum.json", "gen_conf",
        "--user_fs_mac", "M1", "--sdk_xml", "I/build/Enclave.xml", "--init_fs_mac", "M2",
        "--output_json", "I/build/.Occlum_sys.json"]
    assert occlum_tools.protect(HOME) == [
        "/opt/occlum/build/bin/occlum-protect-integrity", "protect", ".Occlum_sys.json"]
    assert occlum_tools.show_mac(HOME, "P", "T") == [
        "/opt/occlum/build/bin/occlum-protect-integrity", "show-mac", "P", "T"]
    assert occlum_tools.update_builtin_config("T", "L") == [
        "objcopy", "--update-section", ".builtin_config=T", "L"]
    assert occlum_tools.sgx_sign("S", "K", "X", "E", "O") == [
        "S", "sign", "-key", "K", "-config", "X", "-enclave", "E", "-out", "O"]


def _wrapper(path: Path, command: str, drop_enclave: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    drop = 'if [ "$1" = "--enclave" ]; then shift 2; fi\n' if drop_enclave else ""
    path.write_text(f"#!/bin/sh\n# STAND-IN for an Occlum tool: runs occlum-rules' drop-in command\n"
                    f"{drop}exec {sys.executable} -m occlum_rules {command} \"$@\"\n")
    path.chmod(0o755)


def fake_install(home: Path) -> Path:
    files = build_standin(home / "standin-build")
    lib = home / "build/lib"
    lib.mkdir(parents=True)
    for mode_suffix in ("", "_sim"):
        shutil.copy(files.libos, lib / f"libocclum-libos{mode_suffix}.so.0.31.0")
        shutil.copy(files.pal, lib / f"libocclum-pal{mode_suffix}.so.0.31.0")
    (lib / "libsefs-cli.signed.so").write_bytes(b"stand-in")
    bin_dir = home / "build/bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(files.init, bin_dir / "init")
    for name in ("occlum-run", "occlum_exec_client", "occlum_exec_server"):
        shutil.copy(files.occlum_run, bin_dir / name)
    (bin_dir / "occlum").write_text("#!/bin/sh\necho stand-in occlum\n")
    (bin_dir / "occlum").chmod(0o755)
    _wrapper(bin_dir / "sefs-cli_sim", "sefs-cli", drop_enclave=True)
    _wrapper(bin_dir / "gen_internal_conf", "gen-conf")
    _wrapper(bin_dir / "occlum-protect-integrity", "protect-integrity")
    _wrapper(bin_dir / "copy_bom", "copy-bom")
    _wrapper(home / "sgxsdk-tools/bin/x64/sgx_sign", "sgx-sign")
    (home / "sgxsdk-tools/sdk_libs").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include/occlum_version.h").write_text(
        "#define OCCLUM_MAJOR_VERSION 0\n#define OCCLUM_MINOR_VERSION 31\n#define OCCLUM_PATCH_VERSION 0\n")
    shutil.rmtree(home / "standin-build")
    return home


def test_occlum_tools_give_the_same_instance_bytes(tmp_path):
    if shutil.which("objcopy") is None:
        import pytest

        pytest.skip("objcopy (binutils) is not installed")
    home = fake_install(tmp_path / "occlum")
    trees = {}
    for stages in ("python", "occlum"):
        ws = copy_examples(tmp_path / stages, ["hello_c"])
        text = (ws / "WORKSPACE.yaml").read_text().replace("stages: python", f"stages: {stages}")
        (ws / "WORKSPACE.yaml").write_text(text + f"occlum:\n  home: {home}\n")
        result = run_doit(ws, "//examples/hello_c:instance", cache=tmp_path / f"cache-{stages}",
                          env={"SOURCE_DATE_EPOCH": "1704067200"})
        assert result.returncode == 0, result.output
        assert "stand-in LibOS" not in result.output  # the "install" was used
        assert all(v == "run" for k, v in outcomes(ws).items() if ":instance:" in k)
        inst = ws / "out/bin/examples/hello_c/instance"
        trees[stages] = {str(p.relative_to(inst)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
                         for p in sorted(inst.rglob("*")) if p.is_file() or p.is_symlink()
                         if not str(p.relative_to(inst)).startswith("image")}
    assert trees["python"].keys() == trees["occlum"].keys()
    for name in trees["python"]:
        assert trees["python"][name] == trees["occlum"][name], name
