"""Find tools along a fallback chain and fingerprint them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.digests import sha256_file
from occlum_rules.core.workspace import Workspace
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool
from occlum_rules.toolchains import occlum as occlum_install
from occlum_rules.toolchains.occlum import OcclumInstall

if TYPE_CHECKING:
    from occlum_rules.stages.instance_layout import InitfsSources


@dataclass(frozen=True)
class Tool:
    kind: str          # "cc", "cargo", "go", "ar", ...
    name: str          # the chain entry that matched, e.g. "musl-gcc"
    path: str          # resolved absolute path
    version: str       # first line of `--version` (or `version`) output
    digest: str        # sha256 of the binary (or wrapper script)
    source: str        # why it was chosen
    version_digest: str = ""

    @property
    def fingerprint(self) -> str:
        return f"{self.kind}:{self.name}:{self.path}:{self.digest}:{self.version_digest}"


@dataclass(frozen=True)
class CargoToolchain:
    """cargo plus the rustc it drives. Both fingerprints enter a cargo action's key: a new
    rustc changes every binary even when the cargo binary stays the same (rustup proxies)."""

    cargo: Tool            # what the chain chose (maybe a rustup proxy or occlum-cargo)
    rustc: Tool            # the real compiler binary (behind any rustup proxy)
    run_cargo: str         # the binary to execute: the real cargo behind a proxy, else cargo
    real_cargo: Tool | None = None

    @property
    def fingerprint(self) -> str:
        parts = [self.cargo.fingerprint, self.rustc.fingerprint]
        if self.real_cargo is not None:
            parts.append(self.real_cargo.fingerprint)
        return " | ".join(parts)

    def env(self) -> dict[str, str]:
        """Pin cargo to the rustc we fingerprinted, whatever PATH or a wrapper says."""
        return {"RUSTC": self.rustc.path}


@dataclass
class Toolchains:
    ws: Workspace
    _tools: dict[tuple[str, tuple[str, ...]], Tool] = field(default_factory=dict)
    _probe_cache: dict[str, Any] | None = None
    # One-time messages for the user (the doit bridge prints them once per build).
    notes: list[str] = field(default_factory=list)
    _occlum: OcclumInstall | None = None
    _occlum_looked: bool = False
    _cargo: dict[tuple[tuple[str, ...], str], CargoToolchain] = field(default_factory=dict)

    # -- probing with a small persistent cache so null builds spawn no `--version` processes
    def _cache_file(self) -> Path:
        return self.ws.state_dir / "toolchains.json"

    def _probes(self) -> dict:
        if self._probe_cache is None:
            try:
                self._probe_cache = json.loads(self._cache_file().read_text())
            except (OSError, ValueError):
                self._probe_cache = {}
        return self._probe_cache

    def _probe(self, path: str, version_args: list[str]) -> tuple[str, str, str]:
        st = os.stat(path)
        stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        key = f"{path} {' '.join(version_args)}"
        hit = self._probes().get(key)
        if hit and hit["stamp"] == stamp:
            return hit["version"], hit["digest"], hit["version_digest"]
        proc = run_tool([path, *version_args], f"asking '{path} {' '.join(version_args)}' "
                        "for its version", timeout=30, check=False)
        text = (proc.stdout or proc.stderr).strip()
        version = text.splitlines()[0] if text else "unknown"
        digest = sha256_file(path)
        version_digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self._probes()[key] = {"stamp": stamp, "version": version, "digest": digest,
                               "version_digest": version_digest}
        self._save_probes()
        return version, digest, version_digest

    def _save_probes(self) -> None:
        try:
            write_atomic(self._cache_file(),
                         json.dumps(self._probes(), indent=1, sort_keys=True).encode())
        except OSError:
            pass

    def occlum_home(self) -> tuple[Path, str]:
        if self.ws.occlum_home:
            # relative to the workspace root, like every other path in WORKSPACE.yaml
            home = Path(os.path.expanduser(self.ws.occlum_home))
            return self.ws.root / home, "WORKSPACE.yaml occlum.home"
        if os.environ.get("OCCLUM_HOME"):
            return Path(os.environ["OCCLUM_HOME"]), "$OCCLUM_HOME"
        return Path("/opt/occlum"), "default /opt/occlum"

    def _search_dirs(self, name: str) -> list[tuple[str, str]]:
        dirs: list[tuple[str, str]] = []
        if name.startswith("occlum-"):
            home, why = self.occlum_home()
            if home:
                for sub in ("build/bin", "toolchains/gcc/bin", "toolchains/rust/bin",
                            "toolchains/golang/bin", "bin"):
                    dirs.append((str(home / sub), f"Occlum install ({why})"))
        for d in os.environ.get("PATH", "").split(os.pathsep):
            if d:
                dirs.append((d, "PATH"))
        # Where the usual installers put these when they are not on PATH.
        if name in ("cargo", "rustc"):
            cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
            dirs.append((os.path.join(cargo_home, "bin"), "rustup's default ($CARGO_HOME/bin)"))
        elif name == "go":
            for d in ("/usr/local/go/bin", "/usr/lib/go/bin"):
                dirs.append((d, f"the usual Go install dir {d}"))
        return dirs

    def find(self, kind: str, chain: list[str], version_args: list[str] | None = None,
             why: str = "") -> Tool:
        key = (kind, tuple(chain))
        if key in self._tools:
            return self._tools[key]
        tried: list[str] = []
        for entry in chain:
            candidates: list[tuple[str, str]] = []
            if "/" in entry:
                p = entry if os.path.isabs(entry) else str(self.ws.root / entry)
                candidates.append((p, why or "configured path"))
            else:
                for d, source in self._search_dirs(entry):
                    candidates.append((os.path.join(d, entry), source))
            for path, source in candidates:
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    resolved = os.path.realpath(path) if os.path.islink(path) and "/" not in entry else path
                    version, digest, vdigest = self._probe(resolved, version_args or ["--version"])
                    tool = Tool(kind=kind, name=entry, path=os.path.abspath(path), version=version,
                                digest=digest, source=f"{source}{'; ' + why if why else ''}",
                                version_digest=vdigest)
                    self._tools[key] = tool
                    return tool
            tried.append(entry)
        raise UserError(not_found(kind, tried))

    def cc(self, chain: list[str] | None = None) -> Tool:
        use = chain or self.ws.toolchains.get("cc") or ["gcc"]
        why = "target attribute" if chain else "WORKSPACE.yaml toolchains.cc chain"
        self._mention_occlum(use)
        return self.find("cc", use, why=why)

    def ar(self) -> Tool:
        return self.find("ar", ["ar"], ["--version"])

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def note(self, text: str) -> None:
        """Say ``text`` once per build (the doit bridge prints the notes when it loads)."""
        if text not in self.notes:
            self.notes.append(text)

    # ------------------------------------------------------------------ Occlum install
    def occlum(self) -> OcclumInstall | None:
        """The Occlum install the workspace points at, or None (noted once for the user)."""
        if not self._occlum_looked:
            home, why = self.occlum_home()
            install = occlum_install.discover(home, why, digest=self._digest)
            if install is None:
                reason = occlum_install.why_not_install(home)
                self.notes.append(
                    f"occlum-rules: no Occlum install found at {home} ({why}; {reason}); "
                    "using the built-in Python stages and host compilers")
            self._occlum, self._occlum_looked = install, True
        return self._occlum

    def require_occlum(self, why: str) -> OcclumInstall:
        """The install, or one clear error saying what needed it and where we looked."""
        install = self.occlum()
        if install is None:
            home, source = self.occlum_home()
            raise UserError(f"{why} needs an Occlum install, but {home} ({source}) "
                            f"{occlum_install.why_not_install(home)}; set occlum.home in "
                            "WORKSPACE.yaml or $OCCLUM_HOME, or use `stages: python`")
        return install

    def _digest(self, path: Path) -> str:
        """sha256 of a file, remembered by (inode, size, mtime) so null builds hash nothing."""
        st = os.stat(path)
        key = f"digest {path}"
        stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        hit = self._probes().get(key)
        if hit and hit.get("stamp") == stamp:
            return hit["digest"]
        digest = sha256_file(path)
        self._probes()[key] = {"stamp": stamp, "digest": digest}
        self._save_probes()
        return digest

    def _mention_occlum(self, chain: list[str]) -> None:
        if any(entry.startswith("occlum-") for entry in chain):
            self.occlum()

    # ------------------------------------------------------------------ locating
    def locate(self, kind: str, chain: list[str], why: str = "") -> tuple[str, str, str]:
        """(chain entry, path, source) of the first executable along ``chain``, unprobed."""
        tried: list[str] = []
        for entry in chain:
            if "/" in entry:
                p = entry if os.path.isabs(entry) else str(self.ws.root / entry)
                candidates = [(p, why or "configured path")]
            else:
                candidates = [(os.path.join(d, entry), source)
                              for d, source in self._search_dirs(entry)]
            for path, source in candidates:
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    return entry, os.path.abspath(path), f"{source}{'; ' + why if why else ''}"
            tried.append(entry)
        raise UserError(not_found(kind, tried))

    def _tool_at(self, kind: str, name: str, path: str, source: str,
                 version_args: list[str]) -> Tool:
        version, digest, vdigest = self._probe(path, version_args)
        return Tool(kind=kind, name=name, path=path, version=version, digest=digest,
                    source=source, version_digest=vdigest)

    # ------------------------------------------------------------------ Rust
    def cargo(self, crate_dir: Path | None = None) -> CargoToolchain:
        """cargo along WORKSPACE.yaml toolchains.cargo (occlum-cargo, cargo) and its rustc.

        A rustup proxy is looked through: we fingerprint and run the toolchain's own binaries,
        so `rustup update` changes the key and the fingerprint names what actually ran."""
        chain = self.ws.toolchains.get("cargo") or ["cargo"]
        cache_key = (tuple(chain), str(crate_dir or ""))
        if cache_key in self._cargo:
            return self._cargo[cache_key]
        self._mention_occlum(chain)
        name, path, source = self.locate("cargo", chain, "WORKSPACE.yaml toolchains.cargo chain")
        cwd = str(crate_dir) if crate_dir else None
        real_cargo = None
        run_cargo = path
        if _is_rustup_proxy(path):
            sysroot = self._rust_sysroot(os.path.join(os.path.dirname(path), "rustc"), cwd)
            real = os.path.join(sysroot, "bin", "cargo")
            if not os.path.isfile(real):
                raise UserError(f"cargo at {path} is a rustup proxy, but its toolchain "
                                f"{sysroot} has no bin/cargo")
            real_cargo = self._tool_at("cargo", "cargo", real, f"toolchain behind {path}", ["-vV"])
            cargo = Tool(kind="cargo", name=name, path=path, version=real_cargo.version,
                         digest=self._digest(Path(path)), source=source + " (rustup proxy)",
                         version_digest=real_cargo.version_digest)
            run_cargo = real
        else:
            cargo = self._tool_at("cargo", name, path, source, ["-vV"])
        rustc = self._rustc(path, cwd)
        result = CargoToolchain(cargo=cargo, rustc=rustc, run_cargo=run_cargo,
                                real_cargo=real_cargo)
        self._cargo[cache_key] = result
        return result

    def _rustc(self, cargo_path: str, cwd: str | None) -> Tool:
        sibling = os.path.join(os.path.dirname(cargo_path), "rustc")
        chain = [sibling] if os.path.isfile(sibling) else []
        chain.append("rustc")
        _, path, source = self.locate("rustc", chain, "the rustc beside cargo, else on PATH")
        if _is_rustup_proxy(path):
            sysroot = self._rust_sysroot(path, cwd)
            real = os.path.join(sysroot, "bin", "rustc")
            return self._tool_at("rustc", "rustc", real, f"toolchain behind {path}", ["-vV"])
        return self._tool_at("rustc", "rustc", path, source, ["-vV"])

    def _rust_sysroot(self, rustc_proxy: str, cwd: str | None) -> str:
        """The active toolchain behind a rustup proxy, remembered between builds.

        Asking rustup costs a process start (a second or more on a loaded machine) per call,
        which would dominate a null build; the answer can only change with rustup's settings,
        its installed toolchains or a rust-toolchain file, so those files' stamps guard it.
        """
        key = f"sysroot {rustc_proxy} {cwd or ''}"
        stamp = _rustup_stamp(cwd)
        hit = self._probes().get(key)
        if hit and hit.get("stamp") == stamp and os.path.isdir(hit.get("sysroot", "")):
            return hit["sysroot"]
        sysroot = self._ask_rust_sysroot(rustc_proxy, cwd)
        self._probes()[key] = {"stamp": stamp, "sysroot": sysroot}
        self._save_probes()
        return sysroot

    def _ask_rust_sysroot(self, rustc_proxy: str, cwd: str | None) -> str:
        proc = run_tool([rustc_proxy, "--print", "sysroot"],
                        f"asking '{rustc_proxy} --print sysroot' for the Rust toolchain",
                        timeout=60, cwd=cwd, check=False)
        sysroot = proc.stdout.strip()
        if proc.returncode != 0 or not sysroot or not os.path.isdir(sysroot):
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"rustup could not name the active Rust toolchain "
                            f"({rustc_proxy} --print sysroot: {detail[0]})")
        return sysroot

    # ------------------------------------------------------------------ Go
    def go(self) -> Tool:
        chain = self.ws.toolchains.get("go") or ["go"]
        self._mention_occlum(chain)
        tool = self.find("go", chain, ["version"], why="WORKSPACE.yaml toolchains.go chain")
        # occlum-go is a script beside the real go: a new go under an unchanged script must
        # still change the fingerprint, so the real binary's digest joins it.
        sibling = os.path.join(os.path.dirname(tool.path), "go")
        if sibling != tool.path and os.path.isfile(sibling) and not _is_elf(tool.path):
            combined = hashlib.sha256(f"{tool.digest} {self._digest(Path(sibling))}".encode())
            tool = Tool(kind=tool.kind, name=tool.name, path=tool.path, version=tool.version,
                        digest=combined.hexdigest(), source=tool.source,
                        version_digest=tool.version_digest)
        return tool

    # ------------------------------------------------------------------ occlum init's files
    def init_sources(self, init: str | None) -> InitfsSources:
        """Where `occlum init`'s files come from here: the install, or host stand-ins."""
        from occlum_rules.stages.init_sources import NO_LOCALTIME_NOTE, init_sources

        sources = init_sources(self.occlum(), init)
        if sources.localtime is None:
            self.note(NO_LOCALTIME_NOTE)
        return sources

    # ------------------------------------------------------------------ make variables
    def python3(self) -> Tool:
        """The host's python3, for BOMs that copy it (its version names its stdlib dir)."""
        chain = self.ws.toolchains.get("python3") or ["python3"]
        return self.find("python3", chain, ["-c", _PYTHON3_FACTS],
                         why="WORKSPACE.yaml toolchains.python3 chain")

    def make_variable_names(self) -> list[str]:
        return sorted(MAKE_VARIABLES)

    def make_variable(self, name: str) -> str | None:
        """The value of ``$(NAME)`` in a rule attribute, or None for an unknown name."""
        if name in ("PYTHON3_VERSION", "PYTHON3_EXT_SUFFIX"):
            facts = self.python3().version.split()
            if len(facts) != 2:
                raise UserError(f"cannot tell the host python3's version: '{self.python3().version}'")
            return facts[0] if name == "PYTHON3_VERSION" else facts[1]
        return None

    # ------------------------------------------------------------------ reporting
    def describe(self) -> str:
        """What `occlum-rules toolchains` prints: each choice and where it came from."""
        return _describe(self)


