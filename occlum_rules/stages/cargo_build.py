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

import json
import os
import shlex
import shutil
from pathlib import Path

from occlum_rules.atomic_write import write_atomic
from occlum_rules.process import deterministic_env

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


# The name of the directory source crates.io is replaced with (see source_args).


SOURCE_NAME = "occlum-rules-deps"


DEBIAN_REGISTRY = "/usr/share/cargo/registry"


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


def write_wrapper(path: Path, remaps: list[tuple[str, str]]) -> None:
    flags = " ".join(shlex.quote(f"--remap-path-prefix={a}={b}") for a, b in remaps)
    text = f'#!/bin/sh\n# written by occlum-rules: remap build paths for every crate\nexec "$@" {flags}\n'
    if path.exists() and path.read_text() == text:
        return
    write_atomic(path, text.encode(), mode=0o755)


def base_env(cargo: str, tool_env: dict[str, str]) -> dict[str, str]:
    """What every cargo run gets: the user's homes, the toolchain first on PATH, C locale."""
    return deterministic_env(None, prepend_path=[os.path.dirname(cargo)], home=False,
                             passthrough=_PASS_ENV,
                             extra={"CARGO_TERM_COLOR": "never", **tool_env})


def source_args(source: Path | None) -> list[str]:
    """cargo --config arguments replacing crates.io with ``source`` (TOML strings in JSON
    quoting, which TOML basic strings accept)."""
    if source is None:
        return []
    return ["--config", f"source.crates-io.replace-with={json.dumps(SOURCE_NAME)}",
            "--config", f"source.{SOURCE_NAME}.directory={json.dumps(str(source))}"]


def messages(stdout: str):
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
    for msg in messages(stdout):
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


def find_artifact(stdout: str, kind: str, name: str, manifest: Path) -> Path | None:
    found: Path | None = None
    for msg in messages(stdout):
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
