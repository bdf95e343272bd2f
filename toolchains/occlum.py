"""Finding an Occlum installation and naming the parts a build takes from it.

An instance build needs Occlum's own binaries (the LibOS and PAL libraries for the chosen
SGX mode, ``init``), its runtime libraries, its templates and its tools. This module only
*finds* them; it never runs them. A directory is an install only when it has the ``occlum``
command and the version header: a machine can hold a partial ``/opt/occlum`` (for example
just ``etc/template`` and ``glibc/lib``, as the copy_bom vectors' host setup leaves) that
must not be mistaken for a LibOS we could sign.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.digests import sha256_file

SGX_MODES = ("HW", "SIM", "HYPER")
_MODE_SUFFIX = {"HW": "", "SIM": "_sim", "HYPER": "_hyper"}
TEMPLATE_FILES = ("Occlum.json", "base.yaml", "Enclave.pem", "occlum_elf_loader.config")
# Tools an instance build runs when WORKSPACE.yaml says `stages: occlum`.
INSTALL_TOOLS = ("copy_bom", "gen_internal_conf", "sefs-cli", "occlum-protect-integrity")
# The musl runtime `occlum init` copies into every image and initfs.
MUSL_RUNTIME = ("libc.so", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1")
MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")
SYSTEM_MUSL_LIB = Path("/usr/local/occlum/x86_64-linux-musl/lib")

_VERSION_RE = re.compile(r"^\s*#\s*define\s+OCCLUM_(MAJOR|MINOR|PATCH)_VERSION\s+(\d+)\b", re.M)


@dataclass(frozen=True)
class OcclumInstall:
    """Everything a build may take from one Occlum install (absent optional parts are None)."""

    home: Path
    source: str                     # why this prefix: "WORKSPACE.yaml occlum.home", ...
    version: str                    # "0.31.0", from include/occlum_version.h
    version_header: Path
    occlum: Path                    # build/bin/occlum
    bin_dir: Path
    lib_dir: Path
    libos: dict[str, Path]          # SGX mode -> the real (versioned) LibOS file
    pal: dict[str, Path]            # SGX mode -> the real (versioned) PAL file
    init: Path | None
    occlum_gcc: Path | None
    occlum_gxx: Path | None
    occlum_cargo: Path | None
    occlum_go: Path | None
    musl_lib: Path | None           # dir holding libc.so, libstdc++.so.6, ...
    musl_loader: Path | None        # /lib/ld-musl-x86_64.so.1
    glibc_lib: Path | None          # <home>/glibc/lib
    template_dir: Path | None
    templates: dict[str, Path]      # file name -> path, for TEMPLATE_FILES present
    sgx_sdk: Path
    tools: dict[str, Path]          # copy_bom, gen_internal_conf, sefs-cli, ..., sgx_sign
    missing: tuple[str, ...] = ()   # optional parts not found, for `occlum-rules toolchains`
    fingerprint: str = ""
    fingerprint_files: dict[str, str] = field(default_factory=dict)

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def libos_lib(self, mode: str) -> Path:
        """The LibOS file an instance copies for ``mode`` (then patches and signs)."""
        return _for_mode(self.libos, mode, "LibOS", self.home)

    def pal_lib(self, mode: str) -> Path:
        return _for_mode(self.pal, mode, "PAL", self.home)

    def lib_names(self, mode: str) -> dict[str, str]:
        """File names Occlum uses in an instance's build/lib for ``mode``."""
        suffix = _MODE_SUFFIX[mode]
        return {"libos": f"libocclum-libos{suffix}.so.{self.version}",
                "pal": f"libocclum-pal{suffix}.so.{self.version}"}

    def sign_tool(self, mode: str) -> Path | None:
        return self.tools.get("sgx_sign_hyper" if mode == "HYPER" else "sgx_sign")

    def musl_runtime(self) -> dict[str, Path]:
        """image/lib name -> host file, for the runtime files present."""
        found: dict[str, Path] = {}
        if self.musl_loader is not None:
            found["ld-musl-x86_64.so.1"] = self.musl_loader
        if self.musl_lib is not None:
            for name in MUSL_RUNTIME:
                if (self.musl_lib / name).exists():
                    found[name] = self.musl_lib / name
        return found

    def as_dict(self) -> dict[str, Any]:
        def text(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: text(x) for k, x in sorted(v.items())}
            if isinstance(v, tuple):
                return list(v)
            return v
        return {k: text(v) for k, v in self.__dict__.items() if k != "fingerprint_files"}


