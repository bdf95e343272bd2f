"""One of our actions as an executable REAPI action: Command, input root and Action. Pure.

A worker runs an action from its input root alone, so the input root holds every workspace
input at its workspace-relative path plus one parameter file, ``.occlum-rules/action.json``,
that says what to run (see ``cli/cmd_run_action.py``). The Command is always
``occlum-rules run-action .occlum-rules/action.json``, also for command-line (compiler)
actions: the entry point substitutes ``${WORKSPACE}`` with the absolute path of the input root
on the worker, exactly as a local run substitutes the checkout's path, so flags such as
``-ffile-prefix-map=${WORKSPACE}=.`` give the same bytes on both sides.

Nothing here depends on where the checkout is: paths are workspace-relative, files the
occlum-rules package ships are named ``@occlum_rules//…`` and are *not* shipped (the worker's
own install of the same release, pinned by the ``occlum-rules`` platform property, provides
them and the entry point checks their digests), so two checkouts of one commit give the same
input root digest.

Which actions may run remotely (:func:`remote_ineligible`): cacheable ones without secrets
(a signing or image key never leaves the machine), not in place (the incremental stages keep
private state between runs on this machine, so they stay local for now), and reading no host
file other than the package's own (a compiler binary is pinned by its toolchain fingerprint,
which becomes a platform property, not an input).
"""

from __future__ import annotations

import hashlib
import os
import stat as statmod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.action import PACKAGE_PREFIX, Action, canonical, key_path
from occlum_rules.core.action_result import blob_digest, serialize
from occlum_rules.core.digests import DigestCache, tree_entries
from occlum_rules.core.reapi_platform import action_properties
from occlum_rules.process import DEFAULT_PATH

PARAMS_PATH = ".occlum-rules/action.json"
DISCOVERED_PATH = ".occlum-rules/discovered.json"
ENTRY_POINT = "occlum-rules"
DOCUMENT_FORMAT = 1
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class InputFile:
    """A file of the input root and where its bytes are on this machine (streamed from there)."""

    path: str
    digest: str
    size: int
    executable: bool
    source: str


@dataclass
class RemoteAction:
    """Everything a client sends for one action: the messages and the blobs they name."""

    action_digest: Any           # REAPI Digest of ``action_bytes``
    action_bytes: bytes
    command_bytes: bytes
    root_digest: str
    files: dict[str, InputFile]  # digest -> one file with those bytes (streamed from disk)
    memory: dict[str, bytes] = field(default_factory=dict)  # digest -> small blobs in memory

    def blobs(self) -> dict[str, tuple[int, bytes | Path]]:
        """Every blob by digest: (size, its bytes or the file to stream it from)."""
        found: dict[str, tuple[int, bytes | Path]] = {
            d: (f.size, Path(f.source)) for d, f in self.files.items()}
        found.update({d: (len(b), b) for d, b in self.memory.items()})
        return found


def package_path(name: str) -> str:
    """This install's file for an ``@occlum_rules//…`` name (other names are returned as given)."""
    if name.startswith(PACKAGE_PREFIX):
        return str(_PACKAGE_DIR / name[len(PACKAGE_PREFIX):])
    return name


