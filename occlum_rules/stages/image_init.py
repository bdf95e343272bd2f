"""image/ as ``occlum init`` leaves it, as the starting tree copy_bom's operations run on.

``occlum init`` fills image/ first (directories, etc/hosts, etc/localtime, the musl runtime,
Occlum's glibc) and the user's ``copy_bom`` runs afterwards over that image. The plan of
:func:`occlum_rules.stages.instance_layout.image_init_plan` is turned into the BOM
planner's model with every node marked as already there (``EXISTING``): the BOM's copies,
automatic library copies included, replace them, as a later ``cp``/rsync would.

Copies are made as ``cp`` makes them: links followed, mode = the source's less umask 022.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import write_atomic
from occlum_rules.errors import UserError
from occlum_rules.stages.bom.vtree import EXISTING, VFile, VTree
from occlum_rules.stages.instance_layout import cp_mode


def _text_file(text: str, text_dir: Path) -> str:
    """A file holding ``text`` (the planner copies files, so texts get one of their own)."""
    data = text.encode()
    path = text_dir / f"text-{hashlib.sha256(data).hexdigest()[:16]}"
    if not path.is_file() or path.read_bytes() != data:
        write_atomic(path, data)
    return str(path)


def init_tree(entries: list[dict[str, Any]], text_dir: Path) -> tuple[VTree, list[str]]:
    """The image tree ``entries`` describe, and the host files it copies (action inputs).

    ``entries`` are :class:`InitfsEntry` fields as dicts (as the rule passes them);
    ``text_dir`` is where text entries (etc/hosts) get their source file.
    """
    tree = VTree()
    tree.root.origin = EXISTING
    inputs: list[str] = []
    for e in entries:
        kind, path = e["kind"], e["path"]
        if kind == "dir":
            tree.mkdir_p(path, EXISTING)
        elif kind == "symlink":
            tree.symlink(path, e["target"], EXISTING)
        elif kind == "text":
            node = VFile(_text_file(e["text"], text_dir), 0o644, EXISTING)
            tree.copy_file(path, path.rsplit("/", 1)[-1], node, f"occlum init: {path}")
        else:
            src = e.get("src")
            if src is None or not os.path.exists(src):
                if e.get("optional"):
                    continue
                raise UserError(f"occlum init puts {e.get('part') or src} at image/{path}, and "
                                f"{src or 'its source'} does not exist")
            real = os.path.realpath(src)  # cp follows links: the target's bytes and mode
            node = VFile(real, cp_mode(os.stat(real).st_mode), EXISTING)
            tree.copy_file(path, path.rsplit("/", 1)[-1], node, f"occlum init: {path}")
            inputs.append(real)
    return tree, inputs
