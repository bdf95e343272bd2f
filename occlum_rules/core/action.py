"""Actions: the unit of work, caching and scheduling.

An action is plain data (so doit's process runner can pickle it): what runs (a command line
or a Python stage function), what it reads, what it writes, and everything else that decides
its result (parameters, toolchain fingerprints, environment). The action key hashes all of
that, with workspace paths kept relative so two checkouts of one commit share cache entries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Bump when the meaning of an action key or of a stored manifest changes.
ENGINE_FORMAT = 1


@dataclass
class Action:
    id: str                      # doit task name, e.g. "//examples/hello_c:app:link"
    label: str                   # owning target
    name: str                    # short name within the target
    kind: str                    # stage kind, e.g. "cc.compile", "sefs.pack"
    inputs: list[str]            # workspace-relative paths, or absolute host paths
    outputs: list[str]           # workspace-relative paths under the output dir
    output_types: list[str]      # "file" or "dir", one per output
    argv: list[str] | None = None
    func: str | None = None      # "module:function" for Python stages
    params: dict[str, Any] = field(default_factory=dict)
    toolchains: list[str] = field(default_factory=list)   # fingerprints
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # name -> path; never in the key
    in_place: bool = False       # incremental stages update their previous outputs
    cacheable: bool = True       # False when outputs hold secrets
    producers: list[str] = field(default_factory=list)    # upstream action ids
    input_producers: dict[str, str] = field(default_factory=dict)  # input path -> action id
    description: str = ""
    ensure_dirs: list[str] = field(default_factory=list)  # created after every outcome, never
    # removed and not outputs (an instance's run/: the application's own data)
    prune_dirs: dict[str, list[str]] = field(default_factory=dict)  # dir -> the only names it
    # may hold after every outcome (an instance's build/lib after an SGX mode switch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def compute_key(action: dict[str, Any], input_digests: list[tuple[str, str]]) -> str:
    """sha256 over a canonical encoding of everything that decides the action's outputs."""
    material = {
        "format": ENGINE_FORMAT,
        "kind": action["kind"],
        "argv": action["argv"],
        "func": action["func"],
        "params": action["params"],
        "toolchains": sorted(action["toolchains"]),
        "env": action["env"],
        "inputs": sorted(input_digests),
        "outputs": list(zip(action["outputs"], action["output_types"])),
    }
    return hashlib.sha256(canonical(material)).hexdigest()


def key_material(action: dict[str, Any], input_digests: list[tuple[str, str]]) -> dict[str, Any]:
    """The same material as compute_key, kept readable for `occlum-rules explain`."""
    return {
        "kind": action["kind"],
        "argv": action["argv"],
        "func": action["func"],
        "params": action["params"],
        "toolchains": sorted(action["toolchains"]),
        "env": action["env"],
        "inputs": dict(sorted(input_digests)),
        "outputs": list(action["outputs"]),
    }
