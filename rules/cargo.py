"""Rust rules: ``cargo_binary`` and ``cargo_cdylib``.

Cargo already knows how to build a crate, so a target is one action that runs it. What the
rule adds is what cargo does not promise: the action's inputs are every file of the crate
(found at analysis time, so a new source file changes the key without anyone listing it),
its key holds cargo's *and* rustc's fingerprints, and the stage builds offline, with paths
remapped, and checks the result is something Occlum can load.

crates.io dependencies come from one of three places, all read offline by the build: a
vendored directory inside the crate (an input like any source file), a directory registry
such as Debian's (its crates become discovered inputs when the build reads them), or a fetch
action keyed by Cargo.lock, the only action that touches the network.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from occlum_rules.core.rule import (
    BOOL,
    SOURCE,
    STRING,
    STRING_LIST,
    Attr,
    File,
    Rule,
    RuleContext,
)
from occlum_rules.errors import UserError

COMMON_ATTRS = {
    "manifest": Attr(SOURCE, default="Cargo.toml",
                     doc="the crate's Cargo.toml (relative to the package); its directory is "
                         "the crate, and every file under it except target/ is an input"),
    "features": Attr(STRING_LIST, default=list, doc="cargo features to enable"),
    "default_features": Attr(BOOL, default=True, doc="False passes --no-default-features"),
    "profile": Attr(STRING, default="release", doc="cargo profile (release, dev, or a custom one)"),
    "vendor": Attr(STRING, default=None,
                   doc="a `cargo vendor` directory inside the crate (relative to the package) "
                       "that crates.io dependencies are built from; not needed when the "
                       "crate's own .cargo/config.toml already points at it"),
    "registry": Attr(STRING, default=None,
                     doc="a directory registry to build crates.io dependencies from, e.g. "
                         "Debian's /usr/share/cargo/registry (absolute, or relative to the "
                         "workspace root); default: WORKSPACE.yaml cargo.registry"),
    "fetch": Attr(BOOL, default=False,
                  doc="download the crates Cargo.lock names in a separate fetch action (the "
                      "only one with network access; its result is cached by the lock "
                      "file's content), then build offline from them"),
}


def _manifest(ctx: RuleContext) -> tuple[File, dict[str, Any]]:
    manifest = ctx.attr["manifest"]
    if not isinstance(manifest, File) or manifest.is_dir:
        raise ctx.error("manifest: must be a Cargo.toml file in the package, e.g. 'Cargo.toml'")
    if os.path.basename(manifest.path) != "Cargo.toml":
        raise ctx.error(f"manifest: expected a file named Cargo.toml, got '{manifest.path}'")
    return manifest, ctx.fs.toml(manifest.path)


def _package_name(ctx: RuleContext, data: dict[str, Any], manifest: File) -> str:
    name = (data.get("package") or {}).get("name")
    if not isinstance(name, str):
        raise UserError("[package] name is missing (cargo_binary/cargo_cdylib build one "
                        "package; point manifest at the package's Cargo.toml)", where=manifest.path)
    return name


def _toolchain(ctx: RuleContext, crate_dir: str) -> tuple[list[str], dict[str, Any]]:
    """(fingerprints, params) — a missing cargo fails the action, not the whole analysis,
    so the rest of the workspace still builds on a machine without Rust."""
    try:
        tc = ctx.toolchains.cargo(ctx.workspace.root / crate_dir)
    except UserError as exc:
        return ["cargo:missing"], {"missing": exc.message}
    # one target directory per toolchain: cargo versions must not share one
    toolchain_id = hashlib.sha256(tc.fingerprint.encode()).hexdigest()[:12]
    return [tc.fingerprint], {"cargo": tc.run_cargo, "tool_env": tc.env(),
                              "tool_name": tc.cargo.name, "toolchain_id": toolchain_id}


def _crate_path(crate_dir: str, name: str) -> str:
    return f"{crate_dir}/{name}" if crate_dir else name


def _dependency_source(ctx: RuleContext, crate_dir: str, inputs: list[File],
                       tool_params: dict[str, Any]) -> tuple[dict[str, Any], list[File]]:
    """(params, extra inputs) saying where cargo finds crates.io dependencies.

    Only the rule's attributes, WORKSPACE.yaml and the crate's already-listed files are
    consulted: nothing here reads the file system."""
    paths = {f.path for f in inputs}
    vendor, registry, fetch = ctx.attr["vendor"], ctx.attr["registry"], ctx.attr["fetch"]
    chosen = [n for n, v in (("vendor", vendor), ("registry", registry), ("fetch", fetch)) if v]
    if len(chosen) > 1:
        raise ctx.error(f"{' and '.join(chosen)}: set only one of vendor, registry and fetch "
                        "(each is a complete source of the crate's dependencies)")
    own_config = any(_crate_path(crate_dir, f".cargo/{n}") in paths
                     for n in ("config.toml", "config"))
    if vendor:
        return _vendor_params(ctx, crate_dir, vendor, paths), []
    if fetch:
        return _fetch_action(ctx, crate_dir, inputs, paths, tool_params)
    if not registry and not own_config:
        registry = ctx.workspace.cargo.get("registry")
    if registry:
        return {"deps": "registry", "registry": os.path.normpath(registry)}, []
    return {}, []


def _vendor_params(ctx: RuleContext, crate_dir: str, vendor: str,
                   paths: set[str]) -> dict[str, Any]:
    package = ctx.label.package
    where = os.path.normpath(os.path.join(package, vendor)) if package else \
        os.path.normpath(vendor)
    inside = os.path.relpath(where, crate_dir or ".")
    if os.path.isabs(vendor) or inside == "." or inside.startswith(".."):
        raise ctx.error(f"vendor: '{vendor}' must be a directory inside the crate "
                        f"({crate_dir or '.'}), as `cargo vendor` makes it")
    if not any(p.startswith(where + "/") for p in paths):
        raise ctx.error(f"vendor: no files under {where} (run `cargo vendor` in "
                        f"{crate_dir or '.'} first)")
    return {"deps": "vendor", "vendor": inside}


def _fetch_action(ctx: RuleContext, crate_dir: str, inputs: list[File], paths: set[str],
                  tool_params: dict[str, Any]) -> tuple[dict[str, Any], list[File]]:
    lock = _crate_path(crate_dir, "Cargo.lock")
    if lock not in paths:
        raise ctx.error(f"fetch: {lock} is missing; fetching is keyed by the lock file "
                        "(run `cargo generate-lockfile` and commit it)")
    config = _crate_path(crate_dir, ".cargo/")
    fetch_inputs = [f for f in inputs
                    if f.path in (_crate_path(crate_dir, "Cargo.toml"), lock)
                    or f.path.startswith(config)]
    crates = ctx.declare_file("crates", action="cargo-fetch", is_dir=True, private=True)
    # no toolchain fingerprint: the result is checked against the lock file's sha256s,
    # whichever cargo downloaded it
    params = {"crate": crate_dir, "manifest": "Cargo.toml"}
    params.update({k: v for k, v in tool_params.items()
                   if k in ("cargo", "tool_env", "missing")})
    ctx.actions.stage(name="cargo-fetch", kind="cargo.fetch",
                      func="occlum_rules.actions.cargo:fetch",
                      inputs=fetch_inputs, outputs=[crates], params=params,
                      description=f"cargo fetch ({lock})")
    return {"deps": "fetch", "fetched": crates.path}, [crates]


def _cargo_action(ctx: RuleContext, kind: str, target_name: str, output: File) -> str:
    """Declare the cargo build; return how it builds, for messages ('cargo, host toolchain')."""
    manifest = ctx.attr["manifest"]
    crate_dir = os.path.dirname(manifest.path)
    inputs = ctx.fs.tree(crate_dir, skip={"target"})
    fingerprints, tool_params = _toolchain(ctx, crate_dir)
    locked = _crate_path(crate_dir, "Cargo.lock") in {f.path for f in inputs}
    dep_params, dep_inputs = _dependency_source(ctx, crate_dir, inputs, tool_params)
    params = {
        "crate": crate_dir, "manifest": os.path.basename(manifest.path), "kind": kind,
        "target_name": target_name, "features": sorted(set(ctx.attr["features"])),
        "default_features": ctx.attr["default_features"], "profile": ctx.attr["profile"],
        "locked": locked, **tool_params, **dep_params,
    }
    ctx.actions.stage(name="cargo-build", kind=f"cargo.{kind}",
                      func="occlum_rules.actions.cargo:build",
                      inputs=inputs + dep_inputs, outputs=[output], params=params,
                      toolchains=fingerprints,
                      description=f"cargo build {kind} {target_name} ({crate_dir or '.'})")
    name = tool_params.get("tool_name", "cargo")
    return name if name.startswith("occlum") else f"{name}, host toolchain"


def cargo_binary_impl(ctx: RuleContext) -> dict[str, Any]:
    manifest, data = _manifest(ctx)
    bin_name = ctx.attr["bin"]
    if not bin_name:
        bins = [b.get("name") for b in data.get("bin") or [] if isinstance(b, dict)]
        bin_name = bins[0] if len(bins) == 1 and isinstance(bins[0], str) else \
            _package_name(ctx, data, manifest)
    if "/" in bin_name or bin_name in (".", ".."):
        raise ctx.error(f"bin: {bin_name!r} is not a binary target name")
    binary = ctx.declare_file(bin_name, action="cargo-build")
    how = _cargo_action(ctx, "bin", bin_name, binary)
    return {"files": [binary], "executable": binary, "toolchain": how}


def cargo_cdylib_impl(ctx: RuleContext) -> dict[str, Any]:
    manifest, data = _manifest(ctx)
    lib_name = (data.get("lib") or {}).get("name") or _package_name(ctx, data, manifest)
    lib_name = str(lib_name).replace("-", "_")
    library = ctx.declare_file(f"lib{lib_name}.so", action="cargo-build")
    how = _cargo_action(ctx, "cdylib", lib_name, library)
    return {"files": [library], "shared_library": library, "toolchain": how}


cargo_binary = Rule(
    name="cargo_binary",
    attrs={**COMMON_ATTRS,
           "bin": Attr(STRING, default=None,
                       doc="the [[bin]] to build (default: the only [[bin]], else the package name)")},
    impl=cargo_binary_impl,
    doc="A Rust executable built by cargo (occlum-cargo when the Occlum toolchain has it); "
        "must come out position-independent.",
)

cargo_cdylib = Rule(
    name="cargo_cdylib",
    attrs=dict(COMMON_ATTRS),
    impl=cargo_cdylib_impl,
    doc="A Rust shared library (crate-type cdylib) for the image, e.g. one a C program dlopens.",
)

RULES = [cargo_binary, cargo_cdylib]
