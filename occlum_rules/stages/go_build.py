"""Run ``go build`` for one binary and check it is a PIE.

Everything that could make the bytes depend on more than the sources is switched off or
pinned: the environment is rebuilt from scratch (no user GOFLAGS or go env file), the
build cache is private to this workspace's output directory, the build id is empty, paths
are trimmed, VCS stamping is off, and with no proxy and a local toolchain the go command
cannot reach the network.
"""

from __future__ import annotations

import os
import subprocess

from occlum_rules.core.executor import StageContext
from occlum_rules.errors import UserError
from occlum_rules.stages.cargo_build import trim_tool_output
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


def go_env(ctx: StageContext, go: str) -> dict[str, str]:
    p = ctx.params
    state = ctx.shared_state_dir  # one build cache per go toolchain fingerprint
    goflags = ["-modcacherw"]
    if p.get("vendor"):
        goflags.append("-mod=vendor")
    env = {
        "PATH": os.pathsep.join([os.path.dirname(go), os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LC_ALL": "C", "TZ": "UTC", "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch),
        "GOCACHE": str(state / "cache"),
        "GOPATH": str(state / "path"),
        "GOMODCACHE": str(state / "path" / "pkg" / "mod"),
        "GOENV": "off", "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOSUMDB": "off",
        "GONOSUMDB": "*", "GOWORK": "off", "GO111MODULE": "on" if p.get("module") else "auto",
        "GOFLAGS": " ".join(goflags),
        "CGO_ENABLED": "1" if p.get("cgo") else "0",
    }
    return env


def build(ctx: StageContext) -> None:
    p = ctx.params
    if "missing" in p:
        raise UserError(f"{ctx.label}: {p['missing']}")
    go = p["go"]
    out = ctx.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [go, "build", "-buildmode=pie", "-trimpath", "-buildvcs=false",
            f"-ldflags={ldflags_value(p['ldflags'])}", "-o", str(out)]
    if p["tags"]:
        argv.append("-tags=" + ",".join(p["tags"]))
    argv += p["args"]
    cwd = ctx.root / p["cwd"] if p["cwd"] else ctx.root
    try:
        proc = subprocess.run(argv, cwd=cwd, env=go_env(ctx, go), capture_output=True,
                              text=True, errors="replace")
    except OSError as exc:
        raise UserError(f"{ctx.label}: cannot run {go}: {exc}") from None
    if proc.returncode != 0:
        raise UserError(f"{ctx.label}: go build failed (exit {proc.returncode}):\n"
                        f"{trim_tool_output(proc.stderr or proc.stdout)}")
    kind = pie_kind(out)
    if kind not in ("pie", "static-pie"):
        raise UserError(f"{ctx.label}: go built a {kind} executable, but Occlum runs only "
                        "position-independent executables (check ldflags for -linkmode or "
                        "-buildmode overrides)")