def _for_mode(table: dict[str, Path], mode: str, what: str, home: Path) -> Path:
    if mode not in SGX_MODES:
        raise ValueError(f"unknown SGX mode {mode!r}")
    if mode not in table:
        from occlum_rules.errors import UserError

        raise UserError(f"the Occlum install at {home} has no {what} library for SGX mode "
                        f"{mode} (expected build/lib/lib{'occlum-libos' if what == 'LibOS' else 'occlum-pal'}"
                        f"{_MODE_SUFFIX[mode]}.so.*)")
    return table[mode]


def read_version(header: Path) -> str | None:
    """'0.31.0' from occlum_version.h, or None when the header does not say."""
    try:
        text = header.read_text(errors="replace")
    except OSError:
        return None
    parts = dict(_VERSION_RE.findall(text))
    if not all(k in parts for k in ("MAJOR", "MINOR", "PATCH")):
        return None
    return f"{int(parts['MAJOR'])}.{int(parts['MINOR'])}.{int(parts['PATCH'])}"


def why_not_install(home: Path) -> str | None:
    """None when ``home`` looks like an install, else a short reason for the user."""
    if not home.is_dir():
        return "no such directory"
    lacks = []
    if not (home / "build/bin/occlum").is_file():
        lacks.append("build/bin/occlum")
    if read_version(home / "include/occlum_version.h") is None:
        lacks.append("include/occlum_version.h")
    if not lacks:
        return None
    present = sorted(str(p.relative_to(home)) for p in (
        home / "etc/template", home / "glibc/lib", home / "build", home / "toolchains") if p.exists())
    holds = f"; it holds only {', '.join(present)}" if present else ""
    return f"it is not an Occlum install: no {' and no '.join(lacks)}{holds}"


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None


def _exe(*paths: Path) -> Path | None:
    for p in paths:
        if p.is_file():
            return p
    return None


