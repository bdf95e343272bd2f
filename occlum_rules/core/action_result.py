"""Our output manifests as REAPI ``ActionResult`` messages, and back. Pure functions.

An output manifest (see ``core/outputs.py``) lists an action's outputs: files (sha256,
size, mode), directories (a sorted list of entries) and symlinks, plus the action's label,
kind and discovered inputs (``dynamic``). As an ``ActionResult``:

- a file is an ``OutputFile``: its digest, ``is_executable`` and the exact mode in
  ``node_properties.unix_mode``;
- a directory is an ``OutputDirectory`` whose ``tree_digest`` names a ``Tree`` message
  (stored in CAS like any blob): ``Directory`` messages with ``FileNode``, ``DirectoryNode``
  and ``SymlinkNode`` children, modes in ``node_properties.unix_mode``;
- a symlink is an ``OutputSymlink`` (``output_symlinks``);
- label, kind and discovered inputs ride in ``execution_metadata.auxiliary_metadata`` as one
  ``google.protobuf.Struct`` under the key ``occlum_rules``.

Messages are serialized deterministically, so the same outputs give the same Tree digests.

The action key (our sha256 over the action's inputs, see ``core/keys.py``) becomes the REAPI
Action digest through :func:`action_messages`: a ``Command`` whose arguments are
``["occlum-rules", "cached-action", <key>]`` and an ``Action`` naming that command, the empty
input root and the salt ``occlum-rules/cache/v1``. The Action digest is the sha256 and size
of that Action message, so it is a function of our key alone and a real blob: the client
stores both messages in CAS beside the result. It is a cache key, not something a worker can
execute (that is what the issue's "actions as REAPI actions" step adds).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from occlum_rules.core.digests import tree_digest

SALT = b"occlum-rules/cache/v1"
METADATA_KEY = "occlum_rules"
_MAX_DEPTH = 512
_MAX_ENTRIES = 1_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class BadActionResult(ValueError):
    """An ActionResult (or one of its Trees) that cannot be one of our manifests."""


def blob_digest(pb: Any, data: bytes) -> Any:
    """The REAPI ``Digest`` (sha256, size) of ``data``."""
    return pb.re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


def action_messages(pb: Any, key: str) -> tuple[bytes, bytes]:
    """(Action bytes, Command bytes) for our action key; the Action's digest is the AC key."""
    command = serialize(pb.re.Command(arguments=["occlum-rules", "cached-action", key]))
    action = pb.re.Action(
        command_digest=blob_digest(pb, command),
        input_root_digest=blob_digest(pb, b""),  # the empty Directory message
        salt=SALT,
    )
    return serialize(action), command


def action_digest_hash(pb: Any, key: str) -> str:
    """The sha256 part of the Action digest for our key (the HTTP cache's ``/ac/`` name)."""
    return hashlib.sha256(action_messages(pb, key)[0]).hexdigest()


def _props(pb: Any, mode: int) -> Any:
    props = pb.re.NodeProperties()
    props.unix_mode.value = mode
    return props


def _build_tree(pb: Any, entries: list[dict], sizes: Mapping[str, int]) -> bytes:
    """One serialized ``Tree`` for a directory output's entries."""
    dirs: dict[str, dict[str, list]] = {"": {"files": [], "dirs": [], "links": []}}
    modes: dict[str, int] = {}
    for e in entries:
        parent, _, name = e["path"].rpartition("/")
        if e["type"] == "dir":
            dirs[e["path"]] = {"files": [], "dirs": [], "links": []}
            modes[e["path"]] = e["mode"]
            dirs[parent]["dirs"].append(name)
        elif e["type"] == "file":
            node = pb.re.FileNode(
                name=name,
                digest=pb.re.Digest(hash=e["sha256"], size_bytes=_size(e, sizes)),
                is_executable=bool(e["mode"] & 0o111),
                node_properties=_props(pb, e["mode"]),
            )
            dirs[parent]["files"].append(node)
        else:
            dirs[parent]["links"].append(pb.re.SymlinkNode(name=name, target=e["target"]))
    children: dict[str, Any] = {}

    def make(path: str) -> Any:
        parts = dirs[path]
        message = pb.re.Directory(files=parts["files"], symlinks=parts["links"])
        if path in modes:
            message.node_properties.CopyFrom(_props(pb, modes[path]))
        for name in parts["dirs"]:
            child_path = f"{path}/{name}" if path else name
            child = make(child_path)
            data = serialize(child)
            message.directories.append(pb.re.DirectoryNode(name=name, digest=blob_digest(pb, data)))
            children.setdefault(hashlib.sha256(data).hexdigest(), child)
        return message

    root = make("")
    tree = pb.re.Tree(root=root, children=[children[d] for d in sorted(children)])
    return serialize(tree)


