"""Helpers the workspace-aware subcommands share."""

from __future__ import annotations

from pathlib import Path

from occlum_rules.core.analysis import Graph
from occlum_rules.core.workspace import Workspace


def load(start: Path | None = None) -> tuple[Workspace, Graph]:
    from occlum_rules.core.doit_bridge import load_graph

    return load_graph(start)


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
