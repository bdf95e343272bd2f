"""An OCI layer: a deterministic gzip tar of container paths, and the index of what it holds.

The tar and gzip bytes come from the package writer (:func:`write_package` with no top
directory): sorted members, uid/gid 0, every mtime = SOURCE_DATE_EPOCH, modes normalised,
gzip header with mtime 0 and no name. So a layer's digest depends only on its content.
Every parent directory of a member is an entry too (0755), as container tools expect.

Beside the blob, the layer's *entries* (path, kind, mode, link target) are kept, so the
image's runtime check can resolve paths through all layers without opening a tar again.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.oci.media import OCI_LAYER_GZIP
from occlum_rules.stages.package import member_sort_key, normalized_mode, walk_members
from occlum_rules.stages.package_stream import DigestLookup, Member, write_package


@dataclass
class Layer:
    """What the image needs to know about a written layer."""

    digest: str       # sha256:… of the compressed blob
    diff_id: str      # sha256:… of the uncompressed tar
    size: int
    entries: list[list]  # [path, kind, mode, link target]
    media_type: str = OCI_LAYER_GZIP

    def to_json(self) -> dict:
        return {"media_type": self.media_type, "digest": self.digest, "diff_id": self.diff_id,
                "size": self.size, "entries": self.entries}


def container_dir(path: str, what: str) -> str:
    """``/opt/occlum_instance`` → ``opt/occlum_instance`` ("" for the root); absolute,
    without ``..``, else a UserError naming ``what``."""
    if not path.startswith("/"):
        raise UserError(f"{what}: {path!r} must be an absolute path in the container, "
                        "such as '/opt/occlum_instance'")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{what}: {path!r} must not contain '..'")
    return "/".join(parts)


def _under(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def with_parents(members: Iterable[Member]) -> list[Member]:
    """The members, each name once (the first wins), plus every missing parent directory,
    in the package's member order."""
    unique: dict[str, Member] = {}
    for m in members:
        unique.setdefault(m.name, m)
    for name in list(unique):
        parent = posixpath.dirname(name)
        while parent and parent not in unique:
            unique[parent] = Member(parent, "dir", 0o755)
            parent = posixpath.dirname(parent)
    return sorted(unique.values(), key=lambda m: member_sort_key(m.name))


def tree_members(root: Path, prefix: str) -> list[Member]:
    """Everything below ``root`` (links kept as links), placed under ``prefix``."""
    base = container_dir(prefix, "prefix")
    try:
        children = sorted(os.listdir(root))
    except OSError as exc:
        raise UserError(f"{root}: cannot list the layer's tree ({exc.strerror})") from None
    members = [replace(m, name=_under(base, m.name))
               for child in children for m in walk_members(root, child)]
    return with_parents(members)


def file_members(files: Iterable[tuple[str, Path]]) -> list[Member]:
    """Files (links followed: a source's content, not the link) at their container paths."""
    members = []
    for path, source in files:
        name = container_dir(path, "srcs")
        try:
            st = os.stat(source)
        except OSError as exc:
            raise UserError(f"{source}: cannot read it for the layer ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{source}: only regular files can be layer srcs")
        members.append(Member(name, "file", normalized_mode("file", st.st_mode), st.st_size,
                              source=str(source)))
    return with_parents(members)


def entries_of(members: Iterable[Member]) -> list[list]:
    return [[m.name, m.kind, m.mode, m.target or ""] for m in members]


def write_layer(members: list[Member], out: Path, *, mtime: int, level: int = 6,
                known: DigestLookup | None = None,
                state_path: Path | None = None) -> Layer:
    """Write the layer blob to ``out`` (atomically) and describe it. With ``state_path``
    (an in-place action's state), unchanged segments of the previous blob at ``out`` are
    copied rather than deflated again: the bytes are the same either way."""
    result = write_package(members, "", out, mtime=mtime, level=level, known=known,
                           raw_digest=True, state_path=state_path)
    assert result.raw_sha256 is not None
    return Layer(digest=f"sha256:{result.sha256}", diff_id=f"sha256:{result.raw_sha256}",
                 size=result.size, entries=entries_of(members))
