"""Read a host directory the way copy_bom's rsync invocations would copy it.

* ``dirs`` entries: ``rsync -ar --copy-unsafe-links [--exclude=P]...``: links are kept unless
  they are absolute or climb above the transfer root, in which case the referent is copied;
  ``SRC/`` copies the contents (and the dir's mode onto DEST), ``SRC`` copies SRC itself.
* ``files`` entries: ``rsync -aL``: every link is followed.

The result is a list of :class:`Entry` (parents before children, names sorted bytewise like
rsync's file list) that the plan replays into the image model.
"""

from __future__ import annotations

import os
import re
import stat

from occlum_rules.core.digests import file_stamp
from occlum_rules.errors import UserError

from .paths import rust_file_name
from .schema import EXIT_MKDIR_OR_COPY_DIR
from .vtree import Entry


def unsafe_symlink(target: str, rel: str) -> bool:
    """rsync's rule: absolute/empty targets, or ones whose ``..`` climb above the transfer root."""
    if not target or target.startswith("/"):
        return True
    depth = 0
    for comp in rel.split("/")[:-1]:
        if comp == "..":
            depth = 0
        elif comp not in ("", "."):
            depth += 1
    for comp in target.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                return True
        elif comp not in ("", "."):
            depth += 1
    return False


def _translate(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i : i + 2] == "**":
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class Excluder:
    """rsync ``--exclude`` patterns, matched against paths relative to the transfer root."""

    def __init__(self, patterns: tuple[str, ...] | list[str]):
        self.rules = []
        for raw in patterns:
            pat = raw
            dir_only = pat.endswith("/")
            pat = pat.rstrip("/") if dir_only else pat
            anchored = pat.startswith("/")
            pat = pat.lstrip("/")
            if not pat:
                continue
            whole = "/" in pat or "**" in pat
            body = _translate(pat)
            if whole:
                rx = re.compile(("" if anchored else "(?:.*/)?") + body + r"\Z", re.S)
            else:
                rx = re.compile(body + r"\Z", re.S)
            self.rules.append((rx, whole, dir_only, anchored))

    def excluded(self, rel: str, is_dir: bool) -> bool:
        base = rel.rsplit("/", 1)[-1]
        for rx, whole, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            subject = rel if (whole or anchored) else base
            if anchored and not whole:
                subject = rel
            if rx.match(subject):
                return True
        return False


def _fail(message: str) -> UserError:
    return UserError(message, exit_code=EXIT_MKDIR_OR_COPY_DIR)


def walk_source(src: str, follow_all: bool, excludes: tuple[str, ...] = (),
                warnings: list[str] | None = None, code: int = EXIT_MKDIR_OR_COPY_DIR) -> list[Entry]:
    """Entries rsync would create for ``src`` (relative to DEST, see module doc)."""
    warnings = warnings if warnings is not None else []
    excl = Excluder(excludes)
    entries: list[Entry] = []
    contents = src.endswith("/") and src.rstrip("/") != ""

    def stat_follow(path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            return None

    def visit(path: str, rel: str, st: os.stat_result, depth: int) -> None:
        if depth > 64:
            raise UserError(f"copy {src}: directory nesting too deep (symlink loop?) at {path}",
                            exit_code=code)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if follow_all or unsafe_symlink(target, rel):
                real = stat_follow(path)
                if real is None:
                    raise UserError(f"copy {src}: symlink {path} -> {target} has no referent",
                                    exit_code=code)
                visit(path, rel, real, depth + 1)
            else:
                entries.append(Entry(rel, "link", 0o777, target=target))
            return
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(rel, "dir", mode))
            try:
                names = sorted(os.listdir(path), key=os.fsencode)
            except OSError as exc:
                raise UserError(f"copy {src}: cannot read directory {path}: {exc.strerror}",
                                exit_code=code) from None
            for name in names:
                child = os.path.join(path, name)
                child_rel = f"{rel}/{name}" if rel else name
                cst = os.lstat(child)
                is_dir = stat.S_ISDIR(cst.st_mode) or (
                    stat.S_ISLNK(cst.st_mode) and (stat_follow(child) is not None)
                    and stat.S_ISDIR(os.stat(child).st_mode) and
                    (follow_all or unsafe_symlink(os.readlink(child), child_rel)))
                if excl.excluded(child_rel, is_dir):
                    continue
                visit(child, child_rel, cst, depth + 1)
            return
        if stat.S_ISREG(st.st_mode):
            entries.append(Entry(rel, "file", mode, src=path, stamp=file_stamp(st)))
            return
        warnings.append(f"skipping special file {path} (devices, fifos and sockets are not copied)")

    if contents:
        st = stat_follow(src)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise UserError(f"copy {src}: no such directory", exit_code=code)
        entries.append(Entry("", "dir", stat.S_IMODE(st.st_mode)))
        for member in sorted(os.listdir(src), key=os.fsencode):
            child = os.path.join(src, member)
            cst = os.lstat(child)
            fst = stat_follow(child)
            is_dir = fst is not None and stat.S_ISDIR(fst.st_mode) and (
                not stat.S_ISLNK(cst.st_mode) or follow_all or unsafe_symlink(os.readlink(child), member))
            if excl.excluded(member, is_dir):
                continue
            visit(child, member, cst, 1)
        return entries
    name = rust_file_name(src)
    if name is None:
        raise UserError(f"copy {src}: cannot tell the name of the source", exit_code=code)
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise UserError(f"copy {src}: {exc.strerror}", exit_code=code) from None
    is_dir = stat.S_ISDIR(os.stat(src).st_mode) if stat_follow(src) else False
    if excl.excluded(name, is_dir):
        return entries
    visit(src.rstrip("/") or src, name, st, 0)
    return entries