MAKE_VARIABLES = {
    "PYTHON3_VERSION": "major.minor of the host's python3 (3.11 on Debian 12)",
    "PYTHON3_EXT_SUFFIX": "its extension-module suffix (.cpython-311-x86_64-linux-gnu.so)",
}
# One line: the version, then the extension suffix (what `find` keeps as the tool's version).
_PYTHON3_FACTS = ("import sys, sysconfig; "
                  "print('%d.%d' % sys.version_info[:2], sysconfig.get_config_var('EXT_SUFFIX'))")


# How to get a tool that is not installed, for the one-line error a build stops with.
_INSTALL_HINTS = {
    "cargo": "install Rust with `apt-get install cargo rustc` (Debian/Ubuntu) or rustup",
    "rustc": "install Rust with `apt-get install cargo rustc` (Debian/Ubuntu) or rustup",
    "go": "install Go with `apt-get install golang-go` (Debian/Ubuntu)",
}


def not_found(kind: str, tried: list[str]) -> str:
    """One line: what was looked for, and how to get it."""
    where = " (on PATH and in $CARGO_HOME/bin)" if kind in ("cargo", "rustc") else ""
    hint = _INSTALL_HINTS.get(kind, "install one")
    setting = "cargo" if kind == "rustc" else kind  # rustc is found beside cargo
    return (f"no {kind} toolchain found: tried {', '.join(tried)}{where}; {hint}, "
            f"or set toolchains.{setting} in WORKSPACE.yaml")


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _is_rustup_proxy(path: str) -> bool:
    return os.path.basename(os.path.realpath(path)) in ("rustup", "rustup-init")


