"""The instance inside the image: what ``occlum package`` takes, split into layers that
change at different rates.

The members are exactly the package's (:func:`select_members`: Occlum.json, build/bin, the
signed LibOS, the PAL and its links, both SEFS images, the protected config, initfs/, the
status files and the empty run/ skeleton), placed under the instance directory of the
container. Which layer holds a member is decided by the image rule's groups (instance-
relative patterns); every member must fall in exactly one group, so no layer split can
lose or duplicate a file.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.oci.layer import container_dir, with_parents
from occlum_rules.stages.package import select_members
from occlum_rules.stages.package_stream import Member


def in_group(name: str, patterns: list[str]) -> bool:
    """``name`` is a pattern's match or below one (``build/mount`` holds ``build/mount/x``)."""
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + "/") for p in patterns)


def group_members(instance_dir: Path, sgx_mode: str, groups: dict[str, list[str]],
                  group: str, instance_path: str) -> list[Member]:
    """The members of one group, under ``instance_path`` in the container, with parents."""
    base = container_dir(instance_path, "instance_dir")
    chosen = []
    for m in select_members(instance_dir, sgx_mode):
        owners = [g for g, patterns in sorted(groups.items()) if in_group(m.name, patterns)]
        if len(owners) != 1:
            raise UserError(f"{instance_dir / m.name}: instance member {m.name!r} is in "
                            f"{len(owners)} image layers ({', '.join(owners) or 'none'}); "
                            "each must be in exactly one")
        if owners[0] == group:
            chosen.append(replace(m, name=f"{base}/{m.name}" if base else m.name))
    return with_parents(chosen)
