"""``occlum-rules copy-bom``: a drop-in for Occlum's ``copy_bom``, without rsync.

Same flags and exit statuses as copy_bom (see docs); the operations are planned completely
(hash checks, dependency discovery, path checks) before the image is touched, and only files
whose bytes differ are rewritten.
"""

from __future__ import annotations

import argparse
import os
import sys

from occlum_rules.stages.bom import apply_plan, plan_bom

_LEVELS = {"off": 0, "error": 1, "warn": 2, "warning": 2, "info": 3, "debug": 4, "trace": 5}


def _level() -> int:
    raw = os.environ.get("OCCLUM_LOG_LEVEL", "warn").strip().lower()
    return _LEVELS.get(raw, 2)


def _log(level: str, message: str) -> None:
    if _LEVELS[level.lower()] <= _level():
        print(f"[{level:<5} copy_bom] {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="occlum-rules copy-bom",
        description="Assemble an Occlum image directory from a BOM file (drop-in for copy_bom). "
        "Log verbosity follows OCCLUM_LOG_LEVEL (error, warn [default], info, debug).",
    )
    p.add_argument("-f", "--file", required=True, metavar="BOM", help="the top BOM file")
    p.add_argument("--root", required=True, metavar="DIR", help="the image directory to fill")
    p.add_argument("-i", "--include-dir", dest="include_dirs", action="extend", nargs="+",
                   default=[], metavar="DIR",
                   help="where to look for included BOM files (repeatable; several values allowed)")
    p.add_argument("--dry-run", action="store_true", help="plan and log, change nothing")
    p.add_argument("--loader-config", metavar="FILE",
                   help="ELF loader config (default: $OCCLUM_HOME or /opt/occlum "
                   "etc/template/occlum_elf_loader.config, else Occlum's built-in default)")
    p.add_argument("--sync", action="store_true",
                   help="also delete files in the image that the BOM no longer produces")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    root = args.root
    if not args.sync and os.path.isdir(root) and os.listdir(root):
        print(f"WARNING: {root} is not an empty directory before running copy_bom.")
    plan = plan_bom(args.file, args.include_dirs, args.loader_config, root=root)
    for w in plan.warnings:
        _log("WARN", w)
    for line in plan.log_lines():
        _log("INFO", line)
    if args.dry_run:
        _log("INFO", f"dry run: {len(plan.ops)} operations planned, nothing written")
        return 0
    result = apply_plan(plan, root, sync=args.sync)
    for path in result.written:
        _log("DEBUG", f"wrote {path}")
    for path in result.removed:
        _log("INFO", f"rm -rf {os.path.join(root, path)}")
    _log("INFO", f"image {root}: {len(result.written)} written, {len(result.unchanged)} unchanged, "
         f"{len(result.removed)} removed")
    return 0
