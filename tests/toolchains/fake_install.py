"""Lay out a directory the way an Occlum install is laid out, with real (tiny) files.

The libraries are real shared objects and ``init`` a real PIE, compiled here with gcc; the
compilers are thin wrapper scripts around the host's (as occlum-gcc is a wrapper around a
musl gcc); each wrapper logs its arguments so a test can see it was the one that ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VERSION = (0, 31, 0)


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _wrapper(path: Path, target: str, log: Path) -> Path:
    return _script(path, f'echo "$0 $*" >> "{log}"\nexec "{target}" "$@"')


def _compile(out: Path, source: str, *flags: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    subprocess.run(["gcc", "-O1", *flags, "-o", str(out), str(src)], check=True)
    src.unlink()


def make_fake_install(home: Path, modes: tuple[str, ...] = ("", "_sim")) -> Path:
    """An install at ``home``: version header, occlum command, LibOS/PAL per mode, init,
    toolchain wrappers, musl runtime, glibc loader, templates, tools and sgx_sign."""
    major, minor, patch = VERSION
    version = f"{major}.{minor}.{patch}"
    log = home / "wrapper.log"
    (home / "include").mkdir(parents=True, exist_ok=True)
    (home / "include/occlum_version.h").write_text(
        "#ifndef OCCLUM_VERSION_H\n#define OCCLUM_VERSION_H\n"
        f"#define OCCLUM_MAJOR_VERSION {major}\n#define OCCLUM_MINOR_VERSION {minor}\n"
        f"#define OCCLUM_PATCH_VERSION {patch}\n#endif\n")
    _script(home / "build/bin/occlum", 'echo "occlum (test layout)"')
    lib = home / "build/lib"
    for suffix in modes:
        for stem in ("libocclum-libos", "libocclum-pal"):
            real = lib / f"{stem}{suffix}.so.{version}"
            _compile(real, f"int {stem.replace('-', '_')}{suffix}_marker(void) {{ return 1; }}\n",
                     "-shared", "-fPIC")
    for stem in ("libocclum-libos", "libocclum-pal"):  # the default-mode symlinks
        os.symlink(f"{stem}.so.{version}", lib / f"{stem}.so.{major}")
        os.symlink(f"{stem}.so.{major}", lib / f"{stem}.so")
    _compile(home / "build/bin/init", "int main(void) { return 0; }\n", "-fPIE", "-pie")
    for tool in ("copy_bom", "gen_internal_conf", "sefs-cli", "occlum-protect-integrity"):
        _script(home / "build/bin" / tool, f'echo "{tool} (test layout)"')
    _script(home / "sgxsdk-tools/bin/x64/sgx_sign", 'echo "sgx_sign (test layout)"')

    gcc_home = home / "toolchains/gcc"
    _wrapper(gcc_home / "bin/occlum-gcc", shutil.which("gcc") or "/usr/bin/gcc", log)
    _wrapper(gcc_home / "bin/occlum-g++", shutil.which("g++") or "/usr/bin/g++", log)
    musl_lib = gcc_home / "x86_64-linux-musl/lib"
    musl_lib.mkdir(parents=True, exist_ok=True)
    _compile(musl_lib / "libc.so", "int musl_marker(void) { return 0; }\n", "-shared", "-fPIC")
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    _wrapper(home / "toolchains/rust/bin/occlum-cargo", cargo, log)
    go_bin = home / "toolchains/golang/bin"
    go_bin.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.realpath(shutil.which("go") or "/usr/bin/go"), go_bin / "go")
    _wrapper(go_bin / "occlum-go", str(go_bin / "go"), log)  # as Occlum's: a script beside go

    (home / "glibc/lib").mkdir(parents=True, exist_ok=True)
    shutil.copy("/lib64/ld-linux-x86-64.so.2", home / "glibc/lib/ld-linux-x86-64.so.2")
    template = home / "etc/template"
    template.mkdir(parents=True, exist_ok=True)
    (template / "Occlum.json").write_text('{"resource_limits": {"user_space_size": "300MB"}}\n')
    (template / "base.yaml").write_text("includes: []\ntargets: []\n")
    (template / "Enclave.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\n(test layout)\n"
                                          "-----END RSA PRIVATE KEY-----\n")
    (template / "occlum_elf_loader.config").write_text(
        "/opt/occlum/glibc/lib/ld-linux-x86-64.so.2 /usr/lib/x86_64-linux-gnu\n")
    return home


def make_standin(home: Path) -> Path:
    """What the copy_bom vectors' host setup leaves at /opt/occlum: templates and the glibc
    loader only — no occlum command, no version header, no LibOS."""
    (home / "etc/template").mkdir(parents=True, exist_ok=True)
    (home / "etc/template/base.yaml").write_text("includes: []\n")
    (home / "etc/template/occlum_elf_loader.config").write_text(
        "/opt/occlum/glibc/lib/ld-linux-x86-64.so.2 /usr/lib/x86_64-linux-gnu\n")
    (home / "glibc/lib").mkdir(parents=True, exist_ok=True)
    shutil.copy("/lib64/ld-linux-x86-64.so.2", home / "glibc/lib/ld-linux-x86-64.so.2")
    return home


def make_signable_install(home: Path, version: str, template: dict | None = None) -> Path:
    """A STAND-IN install whose LibOS, PAL, init and occlum-run are this project's stand-in
    binaries (so an instance builds, patches and signs), with ``version`` in its version
    header and, when given, ``template`` as its etc/template/Occlum.json."""
    import json

    from occlum_rules.standin.build import build_standin

    files = build_standin(home / "standin-build")
    lib, bin_dir = home / "build/lib", home / "build/bin"
    lib.mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    for suffix in ("", "_sim"):
        shutil.copy(files.libos, lib / f"libocclum-libos{suffix}.so.{version}")
        shutil.copy(files.pal, lib / f"libocclum-pal{suffix}.so.{version}")
    shutil.copy(files.init, bin_dir / "init")
    for name in ("occlum-run", "occlum_exec_client", "occlum_exec_server"):
        shutil.copy(files.occlum_run, bin_dir / name)
    _script(bin_dir / "occlum", 'echo "occlum (stand-in install)"')
    major, minor, patch = version.split(".")
    (home / "include").mkdir()
    (home / "include/occlum_version.h").write_text(
        f"#define OCCLUM_MAJOR_VERSION {major}\n#define OCCLUM_MINOR_VERSION {minor}\n"
        f"#define OCCLUM_PATCH_VERSION {patch}\n")
    if template is not None:
        (home / "etc/template").mkdir(parents=True)
        (home / "etc/template/Occlum.json").write_text(json.dumps(template, indent=4) + "\n")
    shutil.rmtree(home / "standin-build")
    return home
