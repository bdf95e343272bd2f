"""Run cargo for one target and hand back one checked artifact.

Why it works this way:
- cargo builds a *staged copy* of the crate's declared input files, never the source tree:
  cargo writes Cargo.lock and target/ next to Cargo.toml, and whatever it reads must be what
  the action key hashed. Rewriting the copy each run also gives the crate's own files fresh
  mtimes, so cargo's mtime-based freshness can never keep a stale object for a source that
  went *back* to an older mtime.
- The target directory persists per target under the state directory, so dependency crates
  are compiled once, not on every change (CARGO_INCREMENTAL=0 keeps results identical to a
  clean build).
- Paths are remapped for every crate (a RUSTC_WRAPPER appends --remap-path-prefix, because
  occlum-cargo sets RUSTFLAGS itself and would drop ours): the staging copy becomes the
  crate's workspace path, the state dir and $CARGO_HOME become fixed names. Two checkouts
  therefore produce identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from occlum_rules.core.executor import StageContext
from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind

_PASS_ENV = ("HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "USER")


def trim_tool_output(text: str, limit: int = 30) -> str:
    """The tool's own error, without pages of progress lines: from the first error on."""
    rows = [r.rstrip() for r in text.splitlines() if r.strip()]
    rows = [r for r in rows if not r.lstrip().startswith(("Compiling ", "Checking ", "Blocking "))]
    start = next((i for i, r in enumerate(rows) if r.lstrip().lower().startswith("error")), 0)
    rows = rows[start:]
    if len(rows) > limit:
        rows = rows[:limit] + [f"... ({len(rows) - limit} more lines)"]
    return "\n".join(rows) if rows else "(no output)"


def work_dir(ctx: StageContext) -> Path:
    return ctx.state_dir / "cargo" / hashlib.sha256(ctx.label.encode()).hexdigest()[:16]


def _stage_sources(ctx: StageContext, crate_src: Path, staged: Path) -> None:
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for src in ctx.inputs:
        rel = src.relative_to(crate_src)
        dest = staged / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        shutil.copymode(src, dest)


def _write_wrapper(path: Path, remaps: list[tuple[str, str]]) -> None:
    flags = " ".join(shlex.quote(f"--remap-path-prefix={a}={b}") for a, b in remaps)
    text = f'#!/bin/sh\n# written by occlum-rules: remap build paths for every crate\nexec "$@" {flags}\n'
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def _env(ctx: StageContext, work: Path, cargo: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    path = os.environ.get("PATH", "/usr/bin:/bin")
    env.update({
        "PATH": os.pathsep.join([os.path.dirname(cargo), path]),
        "LC_ALL": "C", "TZ": "UTC", "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch),
        "CARGO_TARGET_DIR": str(work / "target"),
        "CARGO_INCREMENTAL": "0",
        "CARGO_TERM_COLOR": "never",
        "CARGO_NET_OFFLINE": "true",
        "RUSTC_WRAPPER": str(work / "rustc-remap"),
    })
    env.update(ctx.params.get("tool_env", {}))
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              errors="replace")
    except OSError as exc:
        raise UserError(f"cannot run {argv[0]}: {exc}") from None


def _check_target(ctx: StageContext, cargo: str, manifest: Path, env: dict[str, str]) -> None:
    """The named bin / a cdylib lib must exist: say so plainly instead of cargo's hint."""
    p = ctx.params
    proc = _run([cargo, "metadata", "--offline", "--no-deps", "--format-version", "1",
                 "--manifest-path", str(manifest)], manifest.parent, env)
    if proc.returncode != 0:
        raise UserError(f"{ctx.label}: cargo could not read {p['crate']}/{p['manifest']}:\n"
                        f"{trim_tool_output(proc.stderr or proc.stdout)}")
    meta = json.loads(proc.stdout)
    package = next((pk for pk in meta.get("packages", [])
                    if Path(pk.get("manifest_path", "")) == manifest), None)
    if package is None:
        return
    targets = package.get("targets", [])
    where = f"{p['crate'] or '.'}/{p['manifest']}"
    if p["kind"] == "bin":
        bins = sorted(t["name"] for t in targets if "bin" in t.get("kind", []))
        if p["target_name"] not in bins:
            have = ", ".join(bins) if bins else "none"
            raise UserError(f"{ctx.label}: {where} has no bin named '{p['target_name']}' "
                            f"(its bins: {have}); set bin = ... to one of them")
    else:
        libs = [t for t in targets if "cdylib" in t.get("crate_types", [])]
        if not libs:
            raise UserError(f"{ctx.label}: {where} builds no cdylib; add "
                            "[lib] crate-type = [\"cdylib\"]")


def build(ctx: StageContext) -> None:
    p = ctx.params
    if "missing" in p:
        raise UserError(f"{ctx.label}: {p['missing']}")
    cargo = p["cargo"]
    crate_src = ctx.root / p["crate"] if p["crate"] else ctx.root
    work = work_dir(ctx)
    staged = work / "src"
    work.mkdir(parents=True, exist_ok=True)
    _stage_sources(ctx, crate_src, staged)
    cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    # rustc applies the last matching remap: most specific last.
    remaps = [(str(ctx.root), "."), (cargo_home, "/cargo-home"),
              (str(work / "target"), "/cargo-target"), (str(staged), p["crate"] or ".")]
    _write_wrapper(work / "rustc-remap", remaps)
    env = _env(ctx, work, cargo)
    manifest = staged / p["manifest"]
    _check_target(ctx, cargo, manifest, env)

    argv = [cargo, "build", "--offline", "--manifest-path", str(manifest),
            "--message-format=json-render-diagnostics", "--profile", p["profile"]]
    if p["locked"]:
        argv.append("--locked")
    if not p["default_features"]:
        argv.append("--no-default-features")
    if p["features"]:
        argv += ["--features", ",".join(p["features"])]
    argv += ["--bin", p["target_name"]] if p["kind"] == "bin" else ["--lib"]
    proc = _run(argv, staged, env)
    if proc.returncode != 0:
        raise UserError(f"{ctx.label}: cargo build failed (exit {proc.returncode}):\n"
                        f"{trim_tool_output(proc.stderr or proc.stdout)}")
    artifact = _artifact(proc.stdout, p["kind"], p["target_name"], manifest)
    if artifact is None:
        raise UserError(f"{ctx.label}: cargo reported no {p['kind']} artifact for "
                        f"'{p['target_name']}'")
    kind = pie_kind(artifact)
    if p["kind"] == "bin" and kind not in ("pie", "static-pie"):
        raise UserError(f"{ctx.label}: cargo built a {kind} executable, but Occlum runs only "
                        "position-independent executables (do not set relocation-model=static "
                        "or +crt-static)")
    if p["kind"] == "cdylib" and kind != "shared":
        raise UserError(f"{ctx.label}: cargo built a {kind} file where a shared library "
                        "(cdylib) was expected")
    out = ctx.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact, out)
    out.chmod(0o755)


def _artifact(stdout: str, kind: str, name: str, manifest: Path) -> Path | None:
    found: Path | None = None
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact":
            continue
        target = msg.get("target") or {}
        # by target name, not manifest: in a cargo workspace the target is a member's
        if kind == "bin" and "bin" in target.get("kind", []) and target.get("name") == name:
            if msg.get("executable"):
                found = Path(msg["executable"])
        elif kind == "cdylib" and "cdylib" in target.get("crate_types", []) and (
                target.get("name", "").replace("-", "_") == name
                or Path(msg.get("manifest_path", "")) == manifest):
            for f in msg.get("filenames", []):
                if f.endswith(".so"):
                    found = Path(f)
    return found