def _rel_ok(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not os.path.isabs(path) and all(p not in ("", ".", "..") for p in parts) \
        and not path.startswith(".occlum-rules/")


def remote_ineligible(action: Action) -> str | None:
    """Why ``action`` must run here, or None when a worker may run it."""
    if action.secrets:
        return "it uses a secret"
    if action.local_only:
        return action.local_only
    if not action.cacheable:
        return "its outputs are not cacheable"
    if action.in_place:
        return "it updates its previous outputs in place (incremental state stays local)"
    if action.argv is None and action.func is None:
        return "it has nothing to run"
    if action.argv is not None and not action.toolchains:
        return "its command is not pinned by a toolchain fingerprint"
    for path in action.inputs:
        if os.path.isabs(path):
            if not key_path(path).startswith(PACKAGE_PREFIX):
                return f"it reads the host file {path}"
        elif not _rel_ok(path):
            return f"its input path {path!r} leaves the workspace"
    for path in action.outputs:
        if not _rel_ok(path):
            return f"its output path {path!r} leaves the workspace"
    return None


def action_document(action: Action, input_digests: Iterable[tuple[str, str]],
                    source_date_epoch: int) -> bytes:
    """The parameter file the entry point reads: what runs, on what, writing what."""
    package = {key_path(p): d for p, d in input_digests
               if key_path(p).startswith(PACKAGE_PREFIX)}
    return canonical({
        "format": DOCUMENT_FORMAT,
        "id": action.id, "label": action.label, "kind": action.kind,
        "argv": action.argv, "func": action.func, "params": action.params,
        "env": action.env, "source_date_epoch": source_date_epoch,
        "inputs": [key_path(p) for p in action.inputs],
        "package_inputs": dict(sorted(package.items())),
        "outputs": action.outputs, "output_types": action.output_types,
    })


def command_environment(action: Action, source_date_epoch: int) -> dict[str, str]:
    """The whole environment of the remote command (a worker adds nothing to it)."""
    env = {"PATH": DEFAULT_PATH, "LC_ALL": "C", "TZ": "UTC",
           "SOURCE_DATE_EPOCH": str(source_date_epoch)}
    env.update(action.env)
    return env


def input_files(action: Action, root: str, input_digests: Iterable[tuple[str, str]],
                digests: DigestCache) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """(files, symlinks) of the input root for the workspace inputs of ``action``.

    Package files are left out; directory inputs are walked (through the digest cache, so a
    tree hashed for the action key is not hashed again)."""
    files: list[InputFile] = []
    links: list[tuple[str, str]] = []
    for path, _ in input_digests:
        if os.path.isabs(path):
            continue  # a package file (remote_ineligible refuses any other)
        full = os.path.join(root, path)
        st = os.lstat(full)
        if statmod.S_ISDIR(st.st_mode):
            for e in tree_entries(Path(full), digests):
                where = f"{path}/{e['path']}"
                if e["type"] == "file":
                    files.append(InputFile(where, e["sha256"], e["size"], bool(e["mode"] & 0o111),
                                           os.path.join(full, e["path"])))
                elif e["type"] == "symlink":
                    links.append((where, e["target"]))
        elif statmod.S_ISLNK(st.st_mode):
            links.append((path, os.readlink(full)))
        else:
            files.append(InputFile(path, digests.digest(full, st), st.st_size,
                                   bool(st.st_mode & 0o111), full))
    return files, links


def input_root(pb: Any, files: list[InputFile], links: list[tuple[str, str]],
               extra: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """(root Directory digest, every Directory message by digest) of a Merkle tree holding
    ``files``, ``links`` and the in-memory files ``extra`` (path -> bytes).

    Only names, digests and the executable bit go in, so the tree is the same wherever the
    files live; directories list children sorted by name, as REAPI requires."""
    tree: dict[str, dict[str, Any]] = {"": {"files": {}, "dirs": set(), "links": {}}}

    def parent_of(path: str) -> dict[str, Any]:
        parent, _, _ = path.rpartition("/")
        if parent not in tree:
            tree[parent] = {"files": {}, "dirs": set(), "links": {}}
            parent_of(parent)["dirs"].add(parent.rpartition("/")[2])
        return tree[parent]

    for f in files:
        parent_of(f.path)["files"][f.path.rpartition("/")[2]] = pb.re.FileNode(
            name=f.path.rpartition("/")[2], digest=pb.re.Digest(hash=f.digest, size_bytes=f.size),
            is_executable=f.executable)
    for path, data in extra.items():
        name = path.rpartition("/")[2]
        parent_of(path)["files"][name] = pb.re.FileNode(name=name, digest=blob_digest(pb, data))
    for path, target in links:
        name = path.rpartition("/")[2]
        parent_of(path)["links"][name] = pb.re.SymlinkNode(name=name, target=target)
    messages: dict[str, bytes] = {}

    def make(path: str) -> Any:
        node = tree[path]
        directory = pb.re.Directory(
            files=[node["files"][n] for n in sorted(node["files"])],
            symlinks=[node["links"][n] for n in sorted(node["links"])])
        for name in sorted(node["dirs"]):
            data = serialize(make(f"{path}/{name}" if path else name))
            messages[hashlib.sha256(data).hexdigest()] = data
            directory.directories.append(pb.re.DirectoryNode(name=name,
                                                             digest=blob_digest(pb, data)))
        return directory

    root = serialize(make(""))
    digest = hashlib.sha256(root).hexdigest()
    messages[digest] = root
    return digest, messages


def remote_action(pb: Any, action: Action, root: str, input_digests: list[tuple[str, str]],
                  digests: DigestCache, source_date_epoch: int) -> RemoteAction:
    """The REAPI Action (with its Command, input root and blobs) that runs ``action``."""
    document = action_document(action, input_digests, source_date_epoch)
    files, links = input_files(action, root, input_digests, digests)
    root_digest, directories = input_root(pb, files, links, {PARAMS_PATH: document})
    env = command_environment(action, source_date_epoch)
    output_paths = sorted([*action.outputs, DISCOVERED_PATH])
    out_files = sorted([p for p, k in zip(action.outputs, action.output_types) if k != "dir"]
                       + [DISCOVERED_PATH])
    out_dirs = sorted(p for p, k in zip(action.outputs, action.output_types) if k == "dir")
    properties = action_properties(action.toolchains)
    command = pb.re.Command(
        arguments=[ENTRY_POINT, "run-action", PARAMS_PATH],
        environment_variables=[pb.re.Command.EnvironmentVariable(name=k, value=v)
                               for k, v in sorted(env.items())],
        output_paths=output_paths, output_files=out_files, output_directories=out_dirs,
        platform=pb.re.Platform(properties=[pb.re.Platform.Property(name=n, value=v)
                                            for n, v in properties]))
    command_bytes = serialize(command)
    message = pb.re.Action(
        command_digest=blob_digest(pb, command_bytes),
        input_root_digest=pb.re.Digest(hash=root_digest, size_bytes=len(directories[root_digest])),
        do_not_cache=False,
        platform=pb.re.Platform(properties=[pb.re.Platform.Property(name=n, value=v)
                                            for n, v in properties]))
    action_bytes = serialize(message)
    memory = dict(directories)
    memory[hashlib.sha256(document).hexdigest()] = document
    memory[hashlib.sha256(command_bytes).hexdigest()] = command_bytes
    memory[hashlib.sha256(action_bytes).hexdigest()] = action_bytes
    by_digest: dict[str, InputFile] = {}
    for f in files:
        by_digest.setdefault(f.digest, f)
    return RemoteAction(blob_digest(pb, action_bytes), action_bytes, command_bytes,
                        root_digest, by_digest, memory)