def _skipped(tool_name: str, chain: list[str]) -> str:
    before = chain[:chain.index(tool_name)] if tool_name in chain else []
    return f"; not found first: {', '.join(before)}" if before else ""


def _describe(tc: Toolchains) -> str:
    ws = tc.ws
    lines = [f"workspace  {ws.root} ({ws.config_path.name if ws.config_path else 'WORKSPACE.yaml'})"]
    home, why = tc.occlum_home()
    install = tc.occlum()
    if install is None:
        lines.append(f"occlum     none: {home} ({why}) {occlum_install.why_not_install(home)}")
        lines.append("           -> built-in Python stages, stand-in LibOS, host compilers")
    else:
        lines.append(f"occlum     {install.version} at {install.home} (from {why})")
        rows = [("occlum", install.occlum), ("init", install.init),
                ("occlum-gcc", install.occlum_gcc), ("occlum-g++", install.occlum_gxx),
                ("occlum-cargo", install.occlum_cargo), ("occlum-go", install.occlum_go),
                ("musl lib", install.musl_lib), ("musl loader", install.musl_loader),
                ("glibc lib", install.glibc_lib), ("templates", install.template_dir),
                ("SGX SDK", install.sgx_sdk)]
        rows += [(f"libos {m}", p) for m, p in sorted(install.libos.items())]
        rows += [(f"pal {m}", p) for m, p in sorted(install.pal.items())]
        rows += [(name, p) for name, p in sorted(install.tools.items())]
        for label, value in rows:
            lines.append(f"  {label:<22} {value if value is not None else '(not found)'}")
        if install.missing:
            lines.append(f"  missing: {', '.join(install.missing)}")
        lines.append(f"  fingerprint {install.fingerprint}")
    stages_why = "WORKSPACE.yaml stages"
    lines.append(f"stages     {ws.stages} ({stages_why})")

    def show(kind: str, finder: Callable[[], Tool | CargoToolchain], chain: list[str]) -> None:
        try:
            tool = finder()
        except UserError as exc:
            lines.append(f"{kind:<10} not found: {exc}")
            return
        if isinstance(tool, CargoToolchain):
            c = tool.cargo
            lines.append(f"{kind:<10} {c.path}  [{c.version}]  from {c.source}{_skipped(c.name, chain)}")
            if tool.run_cargo != c.path:
                lines.append(f"  runs     {tool.run_cargo}")
            r = tool.rustc
            lines.append(f"  rustc    {r.path}  [{r.version}]  from {r.source}")
            lines.append(f"  fingerprint {tool.fingerprint}")
            return
        lines.append(f"{kind:<10} {tool.path}  [{tool.version}]  from {tool.source}"
                     f"{_skipped(tool.name, chain)}")
        lines.append(f"  fingerprint {tool.fingerprint}")

    show("cc", tc.cc, ws.toolchains.get("cc") or ["gcc"])
    show("ar", tc.ar, ["ar"])
    show("cargo", tc.cargo, ws.toolchains.get("cargo") or ["cargo"])
    show("go", tc.go, ws.toolchains.get("go") or ["go"])
    from occlum_rules.toolchains.deflate import ENV, package_deflater

    try:
        deflater = package_deflater()
    except UserError as exc:
        lines.append(f"deflate    not usable: {exc}")
    else:
        why = f"from ${ENV}" if os.environ.get(ENV, "").strip() else "default"
        lines.append(f"deflate    {deflater.identity}  ({why}; compresses occlum_package)")
    return "\n".join(lines)


def _rustup_stamp(cwd: str | None) -> list:
    """Stamps of everything that can change which toolchain a rustup proxy runs."""
    home = Path(os.environ.get("RUSTUP_HOME") or Path.home() / ".rustup")
    watched = [home / "settings.toml", home / "toolchains"]
    here = Path(cwd).resolve() if cwd else Path.cwd()
    for d in (here, *here.parents):
        watched += [d / "rust-toolchain", d / "rust-toolchain.toml"]
    stamp: list = [os.environ.get("RUSTUP_TOOLCHAIN", "")]
    for path in watched:
        try:
            st = os.stat(path)
            stamp.append([str(path), st.st_mtime_ns, st.st_size])
        except OSError:
            continue
    return stamp
