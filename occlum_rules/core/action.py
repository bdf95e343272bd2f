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
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.digests import DigestCache
from occlum_rules.errors import UserError

# Bump when the meaning of an action key or of a stored manifest changes.
ENGINE_FORMAT = 2

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
    prune_dirs: dict[str, list[str]] = field(default_factory=dict)  # dir -> the only names it
    # may hold after every outcome (an instance's build/lib after an SGX mode switch)
    local_only: str = ""         # why a remote worker may not run it (not part of the key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_material(action: Action, input_digests: list[tuple[str, str]]) -> dict[str, Any]:
    """Everything that decides an action's outputs.

    The key is the hash of exactly this, and `occlum-rules explain` compares two of these, so
    what explain names is always what changed the key.
    """
    return {
        "format": ENGINE_FORMAT,
        "kind": action.kind,
        "argv": action.argv,
        "func": action.func,
        "params": action.params,
        "toolchains": sorted(action.toolchains),
        "env": action.env,
        "inputs": dict(_key_inputs(input_digests)),
        "outputs": [[path, kind] for path, kind in zip(action.outputs, action.output_types)],
    }


def compute_key(action: Action, input_digests: list[tuple[str, str]]) -> str:
    return hashlib.sha256(canonical(key_material(action, input_digests))).hexdigest()


def material_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two key materials, one reason per changed field."""
    reasons: list[str] = []
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    for path in sorted(set(old_in) | set(new_in)):
        if path not in old_in:
            reasons.append(f"input added: {path}")
        elif path not in new_in:
            reasons.append(f"input removed: {path}")
        elif old_in[path] != new_in[path]:
            reasons.append(f"input changed: {path} ({old_in[path][:12]} -> {new_in[path][:12]})")
    before, after = set(old.get("toolchains", [])), set(new.get("toolchains", []))
    reasons += [f"toolchain removed: {t}" for t in sorted(before - after)]
    reasons += [f"toolchain now: {t}" for t in sorted(after - before)]
    for name in ("format", "kind", "argv", "func", "outputs"):
        if old.get(name) != new.get(name):
            reasons.append(f"{name} changed")
    for name in ("params", "env"):
        was, now = old.get(name) or {}, new.get(name) or {}
        what = "parameter" if name == "params" else "environment variable"
        reasons += [f"{what} changed: {k}" for k in sorted(set(was) | set(now))
                    if was.get(k, _ABSENT) != now.get(k, _ABSENT)]
    return reasons


_ABSENT = object()


@dataclass
class StageContext:
    """What a Python stage function (an adapter in occlum_rules/actions/) receives.

    Paths are absolute. ``state_dir`` is the action's own, kept between runs and removed
    by ``doit clean``; ``shared_state_dir`` is shared by the actions of one kind and
    toolchain fingerprints. Neither is chosen by the stage or seen by the rule."""

    root: Path
    label: str
    inputs: list[Path]
    outputs: list[Path]
    params: dict[str, Any]
    secrets: dict[str, Path]
    source_date_epoch: int
    digests: DigestCache
    state_dir: Path         # private to this action, kept between runs (exists while it runs)
    shared_state_dir: Path  # shared by actions of this kind and toolchains (create it if used)
    discovered: list[str] = field(default_factory=list)
    # In-place actions only: the stage may describe an output tree it made (see describe_tree)
    stamp_cut: int | None = None
    described: dict[str, tuple[list[dict], bytes]] = field(default_factory=dict)
    input_digests: dict[str, str] = field(default_factory=dict)

    def describe_tree(self, path: str | os.PathLike[str], entries: list[dict],
                      stamps: bytes) -> None:
        """Hand the engine an output tree's description, which the stage already has from
        making it, so the engine does not walk and look up the tree again (on an image of
        20k files, 0.2 s of a one-file rebuild). ``entries``: what
        ``core.digests.tree_entries`` returns for the tree; ``stamps``: the marshal bytes
        of every path's (size, mtime, mode) as the tree is left, keyed by the path less
        ``stamp_cut`` characters (what ``core.outputs.StampBlob`` encodes). Only an in-place
        action's stage gets a ``stamp_cut``: a tree made elsewhere and moved is walked. With
        OCCLUM_RULES_CHECK_DESCRIBED=1 (the test suite sets it) the engine walks anyway and
        fails the action on any difference."""
        if self.stamp_cut is None:
            raise ValueError(f"{self.label}: only an in-place action describes its trees")
        self.described[os.fspath(path)] = (entries, stamps)

    def add_inputs(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Declare inputs found while running (host files a BOM copies, libraries it pulls
        in). They are re-checked on every later build and guard cache hits."""
        for p in paths:
            self.discovered.append(str(os.fspath(p)))

    def inputs_read(self, digests: Mapping[str, str]) -> None:
        """The sha256 of discovered inputs as the stage read them, by the path given to
        :meth:`add_inputs`. The engine records these instead of hashing the files again
        after the stage: a file edited while the stage ran then differs from the record,
        and the next build runs the action again (hashed afterwards, the edit would be
        taken as built). It also spares a stat per input (20k of them for an image)."""
        self.input_digests.update(digests)

    def read_json(self, rel: str | os.PathLike[str]) -> Any:
        """A JSON document another action wrote (a descriptor, measurements, a manifest),
        by workspace-relative path; a missing or broken one is one error naming this action."""
        try:
            return json.loads((self.root / rel).read_bytes())
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.label}: cannot read {rel} ({exc})") from None

    def log(self, message: str) -> None:
        print(f"[{self.label}] {message}", file=sys.stderr)
