"""Write the files of an Occlum instance that are not packed, signed or generated: the
initfs tree ``occlum init`` + ``occlum build`` make, and the instance's links, copies and
status files.

What goes where is planned elsewhere (stages/instance_layout.py, from the rule); this module
only carries a plan out, the way the shell recipes in occlum_build.mk do: copies keep their
source's mode less the umask (a plain ``cp``), links are made as given, text files appear
whole (atomic write).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import write_atomic
from occlum_rules.stages.instance_layout import cp_mode


def copy_like_cp(src: Path, dst: Path, mode: int | None = None) -> None:
    """Copy like a plain ``cp`` under umask 022 (the source's mode less 022) unless ``mode``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode if mode is not None else cp_mode(os.stat(src).st_mode))


def image_config_json(encrypted: bool) -> bytes:
    """What ``jq -n '{image_type: ...}'`` prints in occlum_build.mk."""
    kind = "encrypted" if encrypted else "integrity-only"
    return f'{{\n  "image_type": "{kind}"\n}}\n'.encode()


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if os.path.isabs(path) else root / path


def assemble_initfs(root: Path, initfs: Path, image_config: Path, entries: list[dict[str, Any]],
                    *, encrypted: bool, init_ra_conf: str | None = None,
                    image_key: Path | None = None) -> list[Path]:
    """Lay out ``initfs`` from a plan (stages.instance_layout.initfs_plan's entries, as dicts)
    plus what occlum_build.mk adds at build time; return the host files read (outside the
    workspace: the caller declares them as discovered inputs)."""
    host_files: list[Path] = []
    for e in entries:
        dest = initfs / e["path"]
        if e["kind"] == "dir":
            dest.mkdir(parents=True, exist_ok=True)
        elif e["kind"] == "text":
            write_atomic(dest, e["text"].encode(), mode=0o644)
        elif e["kind"] == "symlink":
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e["target"], dest)
        elif e["src"] is not None and (not e["optional"] or os.path.exists(e["src"])):
            real = _resolve(root, e["src"]).resolve()  # cp follows links: the target's bytes
            copy_like_cp(real, dest)
            if os.path.isabs(e["src"]):
                host_files.append(real)
    config = image_config_json(encrypted)
    write_atomic(image_config, config, mode=0o644)
    write_atomic(initfs / "etc" / "image_config.json", config, mode=0o644)
    if init_ra_conf:
        copy_like_cp(_resolve(root, init_ra_conf), initfs / "etc" / "init_ra_conf.json")
    if image_key is not None:
        copy_like_cp(image_key, initfs / "etc" / "image_key", 0o600)
    return host_files


def write_layout(root: Path, instance: Path, entries: dict[str, dict[str, Any]],
                 paths: dict[str, Path]) -> None:
    """Links, copies and status files that make a directory an Occlum instance.

    ``entries`` maps a name to its spec (``kind``: "symlink" with ``target``, "copy" with
    ``src`` and optional ``mode``, else "text" with ``text``); ``paths`` maps the name to
    where it goes. ``run/`` (the application's persistent data) is created when missing and
    never removed: ``occlum build`` wipes it on every build, which loses data.
    """
    for name, spec in entries.items():
        path = paths[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec["kind"] == "symlink":
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(spec["target"], path)
        elif spec["kind"] == "copy":
            copy_like_cp(_resolve(root, spec["src"]), path, spec.get("mode"))
        else:
            write_atomic(path, spec["text"].encode(), mode=0o644)
    for d in ("run/mount/__ROOT", "run/initfs/__ROOT"):
        (instance / d).mkdir(parents=True, exist_ok=True)