def _size(record: dict, sizes: Mapping[str, int]) -> int:
    size = record.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    return sizes[record["sha256"]]


def to_action_result(pb: Any, manifest: dict, sizes: Mapping[str, int]) -> tuple[Any, list[bytes]]:
    """(ActionResult, serialized Tree blobs it refers to) for an output manifest.

    ``sizes`` gives the byte size of blobs whose record has none (manifests from before
    sizes were recorded)."""
    result = pb.re.ActionResult(exit_code=0)
    trees: list[bytes] = []
    for out in manifest["outputs"]:
        if out["type"] == "file":
            result.output_files.append(pb.re.OutputFile(
                path=out["path"],
                digest=pb.re.Digest(hash=out["sha256"], size_bytes=_size(out, sizes)),
                is_executable=bool(out["mode"] & 0o111),
                node_properties=_props(pb, out["mode"]),
            ))
        elif out["type"] == "dir":
            tree = _build_tree(pb, out["entries"], sizes)
            trees.append(tree)
            result.output_directories.append(
                pb.re.OutputDirectory(path=out["path"], tree_digest=blob_digest(pb, tree)))
        else:
            result.output_symlinks.append(pb.re.OutputSymlink(path=out["path"], target=out["target"]))
    meta = pb.struct_pb2.Struct()
    meta.update({METADATA_KEY: {
        "label": str(manifest.get("label", "")),
        "kind": str(manifest.get("kind", "")),
        "dynamic": [list(d) for d in manifest.get("dynamic", [])],
    }})
    packed = pb.any_pb2.Any()
    packed.Pack(meta)
    result.execution_metadata.worker = "occlum-rules"
    result.execution_metadata.auxiliary_metadata.append(packed)
    return result, trees


def tree_digests(result: Any) -> list[Any]:
    """The ``Tree`` digests an ActionResult refers to (to fetch before decoding)."""
    return [_checked(d.tree_digest) for d in result.output_directories]


def _checked(digest: Any) -> Any:
    """A digest from outside: 64 lowercase hex digits and a size that can be."""
    if not _HEX64.match(digest.hash) or digest.size_bytes < 0:
        raise BadActionResult(f"malformed digest {digest.hash[:80]!r}/{digest.size_bytes}")
    return digest


def _mode(node: Any, executable: bool, default: int) -> int:
    if node.HasField("node_properties") and node.node_properties.HasField("unix_mode"):
        mode = int(node.node_properties.unix_mode.value)
        if not 0 <= mode <= 0o7777:
            raise BadActionResult(f"mode {mode:o} is not a permission mode")
        return mode
    return (default | 0o111) if executable else default


