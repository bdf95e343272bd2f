"""stages/instance_layout: build/lib names per SGX mode, the initfs plans of occlum init, cp's
modes. Expected values follow ../shared/specs/occlum-install.md section (b) and tools/occlum
gen_initfs* (occlum 690d5dbf), cited per test."""

from __future__ import annotations

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.instance_layout import (
    InitfsSources,
    build_lib,
    cp_mode,
    image_dirs,
    image_init_plan,
    initfs_plan,
    missing_sources,
)

SOURCES = InitfsSources(
    home="/opt/occlum", init="/opt/occlum/build/bin/init",
    musl_runtime={"ld-musl-x86_64.so.1": "/lib/ld-musl-x86_64.so.1",
                  **{n: f"/usr/local/occlum/x86_64-linux-musl/lib/{n}"
                     for n in ("libc.so", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1")}},
    glibc_lib="/opt/occlum/glibc/lib", os_lib="/usr/lib/x86_64-linux-gnu")


def test_cp_mode_is_the_source_mode_less_the_umask():
    assert cp_mode(0o100644) == 0o644
    assert cp_mode(0o100777) == 0o755
    assert cp_mode(0o100444) == 0o444
    assert cp_mode(0o104755) == 0o755  # cp without -p drops set-id bits


@pytest.mark.parametrize("mode,sfx", [("HW", ""), ("SIM", "_sim"), ("HYPER", "_hyper")])
def test_build_lib_per_mode(mode, sfx):
    # spec (b) build/ table: $libos_lib.V and $pal_lib.V copied, .so.M and .so relative links
    lib = build_lib("0.30.1", mode)
    assert lib == {
        f"libocclum-libos{sfx}.so.0.30.1": {"kind": "libos"},
        "libocclum-libos.so.0": {"kind": "symlink", "target": f"libocclum-libos{sfx}.so.0.30.1"},
        "libocclum-libos.so": {"kind": "symlink", "target": "libocclum-libos.so.0"},
        "libocclum-libos.signed.so": {"kind": "signed"},
        f"libocclum-pal{sfx}.so.0.30.1": {"kind": "pal"},
        "libocclum-pal.so.0": {"kind": "symlink", "target": f"libocclum-pal{sfx}.so.0.30.1"},
        "libocclum-pal.so": {"kind": "symlink", "target": "libocclum-pal.so.0"},
    }
    with pytest.raises(ValueError):
        build_lib("0.30.1", "hw")


def _paths(entries):
    return {e.path: (e.kind, e.src or e.target or e.text) for e in entries}


def test_default_initfs_plan():
    # gen_initfs (tools/occlum:248-272)
    entries, template = initfs_plan(None, SOURCES)
    assert template == ""
    assert _paths(entries) == {
        **{d: ("dir", None) for d in ("bin", "lib", "dev", "proc", "etc")},
        "etc/hosts": ("text", "127.0.0.1   localhost\n"),
        "etc/localtime": ("copy", "/etc/localtime"),
        **{f"lib/{n}": ("copy", p) for n, p in SOURCES.musl_runtime.items()},
        "bin/init": ("copy", "/opt/occlum/build/bin/init"),
    }


def test_grpc_ratls_initfs_plan():
    # gen_initfs_grpc_ratls (tools/occlum:212-246): no etc/hosts, CA bundle, RA libraries
    entries, template = initfs_plan("grpc_ratls", SOURCES)
    paths = _paths(entries)
    assert template == "/opt/occlum/etc/template/init_grpc_ratls.json"
    assert "etc/hosts" not in paths
    assert paths["bin/init"] == ("copy", "/opt/occlum/build/bin/init_grpc_ratls")
    assert paths["etc/ssl/certs/ca-certificates.crt"] == ("copy", "/etc/ssl/certs/ca-certificates.crt")
    assert paths["lib/libocclum_dcap.so.0.1.0"] == (
        "copy", "/opt/occlum/toolchains/dcap_lib/musl/libocclum_dcap.so.0.1.0")
    assert paths["lib/libcjson.so.1"] == (
        "copy", "/opt/occlum/toolchains/gcc/x86_64-linux-musl/lib/libcjson.so.1")
    assert sorted(p for p in paths if p.startswith("lib/")) == sorted(
        [f"lib/{n}" for n in SOURCES.musl_runtime] + [
            "lib/libgrpc_ratls_client.so", "lib/libhw_grpc_proto.so",
            "lib/libocclum_dcap.so.0.1.0", "lib/libcjson.so.1"])


def test_aecs_initfs_plan_copies_the_client_dir_and_the_glibc_of_the_image():
    # gen_initfs_aecs (tools/occlum:163-210)
    entries, template = initfs_plan("aecs", SOURCES, listdir=lambda d: ["libual.so", "libaecs_client.so"])
    paths = _paths(entries)
    g = "opt/occlum/glibc/lib"
    assert template == "/opt/occlum/etc/template/init_aecs.json"
    assert paths["bin/init"] == ("copy", "/opt/occlum/build/bin/init_aecs")
    assert paths[f"{g}/ld-linux-x86-64.so.2"] == ("symlink", "/lib64/ld-linux-x86-64.so.2")
    assert paths["lib64/ld-linux-x86-64.so.2"] == ("copy", "/opt/occlum/glibc/lib/ld-linux-x86-64.so.2")
    assert paths[f"{g}/libual.so"] == ("copy", "/opt/occlum/toolchains/aecs_client/libual.so")
    assert paths[f"{g}/libz.so.1"] == ("copy", "/usr/lib/x86_64-linux-gnu/libz.so.1")
    # OpenSSL 1.1 from the OS only when the client toolchain brings none
    assert paths[f"{g}/libssl.so.1.1"] == ("copy", "/usr/lib/x86_64-linux-gnu/libssl.so.1.1")
    with_ssl, _ = initfs_plan("aecs", SOURCES, listdir=lambda d: ["libssl.so.1.1"])
    assert _paths(with_ssl)[f"{g}/libssl.so.1.1"][1].startswith("/opt/occlum/toolchains/aecs_client/")
    assert "etc/kubetee" in paths and "etc/hosts" not in paths


def test_missing_sources_name_the_install_parts():
    entries, _ = initfs_plan("grpc_ratls", SOURCES)
    present = {"/etc/localtime", "/etc/ssl/certs/ca-certificates.crt", *SOURCES.musl_runtime.values()}
    assert missing_sources(entries, present.__contains__) == [
        "toolchains/grpc_ratls/musl/libgrpc_ratls_client.so",
        "toolchains/grpc_ratls/musl/libhw_grpc_proto.so",
        "toolchains/dcap_lib/musl/libocclum_dcap.so.0.1.0",
        "toolchains/gcc/x86_64-linux-musl/lib/libcjson.so.1",
        "build/bin/init_grpc_ratls"]
    aecs, _ = initfs_plan("aecs", SOURCES, listdir=lambda d: [])
    assert "toolchains/aecs_client/*" in missing_sources(aecs, lambda p: True)
    # an optional copy (libprotobuf.so.32, copied only when present) is never missing
    assert not any("libprotobuf" in m for m in missing_sources(aecs, lambda p: False))


@pytest.mark.parametrize("version,extra", [
    # tools/occlum cmd_init: v0.31.0 added `mkdir -p image/sbin image/ext2`; the tags
    # v0.29.6 .. v0.30.1 make the other nine directories only.
    ("0.29.6", False), ("0.30.1", False), ("0.31.0", True), ("0.32.0", True), (None, True),
])
def test_image_dirs_follow_the_release(version, extra):
    dirs = image_dirs(version)
    assert dirs[:9] == ("bin", "lib", "lib64", "root", "host", "tmp", "dev", "proc", "etc")
    assert dirs[9:] == (("sbin", "ext2") if extra else ())


def test_image_init_plan_of_an_unsupported_release_is_one_clear_error():
    with pytest.raises(UserError) as info:
        image_init_plan(SOURCES, "0.28.1", "include/occlum_version.h")
    assert str(info.value).startswith("include/occlum_version.h: Occlum '0.28.1' is not supported")


def test_image_init_plan():
    # spec (b) `occlum init`: directories, hosts, localtime, musl runtime, glibc bits
    plan = {e.path: e for e in image_init_plan(SOURCES, "0.31.0")}
    assert plan["etc/hosts"].text == "127.0.0.1   localhost\n"
    assert plan["etc/localtime"].src == "/etc/localtime"
    assert plan["lib/libc.so"].src == "/usr/local/occlum/x86_64-linux-musl/lib/libc.so"
    assert plan["lib64/ld-linux-x86-64.so.2"].src == "/opt/occlum/glibc/lib/ld-linux-x86-64.so.2"
    link = plan["opt/occlum/glibc/lib/ld-linux-x86-64.so.2"]
    assert (link.kind, link.target) == ("symlink", "/lib64/ld-linux-x86-64.so.2")
    assert plan["opt/occlum/glibc/lib/libgcc_s.so.1"].src == "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"
    assert plan["opt/occlum/glibc/etc/localtime"].src == "/etc/localtime"
    assert {p for p, e in plan.items() if e.kind == "dir"} >= {"sbin", "ext2", "opt/occlum/glibc/etc"}
    # no glibc: no glibc part; musl files without a source are left out
    bare = InitfsSources(home="", init=None, musl_runtime={"libc.so": "/x/libc.so"},
                         glibc_lib=None, os_lib="")
    paths = {e.path for e in image_init_plan(bare, "0.30.1")}
    assert not any(p.startswith(("opt", "lib64/")) for p in paths)
    assert {p for p in paths if p.startswith("lib/")} == {"lib/libc.so"}


def test_a_host_without_localtime_gives_image_and_initfs_none(tmp_path, monkeypatch):
    # Ubuntu's minimal root has /etc/localtime pointing at a zoneinfo file tzdata never put there
    from occlum_rules.stages import init_sources as sources_module

    dangling = tmp_path / "localtime"
    dangling.symlink_to(tmp_path / "zoneinfo/UTC")
    monkeypatch.setattr(sources_module, "LOCALTIME", str(dangling))
    sources = sources_module.init_sources(None, "/opt/occlum/build/bin/init")
    assert sources.localtime is None
    image = {e.path for e in image_init_plan(sources, "0.31.0")}
    initfs, _ = initfs_plan(None, sources, listdir=lambda d: [])
    assert "etc/localtime" not in image | {e.path for e in initfs}
    assert "etc/hosts" in image
    (tmp_path / "zoneinfo").mkdir()
    (tmp_path / "zoneinfo/UTC").write_bytes(b"TZif")
    assert sources_module.init_sources(None, None).localtime == str(dangling)
