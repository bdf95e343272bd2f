"""Platform properties: what a remote worker must have for its outputs to be ours, byte for byte.

A REAPI scheduler (BuildGrid) gives an action only to a bot whose properties include every
property the action asks for. Actions ask for the host kind and engine format, plus one
``toolchain`` value per toolchain fingerprint in their key; a worker offers the fingerprints
of the toolchains it resolved. So work goes only where the same compiler binary, at the same
path, would run, and an action that needs no toolchain (a Python stage) can run on any worker
of the same engine.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable

from occlum_rules import __version__
from occlum_rules.core.action import ENGINE_FORMAT

OS_FAMILY = "OSFamily"
ISA = "ISA"
ENGINE = "occlum-rules"
TOOLCHAIN = "toolchain"

_ISA_NAMES = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "aarch64", "arm64": "aarch64"}


def engine_value() -> str:
    """Stage code decides stage bytes: a worker of another release may not run our actions."""
    return f"{__version__}/format-{ENGINE_FORMAT}"


def host_properties() -> list[tuple[str, str]]:
    machine = platform.machine().lower()
    return [(OS_FAMILY, platform.system().lower()), (ISA, _ISA_NAMES.get(machine, machine)),
            (ENGINE, engine_value())]


def toolchain_value(fingerprint: str) -> str:
    """Fingerprints hold paths and digests of any length; a property value stays short."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()


def action_properties(fingerprints: Iterable[str]) -> list[tuple[str, str]]:
    """What an action asks of a worker, sorted by name then value (REAPI's canonical order)."""
    wanted = host_properties() + [(TOOLCHAIN, toolchain_value(f)) for f in set(fingerprints)]
    return sorted(wanted)


def worker_properties(fingerprints: Iterable[str]) -> list[tuple[str, str]]:
    """What a worker offers: the same host properties and every toolchain it resolved."""
    return action_properties(fingerprints)
