"""The cargo actions: build one target, fetch a lock file's crates.

These adapters read the action's context (parameters, inputs, the private state directory
the engine gives each target for its cargo target dir) and call the pure helpers in
``stages/cargo_build.py`` and ``stages/cargo_fetch.py``, whose docstrings say why the build
works the way it does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from occlum_rules.core.action import StageContext
from occlum_rules.core.digests import sha256_file
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool
from occlum_rules.stages.cargo_build import (
    DEBIAN_REGISTRY,
    base_env,
    dependency_files,
    find_artifact,
    source_args,
    stage_copy,
    trim_tool_output,
    write_wrapper,
)
from occlum_rules.stages.cargo_fetch import (
    SHA256_HEX,
    checksum_json,
    downloaded_crates,
    lock_packages,
    private_home,
    unpack_crate,
)
from occlum_rules.stages.elfcheck import pie_kind
from occlum_rules.state_file import Missing, read_state, write_state


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
        if path is None or not path.is_dir():
            hint = (" (Debian's librust-*-dev packages install crates there, e.g. "
                    "`apt-get install librust-serde-dev`)"
                    if str(path) == DEBIAN_REGISTRY else "")
            raise UserError(f"{ctx.label}: registry: {path} is not a directory{hint}")
        return path
    if deps == "fetch":
        return ctx.root / p["fetched"]
    return None


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


def _check_target(ctx: StageContext, cargo: str, manifest: Path, env: dict[str, str],
                  source: list[str]) -> None:
    """The named bin / a cdylib lib must exist: say so plainly instead of cargo's hint."""
    p = ctx.params
    proc = run_tool([cargo, "metadata", "--offline", "--no-deps", "--format-version", "1",
                     "--manifest-path", str(manifest), *source], f"{ctx.label}: cargo metadata",
                    cwd=manifest.parent, env=env, check=False)
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
    work = ctx.state_dir  # private to this target, kept between builds
    staged = work / "src"
    work.mkdir(parents=True, exist_ok=True)
    stage_copy(ctx.inputs, crate_src, staged)
    target = work / f"target-{p.get('toolchain_id', 'default')}"
    source_dir = _source_dir(ctx, staged)
    source = source_args(source_dir)
    cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    # rustc applies the last matching remap: most specific last.
    remaps = [(str(ctx.root), "."), (cargo_home, "/cargo-home"),
              (str(target), "/cargo-target"), (str(staged), p["crate"] or ".")]
    registry = registry_dir(ctx)
    if registry is not None:
        remaps.insert(1, (str(registry), "/cargo-registry"))
    write_wrapper(work / "rustc-remap", remaps)
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
    proc = run_tool(argv, f"{ctx.label}: cargo build", cwd=staged, env=env, check=False)
    if proc.returncode != 0:
        text = proc.stderr or proc.stdout
        raise UserError(f"{ctx.label}: cargo build failed (exit {proc.returncode}):\n"
                        f"{trim_tool_output(text)}{_hint(text, ctx)}")
    dep_files = dependency_files(proc.stdout, staged, crate_src)
    _record_deps(ctx, target, dep_files)
    # crates read from outside the workspace (a registry) are inputs found while running
    inside = os.path.join(str(ctx.root), "")
    ctx.add_inputs(f for f in dep_files if not f.startswith(inside))
    artifact = find_artifact(proc.stdout, p["kind"], p["target_name"], manifest)
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


# The target directory's record of what the last build's dependency crates held, in the
# shared state framing.
_DEPS_RECORD = "deps.state"
_DEPS_KIND, _DEPS_VERSION = "cargo-deps", 1


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
    payload = read_state(target / _DEPS_RECORD, _DEPS_KIND, _DEPS_VERSION)
    if isinstance(payload, Missing):
        return
    try:
        record = json.loads(bytes(payload))
    except ValueError:
        return
    if _files_digest(ctx, record.get("files", [])) != record.get("digest"):
        ctx.log("dependency crates changed under the same versions: rebuilding them")
        shutil.rmtree(target, ignore_errors=True)


def _record_deps(ctx: StageContext, target: Path, files: list[str]) -> None:
    data = {"files": files, "digest": _files_digest(ctx, files)}
    write_state(target / _DEPS_RECORD, _DEPS_KIND, _DEPS_VERSION, json.dumps(data).encode())


def fetch(ctx: StageContext) -> None:
    p = ctx.params
    if "missing" in p:
        raise UserError(f"{ctx.label}: {p['missing']}")
    crate_src = ctx.root / p["crate"] if p["crate"] else ctx.root
    work = ctx.state_dir
    staged = work / "crate"
    stage_copy(ctx.inputs, crate_src, staged)
    if not any((staged / "src" / n).exists() for n in ("lib.rs", "main.rs")):
        # cargo loads the manifest before fetching and wants a target; nothing is compiled
        (staged / "src").mkdir(exist_ok=True)
        (staged / "src" / "lib.rs").write_text("")
    home = private_home(work)
    env = base_env(p["cargo"], p.get("tool_env", {}))
    env["CARGO_HOME"] = str(home)
    manifest = staged / p["manifest"]
    proc = run_tool([p["cargo"], "fetch", "--locked", "--manifest-path", str(manifest)],
                    f"{ctx.label}: cargo fetch", cwd=staged, env=env, check=False)
    if proc.returncode != 0:
        raise UserError(f"{ctx.label}: cargo fetch failed (exit {proc.returncode}):\n"
                        f"{trim_tool_output(proc.stderr or proc.stdout)}")
    lock = staged / "Cargo.lock"
    downloaded = downloaded_crates(home)
    out = ctx.outputs[0]
    out.mkdir(parents=True, exist_ok=True)
    where = f"{p['crate'] or '.'}/Cargo.lock"
    for pkg in lock_packages(lock.read_text(errors="replace")):
        source = pkg.get("source")
        if source is None:
            continue  # the crate itself, or a path dependency: not downloaded
        name, version = pkg.get("name", "?"), pkg.get("version", "?")
        if not source.startswith(("registry+", "sparse+")):
            raise UserError(f"{ctx.label}: {where}: {name} {version} comes from {source}; "
                            "fetch = True takes registry crates only (vendor git "
                            "dependencies with `cargo vendor` and set vendor = ...)")
        checksum = pkg.get("checksum", "")
        if not SHA256_HEX.match(checksum):
            raise UserError(f"{ctx.label}: {where}: {name} {version} has no sha256 checksum "
                            f"(got {checksum!r}), so a download cannot be checked")
        crate = next((c for c in downloaded.get(f"{name}-{version}.crate", [])
                      if sha256_file(c) == checksum), None)
        if crate is None:
            raise UserError(f"{ctx.label}: cargo fetch left no {name}-{version}.crate with "
                            f"the sha256 {where} pins ({checksum[:12]}…)")
        dest = out / f"{name}-{version}"
        files = unpack_crate(crate.read_bytes(), name, version, dest)
        (dest / ".cargo-checksum.json").write_bytes(checksum_json(files, checksum))
        (dest / ".cargo-checksum.json").chmod(0o644)
