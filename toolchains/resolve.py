"""Find tools along a fallback chain and fingerprint them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from occlum_rules.core.digests import sha256_file
from occlum_rules.core.workspace import Workspace
from occlum_rules.errors import UserError


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


@dataclass
class Toolchains:
    ws: Workspace
    _tools: dict[tuple, Tool] = field(default_factory=dict)
    _probe_cache: dict | None = None

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
        try:
            proc = subprocess.run([path, *version_args], capture_output=True, text=True,
                                  timeout=30, errors="replace")
            text = (proc.stdout or proc.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"cannot run '{path} {' '.join(version_args)}': {exc}") from None
        version = text.splitlines()[0] if text else "unknown"
        digest = sha256_file(path)
        version_digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self._probes()[key] = {"stamp": stamp, "version": version, "digest": digest,
                               "version_digest": version_digest}
        try:
            self._cache_file().parent.mkdir(parents=True, exist_ok=True)
            tmp = self._cache_file().with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._probes(), indent=1, sort_keys=True))
            os.replace(tmp, self._cache_file())
        except OSError:
            pass
        return version, digest, version_digest

    def occlum_home(self) -> tuple[Path | None, str]:
        if self.ws.occlum_home:
            return Path(self.ws.occlum_home), "WORKSPACE.yaml occlum.home"
        if os.environ.get("OCCLUM_HOME"):
            return Path(os.environ["OCCLUM_HOME"]), "$OCCLUM_HOME"
        return Path("/opt/occlum"), "default /opt/occlum"

    def _search_dirs(self, name: str) -> list[tuple[str, str]]:
        dirs: list[tuple[str, str]] = []
        if name.startswith("occlum-"):
            home, why = self.occlum_home()
            if home is not None:
                for sub in ("build/bin", "toolchains/gcc/bin", "toolchains/rust/bin",
                            "toolchains/golang/bin", "bin"):
                    dirs.append((str(home / sub), f"Occlum install ({why})"))
        for d in os.environ.get("PATH", "").split(os.pathsep):
            if d:
                dirs.append((d, "PATH"))
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
        raise UserError(f"no {kind} toolchain found: tried {', '.join(tried)} "
                        f"(set toolchains.{kind} in WORKSPACE.yaml or install one)")

    def cc(self, chain: list[str] | None = None) -> Tool:
        use = chain or self.ws.toolchains.get("cc") or ["gcc"]
        why = "target attribute" if chain else "WORKSPACE.yaml toolchains.cc chain"
        return self.find("cc", use, why=why)

    def ar(self) -> Tool:
        return self.find("ar", ["ar"], ["--version"])

    def which(self, name: str) -> str | None:
        return shutil.which(name)
