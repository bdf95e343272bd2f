"""The container's file system as the layers stack it, from their entry lists alone.

Layers apply in order; a later entry replaces an earlier one; OCI whiteouts delete:
``dir/.wh.name`` removes ``dir/name`` and what is below it, ``dir/.wh..wh..opq`` empties
``dir`` of what lower layers put there. Paths resolve as the kernel resolves them inside
the container: symlinks followed (absolute targets from the container root, ``..`` never
above it), at most 40 of them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

MAX_LINKS = 40
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Entry:
    kind: str    # "file" | "dir" | "symlink" | "hardlink"
    mode: int
    target: str  # a link's target
    layer: int   # which layer put it there (0 = the first)


class ImageFS:
    """Entries by path (no leading slash); directories implied by deeper paths exist too."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._implied: set[str] = set()

    def apply(self, layer: int, entries: list[list]) -> None:
        ours: set[str] = set()
        for path, kind, mode, target in entries:
            parent, base = posixpath.split(path)
            if base == OPAQUE:
                self._remove_below(parent, keep=ours)
                continue
            if base.startswith(WHITEOUT):
                gone = posixpath.join(parent, base[len(WHITEOUT):])
                self.entries.pop(gone, None)
                self._remove_below(gone, keep=ours)
                continue
            self.entries[path] = Entry(kind, int(mode), target, layer)
            ours.add(path)
            while parent:
                self._implied.add(parent)
                parent = posixpath.dirname(parent)

    def _remove_below(self, top: str, keep: set[str]) -> None:
        prefix = top + "/" if top else ""
        for name in [n for n in self.entries if n.startswith(prefix) and n not in keep]:
            del self.entries[name]

    def kind(self, path: str) -> str | None:
        entry = self.entries.get(path)
        if entry is not None:
            return "file" if entry.kind == "hardlink" else entry.kind
        return "dir" if (path == "" or path in self._implied) else None

    def resolve(self, path: str) -> str | None:
        """The path (no leading slash) that ``path`` names after following links, or None
        when some component is missing or the links loop."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            here = "/".join([*done, part])
            kind = self.kind(here)
            if kind is None:
                return None
            if kind == "symlink":
                links += 1
                if links > MAX_LINKS:
                    return None
                target = self.entries[here].target
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            if todo and kind != "dir":
                return None
            done.append(part)
        return "/".join(done)

    def find_file(self, path: str) -> tuple[str, Entry] | None:
        """The regular file ``path`` leads to (links followed), with its entry."""
        final = self.resolve(path)
        if final is None or self.kind(final) != "file":
            return None
        return final, self.entries[final]
