"""What an Occlum instance directory holds, as ``occlum init`` + ``occlum build`` leave it.

Pure functions over names and paths (no I/O), so the rule, its actions and the tests agree
on one description:

- :func:`build_lib` — the names in ``build/lib`` for one SGX mode and Occlum version, and
  what each is (occlum_build.mk's LibOS/PAL copies and their relative links);
- :func:`initfs_plan` — what ``occlum init`` copies into ``initfs/`` for the default init and
  for ``--init-ra grpc_ratls|aecs``, and which of those sources are missing;
- :func:`image_init_plan` — what ``occlum init`` puts into ``image/`` before copy_bom adds
  the user's files (directories, etc/hosts, etc/localtime, the musl runtime, Occlum's glibc);
- :func:`cp_mode` — the mode a plain ``cp`` gives a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

MODE_SUFFIX = {"HW": "", "SIM": "_sim", "HYPER": "_hyper"}
# occlum_build.mk links these three from the install's build/bin into the instance's.
BIN_LINKS = ("occlum_exec_client", "occlum_exec_server", "occlum-run")
INIT_RA = ("grpc_ratls", "aecs")
MUSL_RUNTIME = ("ld-musl-x86_64.so.1", "libc.so", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1")
UMASK = 0o022  # what the build runs under (the executor sets it), as a shell's default


def cp_mode(source_mode: int) -> int:
    """The permission bits ``cp`` without ``-p`` gives a new file: the source's, less the umask."""
    return source_mode & 0o777 & ~UMASK


def build_lib(version: str, mode: str) -> dict[str, dict]:
    """build/lib of an instance built in ``mode``: name -> {"kind": "libos"|"pal"|"signed"} or
    {"kind": "symlink", "target": ...}. Nothing else belongs there (a mode change makes
    ``occlum build`` start again from an empty build/)."""
    if mode not in MODE_SUFFIX:
        raise ValueError(f"unknown SGX mode {mode!r}")
    major = version.split(".")[0]
    suffix = MODE_SUFFIX[mode]
    libos, pal = f"libocclum-libos{suffix}.so.{version}", f"libocclum-pal{suffix}.so.{version}"
    return {
        libos: {"kind": "libos"},
        f"libocclum-libos.so.{major}": {"kind": "symlink", "target": libos},
        "libocclum-libos.so": {"kind": "symlink", "target": f"libocclum-libos.so.{major}"},
        "libocclum-libos.signed.so": {"kind": "signed"},
        pal: {"kind": "pal"},
        f"libocclum-pal.so.{major}": {"kind": "symlink", "target": pal},
        "libocclum-pal.so": {"kind": "symlink", "target": f"libocclum-pal.so.{major}"},
    }


@dataclass(frozen=True)
class InitfsSources:
    """Where ``occlum init`` takes the initfs files from (absolute host paths)."""

    home: str                        # the Occlum install
    init: str | None                 # build/bin/init (default variant)
    musl_runtime: dict[str, str]     # initfs/lib name -> host file (MUSL_RUNTIME names)
    glibc_lib: str | None            # <home>/glibc/lib
    os_lib: str                      # the host's glibc lib dir (/usr/lib/x86_64-linux-gnu)
    localtime: str | None = "/etc/localtime"
    ca_certificates: str = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class InitfsEntry:
    """One initfs path: a directory, a copy of ``src`` (mode: the source's, as cp keeps it),
    a text file, or a symlink to ``target``. ``part`` names the source for error messages."""

    path: str
    kind: str                        # "dir" | "copy" | "text" | "symlink"
    src: str | None = None
    text: str | None = None
    target: str | None = None
    part: str | None = None
    optional: bool = False           # copied only when present (cp guarded by [ -f ])


HOSTS = "127.0.0.1   localhost\n"
GLIBC_DIR = "opt/occlum/glibc"
# `occlum init`'s image directories (tools/occlum cmd_init). v0.31.0 added sbin and ext2;
# 0.29.6 to 0.30.1 make only these.
IMAGE_DIRS_BEFORE_0_31 = ("bin", "lib", "lib64", "root", "host", "tmp", "dev", "proc", "etc")
IMAGE_DIRS_0_31 = (*IMAGE_DIRS_BEFORE_0_31, "sbin", "ext2")