def _mode_libs(lib_dir: Path, stem: str, version: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for mode in SGX_MODES:
        base = f"{stem}{_MODE_SUFFIX[mode]}.so"
        for name in (f"{base}.{version}", base):
            candidate = lib_dir / name
            if candidate.is_file():
                found[mode] = candidate.resolve() if candidate.is_symlink() else candidate
                break
    return found


def sgx_sdk_dir(home: Path) -> Path:
    """Occlum's environment file prefers its bundled sgxsdk-tools over the system SDK."""
    bundled = home / "sgxsdk-tools"
    return bundled if bundled.is_dir() else Path("/opt/intel/sgxsdk")


def discover(home: Path, source: str,
             digest: Callable[[Path], str] = lambda p: sha256_file(p),
             system_musl_lib: Path = SYSTEM_MUSL_LIB,
             musl_loader: Path = MUSL_LOADER) -> OcclumInstall | None:
    """The install at ``home``, or None when ``home`` is not one (see :func:`why_not_install`)."""
    if why_not_install(home) is not None:
        return None
    header = home / "include/occlum_version.h"
    version = read_version(header) or ""
    bin_dir, lib_dir = home / "build/bin", home / "build/lib"
    gcc_bin = home / "toolchains/gcc/bin"
    # Occlum installs its musl toolchain under <home>/toolchains/gcc and links
    # /usr/local/occlum to it; `occlum init` reads the latter. Prefer the one inside this
    # install so a non-default prefix stays self-consistent.
    musl_lib = None
    for candidate in (home / "toolchains/gcc/x86_64-linux-musl/lib", system_musl_lib):
        if (candidate / "libc.so").exists():
            musl_lib = candidate
            break
    template_dir = home / "etc/template"
    templates = {n: template_dir / n for n in TEMPLATE_FILES if (template_dir / n).is_file()}
    sdk = sgx_sdk_dir(home)
    tools = {n: bin_dir / n for n in INSTALL_TOOLS if (bin_dir / n).is_file()}
    for name in ("sgx_sign", "sgx_sign_hyper"):
        if (sdk / "bin/x64" / name).is_file():
            tools[name] = sdk / "bin/x64" / name
    install = OcclumInstall(
        home=home, source=source, version=version, version_header=header,
        occlum=bin_dir / "occlum", bin_dir=bin_dir, lib_dir=lib_dir,
        libos=_mode_libs(lib_dir, "libocclum-libos", version),
        pal=_mode_libs(lib_dir, "libocclum-pal", version),
        init=_file(bin_dir / "init"),
        occlum_gcc=_exe(gcc_bin / "occlum-gcc"),
        occlum_gxx=_exe(gcc_bin / "occlum-g++"),
        occlum_cargo=_exe(home / "toolchains/rust/bin/occlum-cargo"),
        occlum_go=_exe(home / "toolchains/golang/bin/occlum-go"),
        musl_lib=musl_lib,
        musl_loader=musl_loader if musl_loader.exists() else None,
        glibc_lib=(home / "glibc/lib") if (home / "glibc/lib").is_dir() else None,
        template_dir=template_dir if template_dir.is_dir() else None,
        templates=templates, sgx_sdk=sdk, tools=tools,
    )
    missing = _missing(install)
    files = _fingerprint_files(install)
    material = {"home": str(home), "version": version,
                "files": {k: digest(p) for k, p in sorted(files.items())}}
    fp = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return OcclumInstall(**{**install.__dict__, "missing": missing,
                            "fingerprint": f"occlum:{version}:{fp}",
                            "fingerprint_files": material["files"]})


def _fingerprint_files(install: OcclumInstall) -> dict[str, Path]:
    """The files whose content decides what an instance build produces."""
    files: dict[str, Path] = {"version_header": install.version_header}
    for mode, p in install.libos.items():
        files[f"libos.{mode}"] = p
    for mode, p in install.pal.items():
        files[f"pal.{mode}"] = p
    if install.init is not None:
        files["init"] = install.init
    for name, p in install.templates.items():
        files[f"template.{name}"] = p
    for name, p in install.tools.items():
        files[f"tool.{name}"] = p
    return files


def _missing(install: OcclumInstall) -> tuple[str, ...]:
    missing: list[str] = []
    for mode in SGX_MODES:
        suffix = _MODE_SUFFIX[mode]
        if mode not in install.libos:
            missing.append(f"build/lib/libocclum-libos{suffix}.so.{install.version}")
        if mode not in install.pal:
            missing.append(f"build/lib/libocclum-pal{suffix}.so.{install.version}")
    for label, value in (("build/bin/init", install.init),
                         ("toolchains/gcc/bin/occlum-gcc", install.occlum_gcc),
                         ("toolchains/gcc/bin/occlum-g++", install.occlum_gxx),
                         ("toolchains/rust/bin/occlum-cargo", install.occlum_cargo),
                         ("toolchains/golang/bin/occlum-go", install.occlum_go),
                         ("musl runtime (x86_64-linux-musl/lib/libc.so)", install.musl_lib),
                         (str(MUSL_LOADER), install.musl_loader),
                         ("glibc/lib", install.glibc_lib)):
        if value is None:
            missing.append(label)
    for name in TEMPLATE_FILES:
        if name not in install.templates:
            missing.append(f"etc/template/{name}")
    for name in INSTALL_TOOLS:
        if name not in install.tools:
            missing.append(f"build/bin/{name}")
    if "sgx_sign" not in install.tools:
        missing.append(f"{install.sgx_sdk}/bin/x64/sgx_sign")
    return tuple(missing)
