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
- The target directory is one per toolchain (a hash of the cargo and rustc fingerprints):
  cargo versions lay out and lock a target directory differently, and switching between
  Debian's cargo and rustup's must not make one read what the other left.
- Dependencies come from crates.io only through a directory source cargo reads offline:
  the crate's vendor/ directory, a directory registry (Debian's /usr/share/cargo/registry)
  or what the fetch action downloaded (stages/cargo_fetch.py). cargo is pointed at it with
  ``--config`` source replacement, which overrides whatever the user's config says. Crates
  read from a registry outside the workspace are reported as discovered inputs, file by
  file, so a changed crate rebuilds and a cached result is used only where they match.
- Paths are remapped for every crate (a RUSTC_WRAPPER appends --remap-path-prefix, because
  occlum-cargo sets RUSTFLAGS itself and would drop ours): the staging copy becomes the
  crate's workspace path, the state dir and $CARGO_HOME become fixed names. Two checkouts
  therefore produce identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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


# The name of the directory source crates.io is replaced with (see _source_args).
SOURCE_NAME = "occlum-rules-deps"
DEBIAN_REGISTRY = "/usr/share/cargo/registry"


def work_dir(ctx: StageContext) -> Path:
    return ctx.state_dir


def stage_copy(inputs: list[Path], crate_src: Path, staged: Path) -> None:
    """A fresh copy of the crate's declared input files (only those under ``crate_src``)."""
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for src in inputs:
        try:
            rel = src.relative_to(crate_src)
        except ValueError:
            continue  # not part of the crate (the fetched crates directory)
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


def base_env(cargo: str, tool_env: dict[str, str]) -> dict[str, str]:
    """What every cargo run gets: the user's homes, the toolchain first on PATH, C locale."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    path = os.environ.get("PATH", "/usr/bin:/bin")
    env.update({"PATH": os.pathsep.join([os.path.dirname(cargo), path]),
                "LC_ALL": "C", "TZ": "UTC", "CARGO_TERM_COLOR": "never"})
    env.update(tool_env)
    return env


def _env(ctx: StageContext, work: Path, target: Path, cargo: str) -> dict[str, str]:
    env = base_env(cargo, ctx.params.get("tool_env", {}))
    env.update({
        "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch),
        "CARGO_TARGET_DIR": str(target),
        "CARGO_INCREMENTAL": "0",
        "CARGO_NET_OFFLINE": "true",
        "RUSTC_WRAPPER": str(work / "rustc-remap"),
    })
    return env


def registry_dir(ctx: StageContext) -> Path | None:
    """The directory registry this target builds from, or None."""
    reg = ctx.params.get("registry")
    if not reg:
        return None
    return Path(reg) if os.path.isabs(reg) else ctx.root / reg


def _source_dir(ctx: StageContext, staged: Path) -> Path | None:
    """The directory source that stands in for crates.io, or None (the crate's own
    configuration, if any, decides)."""
    p = ctx.params
    deps = p.get("deps")
    if deps == "vendor":
        path = staged / p["vendor"]
        if not path.is_dir():
            raise UserError(f"{ctx.label}: vendor: {p['crate'] or '.'}/{p['vendor']} is not a "
                            "directory (run `cargo vendor` in the crate directory)")
        return path
    if deps == "registry":
        path = registry_dir(ctx)
        if not path.is_dir():
            hint = (" (Debian's librust-*-dev packages install crates there, e.g. "
                    "`apt-get install librust-serde-dev`)"
                    if str(path) == DEBIAN_REGISTRY else "")
            raise UserError(f"{ctx.label}: registry: {path} is not a directory{hint}")
        return path
    if deps == "fetch":
        return ctx.root / p["fetched"]
    return None


def _source_args(source: Path | None) -> list[str]:
    """cargo --config arguments replacing crates.io with ``source`` (TOML strings in JSON
    quoting, which TOML basic strings accept)."""
    if source is None:
        return []
    return ["--config", f"source.crates-io.replace-with={json.dumps(SOURCE_NAME)}",
            "--config", f"source.{SOURCE_NAME}.directory={json.dumps(str(source))}"]


def _hint(text: str, ctx: StageContext) -> str:
    """A line of advice when cargo could not find a dependency offline."""
    match = re.search(r"no matching package named `([^`]+)` found", text)
    if not match:
        return ""
    name = match.group(1)
    deps = ctx.params.get("deps")
    if deps is None:
        return ("\nhint: builds are offline; set vendor = ..., registry = ... (e.g. Debian's "
                f"{DEBIAN_REGISTRY}) or fetch = True on the target to give cargo its crates")
    reg = registry_dir(ctx)
    if deps == "registry" and reg is not None and str(reg) == DEBIAN_REGISTRY:
        return (f"\nhint: Debian packages the crate {name} as "
                f"librust-{name.replace('_', '-').lower()}-dev")
    return ""


def run_tool(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              errors="replace")
    except OSError as exc:
        raise UserError(f"cannot run {argv[0]}: {exc}") from None


def _check_target(ctx: StageContext, cargo: str, manifest: Path, env: dict[str, str],
                  source: list[str]) -> None:
    """The named bin / a cdylib lib must exist: say so plainly instead of cargo's hint."""
    p = ctx.params
    proc = run_tool([cargo, "metadata", "--offline", "--no-deps", "--format-version", "1",
                     "--manifest-path", str(manifest), *source], manifest.parent, env)
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
    stage_copy(ctx.inputs, crate_src, staged)
    target = work / f"target-{p.get('toolchain_id', 'default')}"
    source_dir = _source_dir(ctx, staged)
    source = _source_args(source_dir)
    cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    # rustc applies the last matching remap: most specific last.
    remaps = [(str(ctx.root), "."), (cargo_home, "/cargo-home"),
              (str(target), "/cargo-target"), (str(staged), p["crate"] or ".")]
    registry = registry_dir(ctx)
    if registry is not None:
        remaps.insert(1, (str(registry), "/cargo-registry"))
    _write_wrapper(work / "rustc-remap", remaps)
    env = _env(ctx, work, target, cargo)
    _drop_stale_target(ctx, target)
    manifest = staged / p["manifest"]
    _check_target(ctx, cargo, manifest, env, source)

    argv = [cargo, "build", "--offline", "--manifest-path", str(manifest),
            "--message-format=json-render-diagnostics", "--profile", p["profile"], *source]
    if p["locked"]:
        argv.append("--locked")
    if not p["default_features"]:
        argv.append("--no-default-features")
    if p["features"]:
        argv += ["--features", ",".join(p["features"])]
    argv += ["--bin", p["target_name"]] if p["kind"] == "bin" else ["--lib"]
    proc = run_tool(argv, staged, env)
    if proc.returncode != 0:
        text = proc.stderr or proc.stdout
        raise UserError(f"{ctx.label}: cargo build failed (exit {proc.returncode}):\n"
                        f"{trim_tool_output(text)}{_hint(text, ctx)}")
    dep_files = dependency_files(proc.stdout, staged, crate_src)
    _record_deps(ctx, target, dep_files)
    # crates read from outside the workspace (a registry) are inputs found while running
    inside = os.path.join(str(ctx.root), "")
    ctx.add_inputs(f for f in dep_files if not f.startswith(inside))
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