def image_dirs(version: str | None, where: str = "Occlum version") -> tuple[str, ...]:
    """The directories ``occlum init`` of release ``version`` makes in image/ (None: newest).

    An unsupported version is the same one-line error as for the config profile."""
    from occlum_rules.stages.config.profiles import check_supported

    if version is None or check_supported(version, where) >= (0, 31, 0):
        return IMAGE_DIRS_0_31
    return IMAGE_DIRS_BEFORE_0_31


def _rel(home: str, path: str) -> str:
    p = PurePosixPath(path)
    return str(p.relative_to(home)) if p.is_relative_to(home) else str(p)


def _copy(dest: str, src: str, home: str, optional: bool = False) -> InitfsEntry:
    return InitfsEntry(dest, "copy", src=src, part=_rel(home, src), optional=optional)


def _musl(s: InitfsSources) -> list[InitfsEntry]:
    out = []
    for name in MUSL_RUNTIME:
        src = s.musl_runtime.get(name)
        out.append(_copy(f"lib/{name}", src, s.home) if src else
                   InitfsEntry(f"lib/{name}", "copy", part=f"musl runtime {name}"))
    return out


def image_init_plan(s: InitfsSources, version: str | None,
                    where: str = "Occlum version") -> list[InitfsEntry]:
    """image/ as ``occlum init`` of ``version`` leaves it, before copy_bom runs.

    The musl runtime files without a source are left out (as for the default initfs); the
    glibc part is there only when the sources name a glibc (Occlum's, from the install).
    """
    entries = [InitfsEntry(d, "dir") for d in image_dirs(version, where)]
    g = s.glibc_lib
    if g:
        entries += [InitfsEntry(d, "dir") for d in ("opt", "opt/occlum", GLIBC_DIR,
                                                     f"{GLIBC_DIR}/lib", f"{GLIBC_DIR}/etc")]
    entries.append(InitfsEntry("etc/hosts", "text", text=HOSTS))
    if s.localtime:
        entries.append(_copy("etc/localtime", s.localtime, s.home))
    entries += [e for e in _musl(s) if e.src is not None]
    if g:
        entries.append(_copy("lib64/ld-linux-x86-64.so.2", f"{g}/ld-linux-x86-64.so.2", s.home))
        entries.append(InitfsEntry(f"{GLIBC_DIR}/lib/ld-linux-x86-64.so.2", "symlink",
                                   target="/lib64/ld-linux-x86-64.so.2"))
        for name in ("libc.so.6", "libpthread.so.0", "libm.so.6"):
            entries.append(_copy(f"{GLIBC_DIR}/lib/{name}", f"{g}/{name}", s.home))
        for name in ("libstdc++.so.6", "libgcc_s.so.1"):
            entries.append(_copy(f"{GLIBC_DIR}/lib/{name}", f"{s.os_lib}/{name}", s.home))
        if s.localtime:
            entries.append(_copy(f"{GLIBC_DIR}/etc/localtime", s.localtime, s.home))
    return entries


