"""Insist that a linked C/C++ program is a position-independent executable.

A non-PIE binary builds fine on the host and fails only inside Occlum, far from the cause;
checking right after linking (actions/cc.py) turns that into a build error naming the target.
"""

from __future__ import annotations

from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind

DEFAULT_ALLOWED = ("pie", "static-pie")


def require_pie(path: Path, allowed: list[str] | tuple[str, ...], label: str) -> None:
    kind = pie_kind(path)
    if kind not in allowed:
        raise UserError(f"{label}: the linked file is {kind}, but Occlum needs a position-"
                        f"independent executable (link with -pie, or -static-pie); check linkopts")
