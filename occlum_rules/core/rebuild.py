"""Rebuild a release package in a fresh copy of its workspace and compare the bytes.

The copy is what a fresh checkout would hold: the workspace without its output directory,
an in-tree cache and ``.git`` (``.git`` is kept when source_date_epoch is 'git'). The
package target is built there with ``doit`` under an empty cache, no remote cache and the
manifest's SOURCE_DATE_EPOCH. The signing key must be reachable from the copy (inside the
workspace, or an absolute path).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from occlum_rules.core.labels import parse_label
from occlum_rules.core.workspace import Workspace
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool, trim_output
from occlum_rules.stages.verify_package import (
    PackageComparison,
    compare_packages,
    default_manifest,
    load_manifest,
)


@dataclass(frozen=True)
class RebuildResult:
    label: str
    original: Path  # the package compared against
    rebuilt: Path  # the package built in the copy (gone unless kept)
    comparison: PackageComparison
    kept: Path | None  # the rebuild directory, when asked to keep it


def copy_sources(ws: Workspace, dest: Path) -> None:
    """The workspace as a fresh checkout would have it: no outputs, caches or VCS data."""
    root = ws.root
    skip = {ws.out.resolve()}
    cache = ws.cache_dir()
    if cache.is_relative_to(root) and cache != root:
        skip.add(cache)
    keep_git = ws.source_date_epoch_policy == "git"

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        skipped = {n for n in names if n in ("__pycache__", ".pytest_cache")
                   or (here / n).resolve() in skip}
        if here == root and not keep_git and ".git" in names:
            skipped.add(".git")
        return skipped

    shutil.copytree(root, dest, symlinks=True, ignore=ignore)


def _no_log(message: str) -> None:
    pass


def rebuild_package(target: str | None, package: Path | None, *, keep: bool = False,
                    workspace: Path | None = None,
                    log: Callable[[str], None] = _no_log) -> RebuildResult:
    """Rebuild ``target`` (a label), or the target named by ``package``'s manifest, and
    compare it with ``package`` (or the workspace's own built package for a label).

    ``log`` hears what is being done (the rebuild directory, and whether it was kept).
    """
    from occlum_rules.core.doit_bridge import load_graph

    manifest = None
    if package is not None:
        manifest = load_manifest(default_manifest(package))
        target = manifest.get("label")
        if not target:
            raise UserError(f"{package}: its manifest names no target to rebuild")
    label = parse_label(target or "")
    ws, graph = load_graph(workspace or Path.cwd())
    found = graph.targets.get(label)
    providers = (found.providers if found is not None else None) or {}
    if "package" not in providers:
        raise UserError(f"{label} is not an occlum_package target of the workspace at {ws.root}")
    rel = providers["package"]["tarball"].path
    original = package or ws.root / rel
    if not original.is_file():
        raise UserError(f"{original}: not built yet; run `doit {label}` first")
    if manifest is None:
        manifest = load_manifest(default_manifest(original))
    tmp = Path(tempfile.mkdtemp(prefix="occlum-rules-verify-"))
    try:
        checkout = tmp / "checkout"
        copy_sources(ws, checkout)
        env = dict(os.environ)
        env.update({"OCCLUM_RULES_CACHE": str(tmp / "cache"), "OCCLUM_RULES_REMOTE_CACHE": "off",
                    "SOURCE_DATE_EPOCH": str(manifest["package"].get("source_date_epoch", 0))})
        env.pop("OCCLUM_RULES_RUN_ID", None)
        log(f"rebuilding {label} from a copy of {ws.root} in {checkout} (empty cache)")
        # doit reports a failing task on stdout and progress on stderr: quote the end of both
        proc = run_tool([sys.executable, "-m", "doit", str(label)], f"rebuilding {label}",
                        cwd=checkout, env=env, check=False)
        rebuilt = checkout / rel
        if proc.returncode != 0 or not rebuilt.is_file():
            tail = trim_output(proc.stdout + proc.stderr, lines=15, tail=True)
            raise UserError(f"rebuilding {label} failed:\n{tail}")
        rebuilt_manifest = load_manifest(default_manifest(rebuilt))
        comparison = compare_packages(original, rebuilt, manifest, rebuilt_manifest)
        return RebuildResult(str(label), original, rebuilt, comparison, tmp if keep else None)
    finally:
        if keep:
            log(f"kept the rebuild in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
