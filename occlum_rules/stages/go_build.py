"""Run ``go build`` for one binary and check it is a PIE.

Everything that could make the bytes depend on more than the sources is switched off or
pinned: the environment is rebuilt from scratch (no user GOFLAGS or go env file), the
build cache is one per go toolchain in the output directory (actions/go.py), the build id is empty, paths
are trimmed, VCS stamping is off, and with no proxy and a local toolchain the go command
cannot reach the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.process import deterministic_env
from occlum_rules.stages.elfcheck import pie_kind


def ldflags_value(extra: list[str]) -> str:
    """The -ldflags value: an empty build id first, then the user's flags, quoted the way
    the go command splits them."""
    parts = ["-buildid="]
    for flag in extra:
        if any(c.isspace() for c in flag):
            if "'" in flag:
                raise UserError(f"ldflags: {flag!r} holds both whitespace and a single quote")
            flag = f"'{flag}'"
        parts.append(flag)
    return " ".join(parts)


def go_env(go: str, state: Path, source_date_epoch: int, *, vendor: bool, module: bool,
           cgo: bool) -> dict[str, str]:
    """The whole environment of a ``go build``: nothing of the user's, the build and module
    caches under ``state`` (the caller's: one per go toolchain)."""
    goflags = ["-modcacherw"]
    if vendor:
        goflags.append("-mod=vendor")
    return deterministic_env(source_date_epoch, prepend_path=[os.path.dirname(go)], extra={
        "GOCACHE": str(state / "cache"),
        "GOPATH": str(state / "path"),
        "GOMODCACHE": str(state / "path" / "pkg" / "mod"),
        "GOENV": "off", "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOSUMDB": "off",
        "GONOSUMDB": "*", "GOWORK": "off", "GO111MODULE": "on" if module else "auto",
        "GOFLAGS": " ".join(goflags),
        "CGO_ENABLED": "1" if cgo else "0",
    })


def build_argv(go: str, out: Path, ldflags: list[str], tags: list[str], args: list[str]) -> list[str]:
    argv = [go, "build", "-buildmode=pie", "-trimpath", "-buildvcs=false",
            f"-ldflags={ldflags_value(ldflags)}", "-o", str(out)]
    if tags:
        argv.append("-tags=" + ",".join(tags))
    return argv + args


def require_pie(path: Path, label: str) -> None:
    kind = pie_kind(path)
    if kind not in ("pie", "static-pie"):
        raise UserError(f"{label}: go built a {kind} executable, but Occlum runs only "
                        "position-independent executables (check ldflags for -linkmode or "
                        "-buildmode overrides)")
