"""Actions: the unit of work, caching and scheduling.

An action is plain data (so doit's process runner can pickle it): what runs (a command line
or a Python stage function), what it reads, what it writes, and everything else that decides
its result (parameters, toolchain fingerprints, environment). The action key hashes all of
that, with workspace paths kept relative so two checkouts of one commit share cache entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

# Bump when the meaning of an action key or of a stored manifest changes.
ENGINE_FORMAT = 1

# Files occlum-rules itself ships (stand-in LibOS sources, templates, the development key) are
# inputs by absolute path, but where the package is installed must not decide a key: two
# virtualenvs at different paths share cache entries.
PACKAGE_PREFIX = "@occlum_rules//"
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")


def key_path(path: str) -> str:
    """The name an input has in an action key: package files by their place in the package."""
    if path.startswith(_PACKAGE_DIR):
        return PACKAGE_PREFIX + path[len(_PACKAGE_DIR):]
    return path


def _key_inputs(input_digests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((key_path(path), digest) for path, digest in input_digests)


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
        "inputs": _key_inputs(input_digests),
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
        "inputs": dict(_key_inputs(input_digests)),
        "outputs": list(action["outputs"]),
    }