def initfs_plan(variant: str | None, s: InitfsSources,
                listdir: Callable[[str], list[str]] | None = None) -> tuple[list[InitfsEntry], str]:
    """The initfs ``occlum init [--init-ra VARIANT]`` makes, and the install template it copies
    as the instance's init_ra_conf.json ("" for the default init).

    ``listdir`` lists a directory (``toolchains/aecs_client/*`` is copied whole); it is the
    only I/O, passed in so this stays pure.
    """
    h = s.home
    if variant is None:
        entries = [InitfsEntry(d, "dir") for d in ("bin", "lib", "dev", "proc", "etc")]
        entries.append(InitfsEntry("etc/hosts", "text", text=HOSTS))
        if s.localtime:
            entries.append(_copy("etc/localtime", s.localtime, h))
        entries += _musl(s)
        entries.append(InitfsEntry("bin/init", "copy", src=s.init, part="build/bin/init"))
        return entries, ""
    if variant == "grpc_ratls":
        entries = [InitfsEntry(d, "dir") for d in ("bin", "lib", "dev", "proc", "etc", "etc/ssl/certs")]
        if s.localtime:
            entries.append(_copy("etc/localtime", s.localtime, h))
        entries.append(_copy("etc/ssl/certs/ca-certificates.crt", s.ca_certificates, h))
        entries += _musl(s)
        for src in (f"{h}/toolchains/grpc_ratls/musl/libgrpc_ratls_client.so",
                    f"{h}/toolchains/grpc_ratls/musl/libhw_grpc_proto.so",
                    f"{h}/toolchains/dcap_lib/musl/libocclum_dcap.so.0.1.0",
                    f"{h}/toolchains/gcc/x86_64-linux-musl/lib/libcjson.so.1"):
            entries.append(_copy(f"lib/{PurePosixPath(src).name}", src, h))
        entries.append(_copy("bin/init", f"{h}/build/bin/init_grpc_ratls", h))
        return entries, f"{h}/etc/template/init_grpc_ratls.json"
    if variant == "aecs":
        glibc = "opt/occlum/glibc"
        entries = [InitfsEntry(d, "dir") for d in (
            "bin", "lib", "dev", "proc", "etc", "etc/kubetee", "lib64", "opt", "opt/occlum", glibc,
            f"{glibc}/lib", f"{glibc}/etc")]
        if s.localtime:
            entries.append(_copy("etc/localtime", s.localtime, h))
        g = s.glibc_lib or f"{h}/glibc/lib"
        # `cp -rf image/opt/occlum/glibc`: what occlum init put there (the loader as an
        # absolute link, glibc's libraries, the host's libstdc++/libgcc_s, localtime)
        entries.append(InitfsEntry(f"{glibc}/lib/ld-linux-x86-64.so.2", "symlink",
                                   target="/lib64/ld-linux-x86-64.so.2"))
        for name in ("libc.so.6", "libpthread.so.0", "libm.so.6"):
            entries.append(_copy(f"{glibc}/lib/{name}", f"{g}/{name}", h))
        for name in ("libstdc++.so.6", "libgcc_s.so.1"):
            entries.append(_copy(f"{glibc}/lib/{name}", f"{s.os_lib}/{name}", h))
        if s.localtime:
            entries.append(_copy(f"{glibc}/etc/localtime", s.localtime, h))
        entries.append(_copy("lib64/ld-linux-x86-64.so.2", f"{g}/ld-linux-x86-64.so.2", h))
        client = f"{h}/toolchains/aecs_client"
        names = sorted(listdir(client)) if listdir is not None else []
        if not names:
            entries.append(InitfsEntry(f"{glibc}/lib/libaecs_client.so", "copy",
                                       part="toolchains/aecs_client/*"))
        for name in names:
            entries.append(_copy(f"{glibc}/lib/{name}", f"{client}/{name}", h))
        for src in (f"{s.os_lib}/libz.so.1", f"{s.os_lib}/libdl.so.2", f"{g}/libnss_files.so.2",
                    f"{g}/libnss_dns.so.2", f"{g}/libresolv.so.2"):
            entries.append(_copy(f"{glibc}/lib/{PurePosixPath(src).name}", src, h))
        entries.append(_copy(f"{glibc}/lib/libprotobuf.so.32", f"{s.os_lib}/libprotobuf.so.32", h,
                             optional=True))
        for name in ("libssl.so.1.1", "libcrypto.so.1.1"):
            if name not in names:  # only when the aecs_client toolchain brings none
                entries.append(_copy(f"{glibc}/lib/{name}", f"{s.os_lib}/{name}", h))
        entries.append(_copy("bin/init", f"{h}/build/bin/init_aecs", h))
        return entries, f"{h}/etc/template/init_aecs.json"
    raise ValueError(f"unknown init_ra variant {variant!r}")


def missing_sources(entries: list[InitfsEntry], exists: Callable[[str], bool]) -> list[str]:
    """The ``part`` of every required copy whose source is absent, in plan order."""
    missing = []
    for e in entries:
        if e.kind == "copy" and not e.optional and (e.src is None or not exists(e.src)):
            if e.part not in missing:
                missing.append(e.part or e.path)
    return missing