def _messages(stdout: str):
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def dependency_files(stdout: str, staged: Path, crate_src: Path) -> list[str]:
    """Every file of every non-path package the build used (cargo reports each package it
    compiled or found fresh, with its manifest path); vendored ones by their path in the
    workspace, not in the staged copy."""
    crates: set[Path] = set()
    for msg in _messages(stdout):
        manifest, package = msg.get("manifest_path"), msg.get("package_id", "")
        if msg.get("reason") != "compiler-artifact" or not manifest or "path+file:" in package:
            continue
        crate = Path(manifest).parent
        if staged in crate.parents:
            crate = crate_src / crate.relative_to(staged)
        crates.add(crate)
    files: list[str] = []
    for crate in sorted(crates):
        for dirpath, dirnames, filenames in os.walk(crate):
            dirnames.sort()
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return files


_DEPS_RECORD = "occlum-rules-deps.json"


def _files_digest(ctx: StageContext, files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(f"{f}\0{ctx.digests.digest(f)}\n".encode())
        except OSError:
            return "missing"
    return h.hexdigest()


def _drop_stale_target(ctx: StageContext, target: Path) -> None:
    """cargo never recompiles a registry or vendored crate whose version is unchanged (it
    takes them to be immutable), so a dependency whose files changed under the same version
    would be linked from the old objects. The target directory records what the last build's
    dependencies held; if any differ now, it starts over."""
    try:
        record = json.loads((target / _DEPS_RECORD).read_text())
    except (OSError, ValueError):
        return
    if _files_digest(ctx, record.get("files", [])) != record.get("digest"):
        ctx.log("dependency crates changed under the same versions: rebuilding them")
        shutil.rmtree(target, ignore_errors=True)


def _record_deps(ctx: StageContext, target: Path, files: list[str]) -> None:
    data = {"files": files, "digest": _files_digest(ctx, files)}
    (target / _DEPS_RECORD).write_text(json.dumps(data))


def _artifact(stdout: str, kind: str, name: str, manifest: Path) -> Path | None:
    found: Path | None = None
    for msg in _messages(stdout):
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
