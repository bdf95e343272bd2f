"""Finding an Occlum install: what is recognised, what each path resolves to, and why."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from occlum_rules.core.workspace import load_workspace
from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind
from occlum_rules.toolchains import Toolchains
from occlum_rules.toolchains.occlum import discover, read_version, why_not_install
from tests.support.workspace import REPO, make_workspace, run_cli, run_doit
from tests.toolchains.fake_install import make_fake_install, make_standin


@pytest.fixture(scope="module")
def fake_home(tmp_path_factory) -> Path:
    return make_fake_install(tmp_path_factory.mktemp("occlum") / "opt-occlum")


@pytest.fixture
def no_env_home(monkeypatch):
    monkeypatch.delenv("OCCLUM_HOME", raising=False)


def toolchains_for(root: Path, home: Path | None) -> Toolchains:
    yaml = "source_date_epoch: 0\n" + (f"occlum:\n  home: {home}\n" if home else "")
    make_workspace(root, {}, yaml)
    return Toolchains(load_workspace(root))


def test_fake_install_is_recognised_with_every_part(fake_home, tmp_path, no_env_home):
    tc = toolchains_for(tmp_path / "ws", fake_home)
    inst = tc.occlum()
    assert inst is not None and tc.notes == []
    assert inst.home == fake_home and inst.source == "WORKSPACE.yaml occlum.home"
    assert inst.version == "0.31.0" and inst.major == "0"
    assert inst.occlum == fake_home / "build/bin/occlum"
    lib = fake_home / "build/lib"
    assert inst.libos == {"HW": lib / "libocclum-libos.so.0.31.0",
                          "SIM": lib / "libocclum-libos_sim.so.0.31.0"}
    assert inst.pal == {"HW": lib / "libocclum-pal.so.0.31.0",
                        "SIM": lib / "libocclum-pal_sim.so.0.31.0"}
    assert inst.libos_lib("SIM") == lib / "libocclum-libos_sim.so.0.31.0"
    assert pie_kind(inst.libos_lib("HW")) == "shared"
    assert inst.lib_names("SIM") == {"libos": "libocclum-libos_sim.so.0.31.0",
                                     "pal": "libocclum-pal_sim.so.0.31.0"}
    with pytest.raises(UserError, match="no LibOS library for SGX mode HYPER"):
        inst.libos_lib("HYPER")
    assert "build/lib/libocclum-libos_hyper.so.0.31.0" in inst.missing
    assert inst.init == fake_home / "build/bin/init" and pie_kind(inst.init) == "pie"
    gcc_bin = fake_home / "toolchains/gcc/bin"
    assert (inst.occlum_gcc, inst.occlum_gxx) == (gcc_bin / "occlum-gcc", gcc_bin / "occlum-g++")
    assert inst.occlum_cargo == fake_home / "toolchains/rust/bin/occlum-cargo"
    assert inst.occlum_go == fake_home / "toolchains/golang/bin/occlum-go"
    assert inst.musl_lib == fake_home / "toolchains/gcc/x86_64-linux-musl/lib"
    assert inst.musl_runtime()["libc.so"] == inst.musl_lib / "libc.so"
    assert inst.glibc_lib == fake_home / "glibc/lib"
    assert inst.template_dir == fake_home / "etc/template"
    assert sorted(inst.templates) == sorted(
        ["Occlum.json", "base.yaml", "Enclave.pem", "occlum_elf_loader.config"])
    assert inst.sgx_sdk == fake_home / "sgxsdk-tools"
    assert inst.tools == {
        "copy_bom": fake_home / "build/bin/copy_bom",
        "gen_internal_conf": fake_home / "build/bin/gen_internal_conf",
        "sefs-cli": fake_home / "build/bin/sefs-cli",
        "occlum-protect-integrity": fake_home / "build/bin/occlum-protect-integrity",
        "sgx_sign": fake_home / "sgxsdk-tools/bin/x64/sgx_sign"}
    assert inst.sign_tool("HW") == inst.tools["sgx_sign"] and inst.sign_tool("HYPER") is None
    assert inst.fingerprint.startswith("occlum:0.31.0:")


def test_compilers_come_from_the_install_first(fake_home, tmp_path, no_env_home):
    tc = toolchains_for(tmp_path / "ws", fake_home)
    cc = tc.cc()
    assert cc.name == "occlum-gcc" and cc.path == str(fake_home / "toolchains/gcc/bin/occlum-gcc")
    assert "Occlum install (WORKSPACE.yaml occlum.home)" in cc.source
    go = tc.go()
    assert go.path == str(fake_home / "toolchains/golang/bin/occlum-go")
    assert go.version.startswith("go version")
    if not (Path(os.path.expanduser("~/.cargo/bin/cargo")).exists() or
            any(Path(d, "cargo").exists() for d in os.environ["PATH"].split(":"))):
        pytest.skip("cargo is not installed here: the occlum-cargo wrapper has nothing to run")
    cargo = tc.cargo()
    assert cargo.cargo.path == str(fake_home / "toolchains/rust/bin/occlum-cargo")
    assert cargo.run_cargo == cargo.cargo.path  # a wrapper runs as itself
    assert cargo.rustc.version.startswith("rustc ")
    assert cargo.rustc.fingerprint in cargo.fingerprint


def test_occlum_home_precedence(fake_home, tmp_path, monkeypatch):
    other = make_standin(tmp_path / "elsewhere")
    monkeypatch.setenv("OCCLUM_HOME", str(fake_home))
    tc = toolchains_for(tmp_path / "env", None)
    assert tc.occlum() is not None and tc.occlum().source == "$OCCLUM_HOME"
    # WORKSPACE.yaml wins over the environment, even when it points at a non-install
    tc = toolchains_for(tmp_path / "yaml", other)
    assert tc.occlum() is None
    assert tc.occlum_home() == (other, "WORKSPACE.yaml occlum.home")


def test_standin_directory_is_not_an_install(tmp_path, no_env_home):
    standin = make_standin(tmp_path / "opt-occlum")
    assert discover(standin, "test") is None
    reason = why_not_install(standin)
    assert "no build/bin/occlum" in reason and "include/occlum_version.h" in reason
    assert "etc/template, glibc/lib" in reason
    tc = toolchains_for(tmp_path / "ws", standin)
    assert tc.occlum() is None and tc.occlum() is None
    tc.cc()
    tc.go()
    assert len(tc.notes) == 1, tc.notes  # said once, however many rules ask
    note = tc.notes[0]
    assert f"no Occlum install found at {standin}" in note
    assert "WORKSPACE.yaml occlum.home" in note and "built-in Python stages" in note
    assert tc.cc().name != "occlum-gcc"
    with pytest.raises(UserError, match="needs an Occlum install"):
        tc.require_occlum("stages: occlum")


def test_this_machines_opt_occlum_standin_is_not_an_install(tmp_path, no_env_home):
    """setup-host.sh leaves templates and the glibc loader at /opt/occlum; that is no install."""
    default = Path("/opt/occlum")
    if (default / "build/bin/occlum").exists():
        pytest.skip("a real Occlum install is present at /opt/occlum")
    tc = toolchains_for(tmp_path / "ws", None)
    assert tc.occlum_home() == (default, "default /opt/occlum")
    assert tc.occlum() is None
    assert "no Occlum install found at /opt/occlum (default /opt/occlum;" in tc.notes[0]


def test_version_header_without_numbers_is_not_an_install(tmp_path):
    home = make_standin(tmp_path / "half")
    (home / "build/bin").mkdir(parents=True)
    (home / "build/bin/occlum").write_text("#!/bin/sh\n")
    (home / "include").mkdir()
    (home / "include/occlum_version.h").write_text("#define OCCLUM_MAJOR_VERSION 0\n")
    assert read_version(home / "include/occlum_version.h") is None
    assert discover(home, "test") is None
    assert "include/occlum_version.h" in why_not_install(home)


def test_fingerprint_follows_the_libos_content(tmp_path):
    home = make_fake_install(tmp_path / "occlum")
    first = discover(home, "test")
    assert discover(home, "test").fingerprint == first.fingerprint
    libos = first.libos_lib("HW")
    libos.write_bytes(libos.read_bytes() + b"\0")
    assert discover(home, "test").fingerprint != first.fingerprint


def test_toolchains_command_prints_choices_and_sources(fake_home, tmp_path):
    root = tmp_path / "ws"
    make_workspace(root, {}, f"source_date_epoch: 0\nocclum:\n  home: {fake_home}\n")
    env = {"OCCLUM_HOME": ""}
    text = run_cli("toolchains", cwd=root, env=env)
    assert text.returncode == 0, text.output
    out = text.stdout
    assert f"occlum     0.31.0 at {fake_home} (from WORKSPACE.yaml occlum.home)" in out
    assert str(fake_home / "build/lib/libocclum-libos_sim.so.0.31.0") in out
    assert "cc         " + str(fake_home / "toolchains/gcc/bin/occlum-gcc") in out
    assert "from Occlum install (WORKSPACE.yaml occlum.home)" in out
    data = json.loads(run_cli("toolchains", "--json", cwd=root, env=env).stdout)
    assert data["occlum"]["version"] == "0.31.0"
    assert data["occlum"]["libos"]["HW"].endswith("libocclum-libos.so.0.31.0")
    assert data["tools"]["go"]["path"].endswith("toolchains/golang/bin/occlum-go")
    # and with nothing installed it says so, and what it falls back to
    standin = make_standin(tmp_path / "standin")
    (root / "WORKSPACE.yaml").write_text(f"source_date_epoch: 0\nocclum:\n  home: {standin}\n")
    out = run_cli("toolchains", cwd=root, env=env).stdout
    assert "occlum     none:" in out and "it is not an Occlum install" in out
    assert "built-in Python stages" in out


def test_build_compiles_with_the_installs_occlum_gcc_and_occlum_cargo(fake_home, tmp_path):
    files = {
        "app/BUILD.py": 'occlum_cc_binary(name = "hi", srcs = ["hi.c"])\n',
        "app/hi.c": (REPO / "examples/hello_c/hello.c").read_text(),
    }
    has_cargo = shutil.which("cargo") or os.path.exists(os.path.expanduser("~/.cargo/bin/cargo"))
    if has_cargo:
        for rel in ("Cargo.toml", "Cargo.lock", "src/main.rs"):
            files[f"rs/{rel}"] = (REPO / "examples/hello_rust" / rel).read_text()
        files["rs/BUILD.py"] = 'cargo_binary(name = "hello_rust")\n'
    root = make_workspace(tmp_path / "ws", files,
                          f"source_date_epoch: 0\nocclum:\n  home: {fake_home}\n")
    log = fake_home / "wrapper.log"
    before = log.read_text() if log.exists() else ""
    result = run_doit(root, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    assert "no Occlum install found" not in result.output
    used = log.read_text()[len(before):]
    assert "toolchains/gcc/bin/occlum-gcc" in used and "hi.c" in used
    assert pie_kind(root / "out/bin/app/hi/hi") == "pie"
    if has_cargo:
        assert "toolchains/rust/bin/occlum-cargo build --offline" in used
        assert pie_kind(root / "out/bin/rs/hello_rust/hello_rust") == "pie"


def test_go_fingerprint_sees_the_go_behind_occlum_go(tmp_path, no_env_home):
    home = make_fake_install(tmp_path / "occlum")
    first = toolchains_for(tmp_path / "ws1", home).go()
    assert first.path == str(home / "toolchains/golang/bin/occlum-go")
    real = home / "toolchains/golang/bin/go"
    target = os.readlink(real)
    real.unlink()  # "upgrade" the go beside an unchanged occlum-go script
    real.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
    real.chmod(0o755)
    again = toolchains_for(tmp_path / "ws2", home).go()
    assert again.path == first.path and again.fingerprint != first.fingerprint


def test_relative_occlum_home_is_relative_to_the_workspace(tmp_path, no_env_home):
    root = tmp_path / "ws"
    make_fake_install(root / "third_party/occlum")
    make_workspace(root, {}, "source_date_epoch: 0\nocclum:\n  home: third_party/occlum\n")
    tc = Toolchains(load_workspace(root))
    assert tc.occlum() is not None and tc.occlum().home == root / "third_party/occlum"
