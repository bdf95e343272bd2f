"""The stand-in install (tests/support/occlum_install.py) is laid out as Occlum's
``make install`` and toolchain installers lay an install out: checked here against
../shared/specs/occlum-install.md section (a), and found by discovery like a real one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from occlum_rules.stages.elfcheck import pie_kind
from occlum_rules.standin.shape import check_libos_shape
from occlum_rules.toolchains.occlum import discover, read_version
from tests.support.occlum_install import make_occlum_install


def spec_prefix(version: str, hyper: bool, ra: bool) -> dict[str, tuple]:
    """path -> ("file", mode or None) | ("link", target) for what spec (a) names."""
    major = version.split(".")[0]
    modes = ["", "_sim"] + (["_hyper"] if hyper else [])
    f = ("file", None)
    tree: dict[str, tuple] = {}
    # build/bin: all regular files (cp dereferences)
    for name in ("occlum", "occlum_build.mk", "occlum-protect-integrity", "gen_internal_conf",
                 "copy_bom", "init", "occlum-run", "occlum_exec_client", "occlum_exec_server",
                 "sefs-cli", "sefs-cli_sim", *(["sefs-cli_hyper"] if hyper else []),
                 *(["init_grpc_ratls", "init_aecs"] if ra else [])):
        tree[f"build/bin/{name}"] = f
    # build/lib: versioned files, the four relative links, protect-integrity, sefs-cli libs
    for sfx in modes:
        tree[f"build/lib/libocclum-libos{sfx}.so.{version}"] = f
        tree[f"build/lib/libocclum-pal{sfx}.so.{version}"] = f
    tree[f"build/lib/libocclum-pal.so.{major}"] = ("link", f"libocclum-pal.so.{version}")
    tree["build/lib/libocclum-pal.so"] = ("link", f"libocclum-pal.so.{major}")
    tree[f"build/lib/libocclum-libos.so.{major}"] = ("link", f"libocclum-libos.so.{version}")
    tree["build/lib/libocclum-libos.so"] = ("link", f"libocclum-libos.so.{major}")
    tree[f"build/lib/occlum-protect-integrity.signed.so.{version}"] = f
    tree[f"build/lib/occlum-protect-integrity.signed.so.{major}"] = (
        "link", f"occlum-protect-integrity.signed.so.{version}")
    for name in ("libsefs-cli.so", "libsefs-cli_sim.so", "libsefs-cli.signed.so"):
        tree[f"build/lib/{name}"] = f
    tree["build/sefs-cli.Enclave.xml"] = ("file", 0o644)
    for name in ("occlum_pal_api.h", "occlum_version.h"):
        tree[f"include/{name}"] = ("file", 0o444)
    for name in ("Enclave.pem", "Occlum.json", "base.yaml", "init_aecs.json", "init_grpc_ratls.json",
                 "java-11-alibaba-dragonwell.yaml", "java-11-openjdk-amd64.yaml",
                 "java-11-openjdk.yaml", "java-8-openjdk-amd64.yaml", "java-8-openjdk.yaml",
                 "occlum_elf_loader.config"):
        tree[f"etc/template/{name}"] = ("file", 0o444)
    for name in ("libsgx_ptrace.so", "libsgx_uae_service_sim.so", "libsgx_quote_ex_sim.so"):
        tree[f"sgxsdk-tools/lib64/{name}"] = f
    for name in ("libsgx_uae_service_sim.so", "libsgx_quote_ex_sim.so"):
        tree[f"sgxsdk-tools/sdk_libs/{name}"] = ("link", f"../lib64/{name}")
    tree["sgxsdk-tools/bin/sgx-gdb"] = f
    tree["sgxsdk-tools/bin/x64/sgx_sign"] = f
    tree["sgxsdk-tools/environment"] = f
    tree["toolchains/gcc/x86_64-linux-musl/lib/libc.so"] = ("file", 0o755)  # deb rules:46
    for name in ("occlum-gcc", "occlum-g++", "occlum-ld"):
        tree[f"toolchains/gcc/bin/{name}"] = f
    for name in ("libc.so.6", "libpthread.so.0", "libm.so.6", "ld-linux-x86-64.so.2",
                 "libnss_files.so.2", "libnss_dns.so.2"):
        tree[f"glibc/lib/{name}"] = f
    return tree


def entry(path: Path) -> tuple:
    if path.is_symlink():
        return ("link", os.readlink(path))
    return ("file", stat.S_IMODE(path.stat().st_mode))


@pytest.mark.parametrize("version,hyper,ra", [("0.30.1", False, False), ("1.2.3", True, True)])
def test_layout_follows_make_install(tmp_path, version, hyper, ra):
    modes = ("HW", "SIM", "HYPER") if hyper else ("HW", "SIM")
    inst = make_occlum_install(tmp_path / "occlum", version=version, modes=modes, ra=ra)
    home = inst.home
    for rel, want in spec_prefix(version, hyper, ra).items():
        path = home / rel
        assert path.is_symlink() or path.is_file(), rel
        got = entry(path)
        assert got[0] == want[0], rel
        if want[0] == "link" or want[1] is not None:
            assert got == want, rel
    # build/bin holds only regular files; the HW/SIM install makes no _sim links
    assert not any(p.is_symlink() for p in (home / "build/bin").iterdir())
    assert not [p for p in (home / "build/lib").iterdir() if p.is_symlink() and "_sim" in p.name]
    # occlum-ar/-strip are absolute links (musl-gcc build.sh:73-74)
    for name in ("occlum-ar", "occlum-strip"):
        assert os.path.isabs(os.readlink(home / "toolchains/gcc/bin" / name))
    # RA toolchains only when asked
    assert (home / "toolchains/grpc_ratls/musl/libgrpc_ratls_client.so").exists() == ra
    assert (home / "toolchains/dcap_lib/musl/libocclum_dcap.so.0.1.0").exists() == ra
    # the LibOS is an enclave-shaped shared object, init a PIE: the build can sign/run them
    for mode in modes:
        check_libos_shape(inst.lib("libocclum-libos", mode))  # raises when not enclave-shaped
    assert pie_kind(home / "build/bin/init") == "pie"
    # version header: the update_version.sh layout, read the way tools/occlum reads it
    header = (home / "include/occlum_version.h").read_text()
    assert header.startswith("// This file generated by update_version.sh\n")
    major = [ln.split()[2] for ln in header.splitlines()
             if ln.startswith("#define OCCLUM_MAJOR_VERSION")]  # grep | awk '{print $3}'
    assert major == [version.split(".")[0]]
    assert f"// Version = {version}\n" in header
    assert read_version(home / "include/occlum_version.h") == version


def test_discovery_finds_every_part(tmp_path):
    inst = make_occlum_install(tmp_path / "occlum", ra=True)
    found = discover(inst.home, "test")
    assert found is not None and found.version == "0.30.1"
    assert found.libos == {"HW": inst.lib("libocclum-libos", "HW"),
                           "SIM": inst.lib("libocclum-libos", "SIM")}
    assert found.pal == {"HW": inst.lib("libocclum-pal", "HW"), "SIM": inst.lib("libocclum-pal", "SIM")}
    assert found.init == inst.home / "build/bin/init"
    assert found.musl_lib == inst.musl_lib
    assert sorted(found.musl_runtime()) == sorted(
        ["ld-musl-x86_64.so.1", "libc.so", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1"])
    assert found.sign_tool("HW") == inst.home / "sgxsdk-tools/bin/x64/sgx_sign"
    # what remains missing is what a HW+SIM install without HYPER lacks, plus host links
    # outside the prefix that this stand-in does not make
    assert all("hyper" in m or m.startswith("toolchains/rust") or m.startswith("toolchains/golang")
               for m in found.missing), found.missing
