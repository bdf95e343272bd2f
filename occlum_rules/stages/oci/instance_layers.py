"""The instance inside the image: what ``occlum package`` takes, split into layers that
change at different rates.

Each layer is made from its own group of instance-relative patterns (``build/mount``,
``build/lib/libocclum-pal*``, ``run`` for the empty run/ skeleton), so a layer's action
needs only its own part of the instance to exist and to be unchanged. The image action then
checks that the layers together hold exactly the package's members
(:func:`select_members`: Occlum.json, build/bin, the signed LibOS, the PAL and its links,
both SEFS images, the protected config, initfs/, the status files and the run/ skeleton), so
no split can lose or duplicate a file.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import replace
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.oci.layer import container_dir, with_parents
from occlum_rules.stages.package import RUN_SKELETON, select_members, walk_members
from occlum_rules.stages.package_stream import Member


def _pattern_members(instance_dir: Path, pattern: str) -> list[Member]:
    if pattern == "run":  # never the application's data found there: the skeleton
        return [Member(name, "dir", 0o755) for name in RUN_SKELETON]
    parent, _, leaf = pattern.rpartition("/")
    if any(c in leaf for c in "*?["):
        try:
            names = sorted(n for n in os.listdir(instance_dir / parent)
                           if fnmatch.fnmatchcase(n, leaf))
        except OSError:
            names = []
        if not names:
            raise UserError(f"{instance_dir / parent}: no {leaf}; is this a built Occlum "
                            "instance?")
    else:
        names = [leaf]
    members: list[Member] = []
    for name in names:
        rel = posixpath.join(parent, name)
        if not os.path.lexists(instance_dir / rel):
            raise UserError(f"{instance_dir / rel} is missing; is this a built Occlum instance?")
        members.extend(walk_members(instance_dir, rel))
    return members


def group_members(instance_dir: Path, patterns: list[str], instance_path: str) -> list[Member]:
    """The members one group's patterns name, under ``instance_path`` in the container."""
    base = container_dir(instance_path, "instance_dir")
    chosen = [replace(m, name=f"{base}/{m.name}" if base else m.name)
              for pattern in patterns for m in _pattern_members(instance_dir, pattern)]
    return with_parents(chosen)


def check_complete(instance_dir: Path, sgx_mode: str, instance_path: str,
                   layer_entries: list[list[list]]) -> None:
    """The instance layers hold exactly the package's members (parents aside), each once."""
    base = container_dir(instance_path, "instance_dir")
    expected = {m.name for m in select_members(instance_dir, sgx_mode)}
    parents = {posixpath.dirname(n) for n in expected} | {""}
    while True:
        more = {posixpath.dirname(p) for p in parents} - parents
        if not more:
            break
        parents |= more
    seen: dict[str, int] = {}
    for entries in layer_entries:
        for path, kind, _mode, _target in entries:
            if path == base or not path.startswith(base + "/" if base else ""):
                continue
            rel = path[len(base) + 1:] if base else path
            if rel in parents and rel not in expected and kind == "dir":
                continue
            seen[rel] = seen.get(rel, 0) + 1
    problems = [f"{n} is in no layer" for n in sorted(expected - seen.keys())]
    problems += [f"{n} is not part of the package" for n in sorted(seen.keys() - expected)]
    problems += [f"{n} is in {c} layers" for n, c in sorted(seen.items()) if c > 1]
    if problems:
        raise UserError(f"{instance_dir}: the instance layers do not hold the package's members "
                        f"exactly: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                    if problems[1:] else ""))
