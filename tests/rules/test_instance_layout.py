"""An instance built against an install laid out as ``make install`` lays it out is, file for
file, the instance ``occlum init`` + ``occlum build`` leave.

The install is the stand-in of tests/support/occlum_install.py (real layout, stand-in
contents). The expected instance below is written from ../shared/specs/occlum-install.md
section (b) (tools/occlum cmd_init/gen_initfs/cmd_build and tools/occlum_build.mk at occlum
690d5dbf), not from this project's code; the init-ra initfs lists come from the same
tools/occlum, gen_initfs_grpc_ratls / gen_initfs_aecs (lines 163-246). image/ is what
cmd_init puts there with copy_bom's result on top; its directory list depends on the
release (tools/occlum at v0.31.0 added image/sbin and image/ext2; v0.29.6-v0.30.1 lack them).
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from occlum_rules.stages.securefs import verify_image
from tests.support.occlum_install import StandinInstall, make_occlum_install
from tests.support.workspace import copy_examples, run_doit

INSTANCE = "out/bin/examples/hello_c/instance"
PACKAGE = "out/bin/examples/hello_c/package/hello_c.tar.gz"
SEFS_ROOTS = ("build/mount/__ROOT", "build/initfs/__ROOT")
# Where this project's instance differs from Occlum's on purpose (README "Instance layout"):
# image/ is the occlum_bom target's output, linked rather than copied (compared on its own,
# see image_listing), and build/measurements.json records MRENCLAVE/MRSIGNER and what they
# were made from.
OURS = ("image", "build/measurements.json")


def cp_mode(path: str | Path) -> int:
    """The mode a plain cp gives a copy of ``path`` under umask 022 (spec (b): "All copies
    are plain cp (symlinks dereferenced, mode = source mode & ~umask)")."""
    return stat.S_IMODE(os.stat(path).st_mode) & ~0o022


# ----------------------------------------------------------------------------- the spec

def spec_initfs(inst: StandinInstall, init_ra: str | None = None) -> dict[str, tuple]:
    """initfs/ after occlum init [--init-ra] + occlum build: path -> ("dir",) |
    ("file", mode, source path or bytes) | ("link", target)."""
    home = inst.home
    musl = {"ld-musl-x86_64.so.1": Path("/lib/ld-musl-x86_64.so.1"),
            **{n: inst.musl_lib / n for n in ("libc.so", "libstdc++.so.6", "libgcc_s.so.1",
                                               "libgomp.so.1")}}
    image_config = b'{\n  "image_type": "integrity-only"\n}\n'  # occlum_build.mk:108-112
    tree: dict[str, tuple] = {}

    def copy(dest: str, src: Path) -> None:
        tree[dest] = ("file", cp_mode(src), src)

    def dirs(*names: str) -> None:
        for d in names:
            tree[d] = ("dir",)

    if init_ra is None:  # gen_initfs (:248-272)
        dirs("bin", "lib", "dev", "proc", "etc")
        tree["etc/hosts"] = ("file", 0o644, b"127.0.0.1   localhost\n")
        copy("etc/localtime", Path("/etc/localtime"))
        for name, src in musl.items():
            copy(f"lib/{name}", src)
        copy("bin/init", home / "build/bin/init")
    elif init_ra == "grpc_ratls":  # gen_initfs_grpc_ratls: no etc/hosts; CA certificates
        dirs("bin", "lib", "dev", "proc", "etc", "etc/ssl", "etc/ssl/certs")
        copy("etc/localtime", Path("/etc/localtime"))
        copy("etc/ssl/certs/ca-certificates.crt", Path("/etc/ssl/certs/ca-certificates.crt"))
        for name, src in musl.items():
            copy(f"lib/{name}", src)
        for src in (home / "toolchains/grpc_ratls/musl/libgrpc_ratls_client.so",
                    home / "toolchains/grpc_ratls/musl/libhw_grpc_proto.so",
                    home / "toolchains/dcap_lib/musl/libocclum_dcap.so.0.1.0",
                    inst.musl_lib / "libcjson.so.1"):
            copy(f"lib/{src.name}", src)
        copy("bin/init", home / "build/bin/init_grpc_ratls")
        # occlum build: cp init_ra_conf.json initfs/etc/ (its instance copy of the template)
        copy("etc/init_ra_conf.json", home / "etc/template/init_grpc_ratls.json")
    else:  # gen_initfs_aecs: glibc from image/opt/occlum/glibc (what occlum init put there)
        g = "opt/occlum/glibc"
        dirs("bin", "lib", "dev", "proc", "etc", "etc/kubetee", "lib64", "opt", "opt/occlum", g,
             f"{g}/lib", f"{g}/etc")
        os_lib = Path("/usr/lib/x86_64-linux-gnu")
        copy("etc/localtime", Path("/etc/localtime"))
        tree[f"{g}/lib/ld-linux-x86-64.so.2"] = ("link", "/lib64/ld-linux-x86-64.so.2")
        for name in ("libc.so.6", "libpthread.so.0", "libm.so.6", "libnss_files.so.2",
                     "libnss_dns.so.2", "libresolv.so.2"):
            copy(f"{g}/lib/{name}", home / "glibc/lib" / name)
        for name in ("libstdc++.so.6", "libgcc_s.so.1", "libz.so.1", "libdl.so.2"):
            copy(f"{g}/lib/{name}", os_lib / name)
        if (os_lib / "libprotobuf.so.32").exists():
            copy(f"{g}/lib/libprotobuf.so.32", os_lib / "libprotobuf.so.32")
        copy(f"{g}/etc/localtime", Path("/etc/localtime"))
        for p in sorted((home / "toolchains/aecs_client").iterdir()):
            copy(f"{g}/lib/{p.name}", p)
        copy("lib64/ld-linux-x86-64.so.2", home / "glibc/lib/ld-linux-x86-64.so.2")
        copy("bin/init", home / "build/bin/init_aecs")
        copy("etc/init_ra_conf.json", home / "etc/template/init_aecs.json")
    tree["etc/image_config.json"] = ("file", 0o644, image_config)
    return tree


def spec_image_init(inst: StandinInstall) -> dict[str, tuple]:
    """image/ after occlum init (spec (b), cmd_init :313-365), before copy_bom runs."""
    release = tuple(int(x) for x in inst.version.split("."))
    dirs = ["bin", "lib", "lib64", "root", "host", "tmp", "dev", "proc", "etc"]
    if release >= (0, 31, 0):
        dirs += ["sbin", "ext2"]
    glibc_lib = inst.home / "glibc/lib"  # this install's Occlum glibc (/opt/occlum/glibc/lib)
    g = "opt/occlum/glibc"
    if glibc_lib.is_dir():  # mkdir -p image/opt/occlum/glibc/{lib,etc}
        dirs += ["opt", "opt/occlum", g, f"{g}/lib", f"{g}/etc"]
    tree: dict[str, tuple] = {d: ("dir",) for d in dirs}

    def copy(dest: str, src: Path) -> None:
        tree[dest] = ("file", cp_mode(src), src)

    tree["etc/hosts"] = ("file", 0o644, b"127.0.0.1   localhost\n")
    copy("etc/localtime", Path("/etc/localtime"))
    copy("lib/ld-musl-x86_64.so.1", Path("/lib/ld-musl-x86_64.so.1"))
    for name in ("libc.so", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1"):
        copy(f"lib/{name}", inst.musl_lib / name)
    if glibc_lib.is_dir():
        copy("lib64/ld-linux-x86-64.so.2", glibc_lib / "ld-linux-x86-64.so.2")
        tree[f"{g}/lib/ld-linux-x86-64.so.2"] = ("link", "/lib64/ld-linux-x86-64.so.2")
        for name in ("libc.so.6", "libpthread.so.0", "libm.so.6"):
            copy(f"{g}/lib/{name}", glibc_lib / name)
        os_lib = Path("/usr/lib/x86_64-linux-gnu")
        for name in ("libstdc++.so.6", "libgcc_s.so.1"):
            copy(f"{g}/lib/{name}", os_lib / name)
        copy(f"{g}/etc/localtime", Path("/etc/localtime"))
    return tree


def spec_instance(inst: StandinInstall, mode: str, init_ra: str | None = None) -> dict[str, tuple]:
    """The instance directory outside the SEFS roots, spec section (b)."""
    v, m, home = inst.version, inst.major, inst.home
    sfx = {"HW": "", "SIM": "_sim"}[mode]
    tree: dict[str, tuple] = {
        ".__occlum_status": ("file", 0o644, b"built\n"),
        ".sgx_mode": ("file", 0o644, f"{mode}\n".encode()),
        "Occlum.json": ("file", 0o644, None),  # chmod 644 (:375)
        "initfs": ("dir",),
        **{f"initfs/{k}": e for k, e in spec_initfs(inst, init_ra).items()},
        "build": ("dir",), "build/bin": ("dir",), "build/lib": ("dir",),
        "build/image_config.json": ("file", 0o644, b'{\n  "image_type": "integrity-only"\n}\n'),
        "build/initfs": ("dir",), "build/initfs/__ROOT": ("dir",),
        "build/initfs/.ROOT_MAC": ("file", None, None),
        "build/mount": ("dir",), "build/mount/__ROOT": ("dir",),
        "build/mount/.ROOT_MAC": ("file", None, None),
        "build/Enclave.xml": ("file", None, None),
        "build/.Occlum_sys.json": ("file", None, None),
        "build/.Occlum_sys.json.protected": ("file", None, None),
        # cp from the install, then objcopy --update-section (mode kept)
        f"build/lib/libocclum-libos{sfx}.so.{v}": ("file", cp_mode(inst.lib("libocclum-libos", mode)), None),
        f"build/lib/libocclum-libos.so.{m}": ("link", f"libocclum-libos{sfx}.so.{v}"),
        "build/lib/libocclum-libos.so": ("link", f"libocclum-libos.so.{m}"),
        "build/lib/libocclum-libos.signed.so": ("file", None, None),  # sgx_sign's mode: open
        f"build/lib/libocclum-pal{sfx}.so.{v}": ("file", cp_mode(inst.lib("libocclum-pal", mode)),
                                                 inst.lib("libocclum-pal", mode)),
        f"build/lib/libocclum-pal.so.{m}": ("link", f"libocclum-pal{sfx}.so.{v}"),
        "build/lib/libocclum-pal.so": ("link", f"libocclum-pal.so.{m}"),
        **{f"build/bin/{n}": ("link", str(home / "build/bin" / n))   # absolute (:19-20,77-78)
           for n in ("occlum_exec_client", "occlum_exec_server", "occlum-run")},
        "run": ("dir",), "run/mount": ("dir",), "run/mount/__ROOT": ("dir",),
        "run/initfs": ("dir",), "run/initfs/__ROOT": ("dir",),
    }
    if init_ra:  # occlum init --init-ra: cp etc/template/init_<ra>.json init_ra_conf.json
        template = home / f"etc/template/init_{init_ra}.json"
        tree["init_ra_conf.json"] = ("file", cp_mode(template), template)
    return tree


# ----------------------------------------------------------------------------- what was built

def listing(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """path -> ("dir",) | ("file", mode, bytes) | ("link", target), not entering ``skip``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            p = Path(dirpath) / name
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", stat.S_IMODE(p.lstat().st_mode), p.read_bytes())
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip
                       and not (Path(dirpath) / d).is_symlink()]
    return out


def compare(built: dict[str, tuple], spec: dict[str, tuple]) -> list[str]:
    """Every difference between a built listing and the spec's, as readable lines."""
    problems = [f"missing: {p}" for p in sorted(spec.keys() - built.keys())]
    problems += [f"not made by occlum: {p}" for p in sorted(built.keys() - spec.keys())]
    for path in sorted(spec.keys() & built.keys()):
        want, got = spec[path], built[path]
        if want[0] != got[0]:
            problems.append(f"{path}: a {got[0]}, expected a {want[0]}")
        elif want[0] == "link" and want[1] != got[1]:
            problems.append(f"{path}: -> {got[1]}, expected -> {want[1]}")
        elif want[0] == "file":
            if want[1] is not None and want[1] != got[1]:
                problems.append(f"{path}: mode {got[1]:o}, expected {want[1]:o}")
            content = want[2]
            if isinstance(content, Path):
                content = content.read_bytes()
            if content is not None and content != got[2]:
                problems.append(f"{path}: content differs from {want[2]}")
    return problems


def instance_listing(inst_dir: Path) -> dict[str, tuple]:
    built = listing(inst_dir, skip=SEFS_ROOTS)
    for ours in OURS:
        built.pop(ours, None)
    return built


def image_listing(inst_dir: Path) -> dict[str, tuple]:
    """image/ (a link to the occlum_bom output) listed like the rest."""
    return listing((inst_dir / "image").resolve())


def check_sefs(inst_dir: Path) -> None:
    """SEFS roots hold `metadata` + 32-hex-digit inode files (spec (b)); the initfs image
    holds exactly initfs/ and the mount image exactly image/ (names, kinds, modes, bytes)."""
    import hashlib
    import re

    for root in SEFS_ROOTS:
        names = os.listdir(inst_dir / root)
        assert "metadata" in names, root
        assert all(n == "metadata" or re.fullmatch(r"[0-9a-f]{32}", n) for n in names), names
    for packed_dir, src in (("build/initfs", inst_dir / "initfs"),
                            ("build/mount", (inst_dir / "image").resolve())):
        mac = (inst_dir / packed_dir / ".ROOT_MAC").read_text().strip()
        packed = {e.path: (e.type, e.mode & 0o7777, e.sha256 if e.type == "file" else e.target)
                  for e in verify_image(inst_dir / packed_dir / "__ROOT", expected_mac=mac)}
        tree = {}
        for rel, entry in listing(src).items():
            kind = {"dir": "dir", "file": "file", "link": "symlink"}[entry[0]]
            mode = stat.S_IMODE((src / rel).lstat().st_mode)
            tree[rel] = (kind, mode, hashlib.sha256(entry[2]).hexdigest() if kind == "file" else
                         entry[1] if kind == "symlink" else None)
        assert packed == tree, packed_dir


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def install(tmp_path_factory) -> StandinInstall:
    return make_occlum_install(tmp_path_factory.mktemp("opt") / "occlum", ra=True)


@pytest.fixture(scope="module")
def install_without_ra(tmp_path_factory) -> StandinInstall:
    return make_occlum_install(tmp_path_factory.mktemp("opt-nora") / "occlum", ra=False)


def workspace(dest: Path, inst: StandinInstall, mode: str = "HW", extra: str = "") -> Path:
    ws = copy_examples(dest, ["hello_c"])
    text = (ws / "WORKSPACE.yaml").read_text().replace("sgx_mode: HW", f"sgx_mode: {mode}")
    (ws / "WORKSPACE.yaml").write_text(text + f"occlum:\n  home: {inst.home}\n")
    if extra:
        build = ws / "examples/hello_c/BUILD.py"
        build.write_text(build.read_text().replace('bom = ":image",', f'bom = ":image",\n    {extra}'))
    return ws


def set_mode(ws: Path, mode: str) -> None:
    text = (ws / "WORKSPACE.yaml").read_text()
    for old in ("HW", "SIM"):
        text = text.replace(f"sgx_mode: {old}", f"sgx_mode: {mode}")
    (ws / "WORKSPACE.yaml").write_text(text)


def build(ws: Path, cache: Path, target: str = "build") -> None:
    result = run_doit(ws, target, cache=cache, env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    assert "stand-in LibOS" not in result.output  # the install's LibOS was used


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("mode", ["HW", "SIM"])
def test_instance_is_what_occlum_init_and_build_leave(install, tmp_path, mode):
    ws = workspace(tmp_path / "ws", install, mode)
    build(ws, tmp_path / "cache")
    inst_dir = ws / INSTANCE
    problems = compare(instance_listing(inst_dir), spec_instance(install, mode))
    assert problems == []
    check_sefs(inst_dir)
    assert (inst_dir / "image").is_symlink() and (inst_dir / "image").resolve().is_dir()


def without_occlum_init(ws: Path) -> None:
    build = ws / "examples/hello_c/BUILD.py"
    text = build.read_text().replace('src = "hello.yaml",', 'src = "hello.yaml",\n    occlum_init = False,')
    assert text != build.read_text()
    build.write_text(text)


def test_image_is_what_occlum_init_and_copy_bom_leave(install, tmp_path):
    # image/ = occlum init's files, then copy_bom's on top. The copy_bom part is this project's
    # BOM-only image (occlum_init = False; checked against copy_bom itself elsewhere).
    ws = workspace(tmp_path / "ws", install)
    build(ws, tmp_path / "cache")
    bom_only = workspace(tmp_path / "bom-only", install)
    without_occlum_init(bom_only)
    build(bom_only, tmp_path / "cache")
    from_bom = image_listing(bom_only / INSTANCE)
    assert "etc/hosts" not in from_bom and "sbin" not in from_bom  # the BOM makes neither
    expected = {**spec_image_init(install), **from_bom}
    assert compare(image_listing(ws / INSTANCE), expected) == []
    check_sefs(ws / INSTANCE)


def test_initfs_keeps_source_modes_as_cp_does(install, tmp_path):
    # the install's libgcc_s.so.1 is 0644 (as GCC installs it): occlum init's cp keeps that
    assert stat.S_IMODE(os.stat(install.musl_lib / "libgcc_s.so.1").st_mode) == 0o644
    ws = workspace(tmp_path / "ws", install)
    build(ws, tmp_path / "cache")
    inst_dir = ws / INSTANCE
    assert stat.S_IMODE((inst_dir / "initfs/lib/libgcc_s.so.1").stat().st_mode) == 0o644
    mac = (inst_dir / "build/initfs/.ROOT_MAC").read_text().strip()
    modes = {e.path: e.mode & 0o777
             for e in verify_image(inst_dir / "build/initfs/__ROOT", expected_mac=mac)}
    assert modes["lib/libgcc_s.so.1"] == 0o644 and modes["lib/libc.so"] == 0o755


def _package_members(ws: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    with tarfile.open(ws / PACKAGE) as tar:
        for m in tar.getmembers():
            name = m.name.split("/", 1)[1] if "/" in m.name else m.name
            if m.issym():
                out[name] = "-> " + m.linkname
            elif m.isfile():
                out[name] = tar.extractfile(m).read()
    return out


def _mode_tag(data: bytes) -> str:
    """The stand-in install marks each mode's LibOS/PAL copy (section .occlum_fixture_mode)."""
    import io

    from elftools.elf.elffile import ELFFile

    return ELFFile(io.BytesIO(data)).get_section_by_name(".occlum_fixture_mode").data().decode().strip()


def test_sgx_mode_switch_leaves_nothing_of_the_other_mode(install, tmp_path):
    ws = workspace(tmp_path / "ws", install, "HW")
    cache = tmp_path / "cache"
    inst_dir = ws / INSTANCE
    for mode in ("HW", "SIM", "HW", "SIM"):  # switching back restores from the cache
        set_mode(ws, mode)
        build(ws, cache)
        assert compare(instance_listing(inst_dir), spec_instance(install, mode)) == [], mode
        lib = inst_dir / "build/lib"
        for name in os.listdir(lib):
            if not name.endswith(".signed.so") and (lib / name).is_file():
                assert _mode_tag((lib / name).read_bytes()) == mode, name
        members = _package_members(ws)
        libs = sorted(n for n in members if n.startswith("build/lib/"))
        sfx = "_sim" if mode == "SIM" else ""
        v, m = install.version, install.major
        # occlum package (tools/occlum:665-683): the signed LibOS and the PAL with its links
        assert libs == sorted(["build/lib/libocclum-libos.signed.so", f"build/lib/libocclum-pal.so.{m}",
                               "build/lib/libocclum-pal.so", f"build/lib/libocclum-pal{sfx}.so.{v}"])
        assert _mode_tag(members[f"build/lib/libocclum-pal{sfx}.so.{v}"]) == mode


@pytest.mark.parametrize("init_ra", ["grpc_ratls", "aecs"])
def test_init_ra_builds_the_ra_initfs(install, tmp_path, init_ra):
    ws = workspace(tmp_path / "ws", install, extra=f'init_ra = "{init_ra}",')
    build(ws, tmp_path / "cache")
    inst_dir = ws / INSTANCE
    assert compare(instance_listing(inst_dir), spec_instance(install, "HW", init_ra)) == []
    check_sefs(inst_dir)


@pytest.mark.parametrize("init_ra,parts", [
    ("grpc_ratls", ["build/bin/init_grpc_ratls", "toolchains/grpc_ratls/musl/libgrpc_ratls_client.so",
                    "toolchains/grpc_ratls/musl/libhw_grpc_proto.so",
                    "toolchains/dcap_lib/musl/libocclum_dcap.so.0.1.0",
                    "toolchains/gcc/x86_64-linux-musl/lib/libcjson.so.1"]),
    ("aecs", ["build/bin/init_aecs", "toolchains/aecs_client/*"]),
])
def test_init_ra_without_the_ra_toolchain_is_one_clear_error(install_without_ra, tmp_path,
                                                             init_ra, parts):
    ws = workspace(tmp_path / "ws", install_without_ra, extra=f'init_ra = "{init_ra}",')
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output
    assert "examples/hello_c/BUILD.py:" in result.output  # the rule's location
    assert f"init_ra = '{init_ra}'" in result.output
    for part in parts:
        assert part in result.output, part
    assert not (ws / INSTANCE / "initfs").exists()  # no default initfs built instead