def _name_ok(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _tree_entries(pb: Any, tree_bytes: bytes, sizes: dict[str, int]) -> list[dict]:
    """Entries (depth first, names sorted) of a serialized Tree, as ``tree_entries`` lists them."""
    tree = pb.re.Tree()
    try:
        tree.ParseFromString(tree_bytes)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise BadActionResult(f"not a Tree message: {exc}") from None
    children = {hashlib.sha256(serialize(c)).hexdigest(): c for c in tree.children}
    entries: list[dict] = []

    def walk(directory: Any, prefix: str, depth: int) -> None:
        if depth > _MAX_DEPTH or len(entries) > _MAX_ENTRIES:
            raise BadActionResult("tree too deep or too large")
        items: list[tuple[str, str, Any]] = [(f.name, "file", f) for f in directory.files]
        items += [(d.name, "dir", d) for d in directory.directories]
        items += [(s.name, "symlink", s) for s in directory.symlinks]
        items.sort(key=lambda item: item[0])
        for name, kind, node in items:
            if not _name_ok(name):
                raise BadActionResult(f"bad entry name {name!r}")
            path = prefix + name
            if kind == "file":
                digest = _checked(node.digest).hash
                entries.append({"path": path, "type": "file",
                                "mode": _mode(node, node.is_executable, 0o644),
                                "size": int(node.digest.size_bytes), "sha256": digest})
                sizes[digest] = int(node.digest.size_bytes)
            elif kind == "symlink":
                entries.append({"path": path, "type": "symlink", "target": node.target})
            else:
                child = children.get(node.digest.hash)
                if child is None:
                    raise BadActionResult(f"directory {path!r} is missing from the tree")
                entries.append({"path": path, "type": "dir", "mode": _mode(child, False, 0o755)})
                walk(child, path + "/", depth + 1)

    walk(tree.root, "", 0)
    return entries


def from_action_result(pb: Any, result: Any,
                       trees: Mapping[str, bytes]) -> tuple[dict, dict[str, int]]:
    """(output manifest, blob sizes) from an ActionResult and its Tree blobs by digest.

    Raises :class:`BadActionResult` for anything that is not one of our results; the
    caller then checks that the manifest fits the action (``manifest_problem``)."""
    if result.exit_code != 0:
        raise BadActionResult(f"exit code {result.exit_code}")
    sizes: dict[str, int] = {}
    outputs: list[tuple[str, dict]] = []
    for f in result.output_files:
        digest = _checked(f.digest).hash
        sizes[digest] = int(f.digest.size_bytes)
        outputs.append((f.path, {"path": f.path, "type": "file",
                                 "mode": _mode(f, f.is_executable, 0o644),
                                 "size": int(f.digest.size_bytes), "sha256": digest,
                                 "digest": digest}))
    for d in result.output_directories:
        data = trees.get(d.tree_digest.hash)
        if data is None:
            raise BadActionResult(f"tree of {d.path!r} was not fetched")
        entries = _tree_entries(pb, data, sizes)
        outputs.append((d.path, {"path": d.path, "type": "dir", "entries": entries,
                                 "digest": "tree:" + tree_digest(entries)}))
    for s in list(result.output_symlinks) + list(result.output_file_symlinks) + \
            list(result.output_directory_symlinks):
        outputs.append((s.path, {"path": s.path, "type": "symlink", "target": s.target,
                                 "digest": "link:" + s.target}))
    meta = _metadata(pb, result)
    manifest = {"outputs": [o for _, o in outputs], "label": meta.get("label", ""),
                "kind": meta.get("kind", ""), "dynamic": meta.get("dynamic", [])}
    return manifest, sizes


def order_outputs(manifest: dict, declared: list[str]) -> dict:
    """The manifest with its outputs in the action's declared order (REAPI groups them by
    kind; our manifests keep the declaration order)."""
    outs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("path"), str) for o in outs):
        return manifest  # manifest_problem says what is wrong with it
    rank = {path: i for i, path in enumerate(declared)}
    outs = sorted(outs, key=lambda o: rank.get(o["path"], len(rank)))
    return {**manifest, "outputs": outs}


def _metadata(pb: Any, result: Any) -> dict:
    for packed in result.execution_metadata.auxiliary_metadata:
        if not packed.Is(pb.struct_pb2.Struct.DESCRIPTOR):
            continue
        meta = pb.struct_pb2.Struct()
        packed.Unpack(meta)
        if METADATA_KEY not in meta.fields:
            continue
        value = _plain(meta[METADATA_KEY])
        if not isinstance(value, dict):
            raise BadActionResult("occlum_rules metadata is not a mapping")
        dynamic = value.get("dynamic", [])
        if not isinstance(dynamic, list) or not all(
                isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
                for d in dynamic):
            raise BadActionResult("malformed discovered inputs")
        return value
    return {}


def _plain(value: Any) -> Any:
    """A Struct value as plain Python (Struct → dict, ListValue → list)."""
    if hasattr(value, "items") and hasattr(value, "fields"):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "values") and not isinstance(value, dict | str):
        return [_plain(v) for v in value]
    return value
