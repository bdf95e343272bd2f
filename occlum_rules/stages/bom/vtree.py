"""An in-memory image tree and the file operations copy_bom performs on it.

Planning replays copy_bom's operations (mkdir -p, ln -s, rsync of dirs and files) against
this model instead of the disk. That gives the exact final tree -- including rsync's and
copy_bom's ordering effects -- before anything is written, so errors abort with an untouched
image and the apply step only has to make the disk match the model.

Paths inside the image are lists of components. Symlinks met *inside* a path are followed
chroot-style (absolute targets from the image root, ``..`` stops at the root), so no
operation can reach outside the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from occlum_rules.errors import UserError

from .schema import EXIT_COPY_FILE, EXIT_MKDIR_OR_COPY_DIR, EXIT_SYMLINK

# The node classes are slotted: a BOM copying a tree holds one Entry and one VFile per file
# while it plans (80k of each on a 4 GiB image), and a __dict__ was most of each one.
EXPLICIT, AUTO, EXISTING = "explicit", "auto", "existing"
DIR_MODE = 0o755
_MAX_LINKS = 40


@dataclass(slots=True)
class VFile:
    src: str  # host file whose bytes end up here
    mode: int
    origin: str = EXPLICIT
    stamp: bytes = b""  # core.digests.file_stamp of src when planning stat'ed it, else b""


@dataclass(slots=True)
class VLink:
    target: str
    origin: str = EXPLICIT


@dataclass(slots=True)
class VDir:
    mode: int = DIR_MODE
    origin: str = EXPLICIT
    children: dict[str, VFile | VLink | VDir] = field(default_factory=dict)


VNode = VFile | VLink | VDir


@dataclass(slots=True)
class Entry:
    """One item of a host tree to copy: ``rel`` is relative to the destination dir."""

    rel: str  # "" = the destination dir itself (contents copy)
    kind: str  # "dir" | "file" | "link"
    mode: int = 0
    src: str = ""  # host path for files
    target: str = ""  # for links
    stamp: bytes = b""  # for files: core.digests.file_stamp of the walk's stat of src


def split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p]


_NOT_PLAIN = object()


class VTree:
    def __init__(self, root: VDir | None = None):
        self.root = root or VDir()

    # ------------------------------------------------------------------ lookups
    def _walk(self, parts: list[str], follow_last: bool) -> tuple[list[str], VNode | None]:
        """Resolve ``parts``; returns (resolved component list, node or None if missing).

        Raises LookupError when an intermediate component is missing or not a directory.
        """
        stack: list[tuple[str, VDir]] = []
        cur: VDir = self.root
        todo = list(parts)
        hops = 0
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if stack:
                    _, cur = stack.pop()
                continue
            child = cur.children.get(name)
            last = not todo
            if isinstance(child, VLink) and (not last or follow_last):
                hops += 1
                if hops > _MAX_LINKS:
                    raise LookupError("too many levels of symbolic links")
                target = child.target
                if target.startswith("/"):
                    stack, cur = [], self.root
                todo = split(target) + todo
                continue
            if last:
                return [n for n, _ in stack] + [name], child
            if not isinstance(child, VDir):
                raise LookupError(name)
            stack.append((name, cur))
            cur = child
        return [n for n, _ in stack], cur  # resolved to a directory (the root or via "..")

    def node(self, rel: str | list[str], follow_last: bool = True) -> VNode | None:
        parts = split(rel) if isinstance(rel, str) else rel
        found = self._plain_node(parts)
        if found is not _NOT_PLAIN:
            return found  # type: ignore[return-value]
        try:
            return self._walk(parts, follow_last)[1]
        except LookupError:
            return None

    def _plain_node(self, parts: list[str]) -> VNode | None | object:
        """The node at ``parts`` by dictionary lookups alone, or ``_NOT_PLAIN`` where the
        path names a link, "." or "..": planning looks up every file of the image (20k
        in a big one), and the general walk's bookkeeping was most of that."""
        cur: VNode = self.root
        for name in parts:
            if not isinstance(cur, VDir):
                return None
            child = cur.children.get(name)
            if child is None:
                return _NOT_PLAIN if name in ("", ".", "..") else None
            if isinstance(child, VLink):
                return _NOT_PLAIN
            cur = child
        return cur

    def resolve(self, rel: str | list[str], follow_last: bool = True) -> list[str] | None:
        parts = split(rel) if isinstance(rel, str) else rel
        try:
            return self._walk(parts, follow_last)[0]
        except LookupError:
            return None

    def _dir_at(self, parts: list[str]) -> VDir | None:
        """The directory at already resolved ``parts`` (no link is followed)."""
        found = self._plain_node(parts)
        return found if isinstance(found, VDir) else None

    # ------------------------------------------------------------------ operations
    def mkdir_p(self, rel: str, origin: str = EXPLICIT) -> None:
        """``create_dir_all``: follows links to dirs, new dirs get 0755."""
        cur = self.root
        resolved: list[str] = []
        for name in split(rel):
            if name == ".":
                continue
            if name == "..":
                resolved = resolved[:-1]
                cur = self._dir_at(resolved) or self.root
                continue
            child = cur.children.get(name)
            if child is None:
                child = cur.children[name] = VDir(DIR_MODE, origin)
            elif isinstance(child, VLink):
                real = self.resolve(resolved + [name])
                target = self._dir_at(real) if real is not None else None
                if real is None or target is None:
                    raise UserError(f"mkdir -p {rel}: '{name}' is a symlink that does not lead to a directory",
                                    exit_code=EXIT_MKDIR_OR_COPY_DIR)
                resolved, cur = real, target
                continue
            elif isinstance(child, VFile):
                raise UserError(f"mkdir -p {rel}: '{name}' exists and is a file",
                                exit_code=EXIT_MKDIR_OR_COPY_DIR)
            resolved.append(name)
            cur = child

    def symlink(self, rel: str, target: str, origin: str = EXPLICIT) -> None:
        parts = split(rel)
        parent = self._parent_dir(parts, EXIT_SYMLINK, f"ln -s {target} {rel}")
        existing = parent.children.get(parts[-1])
        if isinstance(existing, VDir):
            raise UserError(f"ln -s {target} {rel}: a directory already exists there",
                            exit_code=EXIT_SYMLINK)
        parent.children[parts[-1]] = VLink(target, origin)

    def _parent_dir(self, parts: list[str], code: int, what: str) -> VDir:
        if not parts:
            raise UserError(f"{what}: the destination is the image root itself", exit_code=code)
        real = self.resolve(parts[:-1])
        parent = self._dir_at(real) if real is not None else None
        if parent is None:
            shown = "/".join(parts[:-1]) or "/"
            raise UserError(f"{what}: directory '{shown}' does not exist in the image "
                            "(copy_bom does not create parents; add it to mkdirs)", exit_code=code)
        return parent

    def copy_file(self, rel: str, src_name: str, node: VFile, what: str,
                  code: int = EXIT_COPY_FILE) -> str | None:
        """``rsync -aL SRC DEST`` for a regular file; returns the image path written.

        An automatic copy never replaces something the BOM put there explicitly (returns None).
        """
        parts = split(rel)
        real = self.resolve(parts)
        if real is not None and isinstance(self._dir_at(real), VDir) and parts:
            parts = real + [src_name]
        parent = self._parent_dir(parts, code, what)
        existing = parent.children.get(parts[-1])
        if isinstance(existing, VDir):
            raise UserError(f"{what}: a directory is in the way", exit_code=code)
        if node.origin == AUTO and existing is not None and existing.origin == EXPLICIT:
            return None
        parent.children[parts[-1]] = node
        real_parent = self.resolve(parts[:-1]) or []
        return "/".join(real_parent + [parts[-1]])

    def copy_tree(self, rel: str, entries: list[Entry], what: str,
                  code: int = EXIT_MKDIR_OR_COPY_DIR, create_dest: bool = True) -> list[tuple[str, Entry]]:
        """rsync of a host tree into DEST (DEST itself is followed if it is a link).

        Returns (image path, entry) for each file written.
        """
        parts = split(rel)
        real = self.resolve(parts)
        dest = self._dir_at(real) if real is not None else None
        if real is None or dest is None:
            if not create_dest:
                raise UserError(f"{what}: destination is not a directory", exit_code=code)
            parent = self._parent_dir(parts, code, what)
            if parts[-1] in parent.children:
                raise UserError(f"{what}: destination exists and is not a directory", exit_code=code)
            dest = parent.children[parts[-1]] = VDir(DIR_MODE, EXPLICIT)
            real = (self.resolve(parts[:-1]) or []) + [parts[-1]]
        written: list[tuple[str, Entry]] = []
        for entry in entries:
            if entry.rel == "":
                dest.mode = entry.mode
                continue
            eparts = split(entry.rel)
            holder = dest
            for p in eparts[:-1]:
                nxt = holder.children.get(p)
                if not isinstance(nxt, VDir):
                    nxt = holder.children[p] = VDir(DIR_MODE, EXPLICIT)
                holder = nxt
            name = eparts[-1]
            existing = holder.children.get(name)
            if entry.kind == "dir":
                if isinstance(existing, VDir):
                    existing.mode = entry.mode
                else:
                    holder.children[name] = VDir(entry.mode, EXPLICIT)
                continue
            if isinstance(existing, VDir):
                if existing.children:
                    raise UserError(f"{what}: cannot replace non-empty directory "
                                    f"'{'/'.join(real + eparts)}' with a {entry.kind}", exit_code=code)
            if entry.kind == "file":
                holder.children[name] = VFile(entry.src, entry.mode, EXPLICIT, entry.stamp)
                written.append(("/".join(real + eparts), entry))
            else:
                holder.children[name] = VLink(entry.target, EXPLICIT)
        return written

    # ------------------------------------------------------------------ iteration
    def iter_nodes(self) -> list[tuple[str, VNode]]:
        """(path, node) for every node, parents first, siblings sorted; root is ''."""
        out: list[tuple[str, VNode]] = [("", self.root)]

        def rec(prefix: str, d: VDir) -> None:
            for name in sorted(d.children):
                child = d.children[name]
                path = f"{prefix}/{name}" if prefix else name
                out.append((path, child))
                if isinstance(child, VDir):
                    rec(path, child)

        rec("", self.root)
        return out
