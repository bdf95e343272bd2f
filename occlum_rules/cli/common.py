"""Helpers the workspace-aware subcommands share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from occlum_rules.core.analysis import Graph
from occlum_rules.core.workspace import Workspace
from occlum_rules.errors import UserError


def load(start: Path | None = None) -> tuple[Workspace, Graph]:
    from occlum_rules.core.doit_bridge import load_graph

    return load_graph(start)


def built_provider(label: str, provider: str, kind: str,
                   output: str) -> tuple[Workspace, dict[str, Any]]:
    """The workspace and the ``provider`` of target ``label``, whose ``output`` file must
    already be built; each miss is one error saying what to do (``kind`` names the rule)."""
    ws, graph = load()
    target = next((t for t in graph.targets.values() if str(t.label) == label), None)
    if target is None:
        raise UserError(f"no target '{label}' (see `doit list`)")
    found = (target.providers or {}).get(provider)
    if found is None:
        raise UserError(f"{label} is not an {kind} target")
    if not (ws.root / found[output].path).is_file():
        raise UserError(f"{label} is not built yet: run `doit {label}` first")
    return ws, found


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
             "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4,
             "TB": 1024**4, "TIB": 1024**4}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    from occlum_rules.errors import UserError

    try:
        return int(float(num) * units[unit])
    except (ValueError, KeyError):
        raise UserError(f"bad size {text!r}: expected a number with an optional unit such as 5G or 500M") from None
