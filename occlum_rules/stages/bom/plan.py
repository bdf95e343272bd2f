"""Turn a BOM (and its includes) into a concrete, ordered list of image operations.

This is copy_bom's planning phase -- include order, path construction, env expansion, hash
checks, dependency discovery, dedupe -- followed by a dry replay of the operations on an
in-memory image (:mod:`.vtree`). Everything that can fail does so here, before the image is
touched. The result is a :class:`Plan`; :func:`.apply.apply_plan` makes the disk match it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from occlum_rules.core.digests import sha256_file
from occlum_rules.errors import UserError

from .elf_deps import (
    HostFS,
    LoaderConfig,
    find_dependencies,
    infer_default_loader,
    load_loader_config,
    loader_pair,
    may_need_libraries,
    read_elf,
)
from .envexpand import expand
from .hostwalk import walk_source
from .libc_mix import explain_missing
from .paths import normalize_image_path, rust_file_name, rust_join, rust_parent
from .schema import (
    EXIT_COPY_FILE,
    EXIT_FILE_NOT_FOUND,
    EXIT_HASH,
    EXIT_INVALID_BOM,
    EXIT_MISSING_LIBRARY,
    EXIT_MKDIR_OR_COPY_DIR,
    BomFile,
    LStr,
    read_bom_file,
)
from .vtree import AUTO, EXPLICIT, Entry, VFile, VTree

IMAGE_PREFIX = "/\x00image"  # how the loader emulation names files already in the image
MAX_BOM_VISITS = 10000
EXTRA_BOM_NAME = "<extra files>"


@dataclass
class Op:
    """One operation in execution order. ``dest`` is image-relative ("" = image root)."""

    kind: str  # mkdir | link | copy_dir | copy_file | shared_object
    dest: str
    log: str
    bom: str
    line: int = 0
    target: str = ""  # link contents
    entries: list[Entry] | None = None  # copy_dir, or copy_file of a directory
    node: VFile | None = None  # copy_file / shared_object of a regular file
    src_name: str = ""  # basename used when DEST is an existing directory
    origin: str = EXPLICIT

    def where(self) -> str:
        return f"{self.bom}:{self.line}" if self.line else self.bom


@dataclass
class Plan:
    boms: list[str]
    ops: list[Op]
    tree: VTree
    host_inputs: list[str]
    warnings: list[str]
    loader_config: LoaderConfig
    root_display: str

    def log_lines(self) -> list[str]:
        return [op.log for op in self.ops]


@dataclass
class _Ctx:
    work: str  # copy_bom's WORK: relative sources are joined to it
    bare_base: str  # base for a `from` without dirs/files ("" = cwd, copy_bom's behaviour)
    root: str  # shown in log lines
    env: Mapping[str, str]
    config: LoaderConfig
    cwd: str
    warnings: list[str] = field(default_factory=list)
    host_inputs: set[str] = field(default_factory=set)
    origins: Mapping[str, str] = field(default_factory=dict)  # rule-placed file -> its target
    extra_paths: list[str] = field(default_factory=list)


@dataclass
class _Missing:
    bom: str
    line: int
    elf: str
    name: str
    needed_by: str


@dataclass
class _BomOps:
    path: str
    excludes: tuple[str, ...]
    mkdirs: list[Op] = field(default_factory=list)
    links: list[Op] = field(default_factory=list)
    dirs: list[Op] = field(default_factory=list)
    files: list[Op] = field(default_factory=list)
    sos: list[Op] = field(default_factory=list)
    so_pairs: set[tuple[str, str]] = field(default_factory=set)


# ----------------------------------------------------------------------------- helpers


def _abs_host(ctx: _Ctx, path: str) -> str:
    return path if path.startswith("/") else rust_join(ctx.cwd, path)


def _expand(ctx: _Ctx, raw: str, shown: str) -> str:
    value, unset = expand(raw, ctx.env)
    if unset is not None:
        ctx.warnings.append(f"{shown} resolve fails (${unset} is not set); used literally")
    return value


def _image_dest(ctx: _Ctx, raw: str, what: str, where: str) -> tuple[str, str]:
    """(normalised image path, display string) of an image path built like copy_bom does.

    copy_bom expands after joining with the root, so one unset variable leaves the whole
    string literal (a directory named ``$VAR`` is created, as copy_bom does).
    """
    display_raw = rust_join(ctx.root, raw) if raw else ctx.root
    value, unset = expand(raw, ctx.env)
    if unset is not None:
        ctx.warnings.append(f"{display_raw} resolve fails (${unset} is not set); used literally")
        value = raw
    display, _ = expand(display_raw, ctx.env)
    if unset is not None:
        display = display_raw
    return normalize_image_path(value, what, where), display


def _no_absolute(value: str, what: str, where: str) -> None:
    if value.startswith("/"):
        raise UserError(f"{what} '{value}' is absolute: it would be written outside the image "
                        "(copy_bom joins it without the image root)", where=where,
                        exit_code=EXIT_INVALID_BOM)


def _check_link_target(link_rel: str, target: str, where: str) -> None:
    if target.startswith("/") or not target:
        return
    parts = link_rel.split("/")[:-1]
    for comp in target.split("/"):
        if comp == "..":
            if not parts:
                raise UserError(f"symlink '{link_rel}' -> '{target}' points outside the image root",
                                where=where, exit_code=EXIT_INVALID_BOM)
            parts.pop()
        elif comp not in ("", "."):
            parts.append(comp)


def sha256_upper(path: str) -> str:
    return sha256_file(path).upper()


# ----------------------------------------------------------------------------- includes


def _find_include(name: LStr, bom_path: str, include_dirs: Sequence[str], cwd: str) -> str:
    parent = rust_parent(bom_path)
    cand = rust_join("." if parent is None else parent, name)
    if os.path.isfile(cand):
        return cand
    for d in include_dirs:
        cand = rust_join(rust_join(cwd, d), name)
        if os.path.isfile(cand):
            return cand
    looked = ", ".join([rust_parent(bom_path) or "."] + list(include_dirs))
    raise UserError(f"cannot find included BOM file '{name}' (looked in: {looked})",
                    where=f"{bom_path}:{name.line}", exit_code=EXIT_FILE_NOT_FOUND)


def collect_boms(top: str, include_dirs: Sequence[str], cwd: str | None = None
                 ) -> tuple[list[str], dict[str, BomFile]]:
    """BOM files in copy_bom's processing order (top first, breadth-first, last duplicate kept)."""
    cwd = cwd or os.getcwd()
    parsed: dict[str, BomFile] = {}
    resolved: dict[str, list[str]] = {}

    def includes_of(path: str) -> list[str]:
        if path not in resolved:
            if path not in parsed:
                parsed[path] = read_bom_file(path)
            resolved[path] = [_find_include(i, path, include_dirs, cwd) for i in parsed[path].includes]
        return resolved[path]

    def ident(path: str) -> str:
        return os.path.realpath(path)

    # real cycle detection (copy_bom only stops after 100 visits)
    state: dict[str, int] = {}

    def dfs(path: str, chain: list[str]) -> None:
        key = ident(path)
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            start = next(i for i, p in enumerate(chain) if ident(p) == key)
            cycle = " -> ".join(chain[start:] + [path])
            raise UserError(f"include cycle: {cycle}", where=chain[-1], exit_code=EXIT_INVALID_BOM)
        state[key] = 1
        for inc in includes_of(path):
            dfs(inc, chain + [path])
        state[key] = 2

    dfs(top, [])
    order = [top]
    queue = [top]
    visits = 0
    while queue:
        visits += 1
        if visits > MAX_BOM_VISITS:
            raise UserError(f"more than {MAX_BOM_VISITS} BOM files to process", where=top,
                            exit_code=EXIT_INVALID_BOM)
        cur = queue.pop(0)
        for inc in includes_of(cur):
            queue.append(inc)
            order.append(inc)
    keep_one([order], ident)
    return order, parsed


# ----------------------------------------------------------------------------- one BOM


def _plan_one(ctx: _Ctx, bom: BomFile, missing: list[_Missing]) -> _BomOps:
    ops = _BomOps(bom.path, tuple(bom.excludes))
    path = bom.path
    ops.mkdirs.append(Op("mkdir", "", f"mkdir -p {ctx.root}", path))
    autodep: list[tuple[str, int]] = []
    for t in bom.targets:
        twhere = f"{path}:{t.target.line}"
        traw = t.target.lstrip("/")
        tdest, tdisp = _image_dest(ctx, traw, "target", twhere)
        ops.mkdirs.append(Op("mkdir", tdest, f"mkdir -p {tdisp}", path, t.target.line))
        for d in t.mkdirs:
            where = f"{path}:{d.line}"
            _no_absolute(d, "mkdirs entry", where)
            dest, disp = _image_dest(ctx, rust_join(traw, d), "mkdirs entry", where)
            ops.mkdirs.append(Op("mkdir", dest, f"mkdir -p {disp}", path, d.line))
        for link in t.createlinks:
            where = f"{path}:{link.line}"
            _no_absolute(link.linkname, "linkname", where)
            dest, disp = _image_dest(ctx, rust_join(traw, link.linkname), "linkname", where)
            target = _expand(ctx, link.src, link.src)
            _check_link_target(dest, target, where)
            if not dest:
                raise UserError("linkname must name a path below the target", where=where,
                                exit_code=EXIT_INVALID_BOM)
            ops.links.append(Op("link", dest, f"ln -s {target} {disp}", path, link.line, target=target))
        for src in t.copy:
            src_dir = rust_join(ctx.work, src.from_) if src.from_ is not None else ctx.work
            for d in src.dirs or ():
                where = f"{path}:{d.line}"
                host = _expand(ctx, rust_join(src_dir, d), rust_join(src_dir, d))
                ops.dirs.append(_dir_op(ctx, host, tdest, tdisp, bom, d.line, where))
            if src.files is None and src.dirs is None and src.from_ is not None:
                where = f"{path}:{src.from_.line}"
                raw = src.from_ if src.from_.endswith("/") else src.from_ + "/"
                raw = rust_join(ctx.bare_base, raw) if ctx.bare_base else raw
                host = _expand(ctx, raw, raw)
                ops.dirs.append(_dir_op(ctx, host, tdest, tdisp, bom, src.from_.line, where))
            for f in src.files or ():
                where = f"{path}:{f.line}"
                raw_src = rust_join(src_dir, f.name)
                host = _expand(ctx, raw_src, raw_src)
                name = rust_file_name(host)
                if name is None:
                    raise UserError(f"file entry '{f.name}' has no file name", where=where,
                                    exit_code=EXIT_INVALID_BOM)
                if f.rename is not None:
                    _no_absolute(f.rename, "rename", where)
                    draw = rust_join(traw, f.rename)
                else:
                    draw = rust_join(traw, rust_file_name(raw_src) or name)
                dest, disp = _image_dest(ctx, draw, "rename" if f.rename else "file", where)
                absolute = _abs_host(ctx, host)
                if f.hash is not None:
                    _check_hash(absolute, host, f.hash, f"{path}:{f.hash.line}")
                if not os.path.exists(absolute):
                    raise UserError(f"source file '{host}' does not exist", where=where,
                                    exit_code=EXIT_COPY_FILE)
                ctx.host_inputs.add(absolute)
                if os.path.isdir(absolute):
                    entries = walk_source(absolute, follow_all=True, warnings=ctx.warnings,
                                          code=EXIT_COPY_FILE)
                    entries = [Entry(e.rel, e.kind, e.mode, e.src, e.target, e.stamp) for e in entries]
                    ctx.host_inputs.update(e.src for e in entries if e.kind == "file")
                    ops.files.append(Op("copy_file", dest, f"copy -aL {host} {disp}", path, f.line,
                                        entries=entries, src_name=name))
                else:
                    mode = os.stat(absolute).st_mode & 0o7777
                    ops.files.append(Op("copy_file", dest, f"copy -aL {host} {disp}", path, f.line,
                                        node=VFile(absolute, mode, EXPLICIT), src_name=name))
                    if f.autodep:
                        autodep.append((host, f.line))
    _autodep_files(ctx, ops, autodep, missing)
    return ops


def _check_hash(absolute: str, shown: str, expected: str, where: str) -> None:
    try:
        actual = sha256_upper(absolute)
    except OSError as exc:
        raise UserError(f"cannot open file '{shown}' to check its hash: {exc.strerror}", where=where,
                        exit_code=EXIT_FILE_NOT_FOUND) from None
    if expected == actual:
        return
    if expected.upper() == actual:
        raise UserError(f"hash of '{shown}' must be written in UPPERCASE hex like copy_bom expects: "
                        f"\"{actual}\"", where=where, exit_code=EXIT_HASH)
    raise UserError(f"the hash value of '{shown}' should be \"{actual}\"", where=where,
                    exit_code=EXIT_HASH)


def _dir_op(ctx: _Ctx, host: str, tdest: str, tdisp: str, bom: BomFile, line: int, where: str) -> Op:
    absolute = _abs_host(ctx, host)
    if host.endswith("/"):
        absolute = absolute if absolute.endswith("/") else absolute + "/"
    if not os.path.exists(absolute.rstrip("/") or "/"):
        raise UserError(f"directory to copy '{host}' does not exist", where=where,
                        exit_code=EXIT_MKDIR_OR_COPY_DIR)
    try:
        entries = walk_source(absolute, follow_all=False, excludes=bom.excludes, warnings=ctx.warnings)
    except UserError as exc:
        raise UserError(exc.message, where=where, exit_code=exc.exit_code) from None
    ctx.host_inputs.update(e.src for e in entries if e.kind == "file")
    excl = "".join(f" --exclude={p}" for p in bom.excludes)
    return Op("copy_dir", tdest, f"copy -r --copy-unsafe-links{excl} {host} {tdisp}", bom.path, line,
              entries=entries, src_name=host)


def _autodep_files(ctx: _Ctx, ops: _BomOps, files: list[tuple[str, int]],
                   missing: list[_Missing]) -> None:
    if not files:
        return
    default = infer_default_loader([f for f, _ in files], ctx.config)
    for host, line in files:
        res = find_dependencies(host, ctx.config, default)
        ctx.warnings.extend(res.warnings)
        ctx.host_inputs.update(_abs_host(ctx, p) for p in res.host_files_read)
        for m in res.missing:
            missing.append(_Missing(ops.path, line, host, m.name, m.needed_by))
        pairs = []
        if res.loader is not None:
            pairs.append((res.loader[0], res.loader[1]))
        pairs += [(d.src, d.dest) for d in res.deps]
        for src, dest in pairs:
            if (src, dest) in ops.so_pairs:
                continue
            ops.so_pairs.add((src, dest))
            where = f"{ops.path}:{line}"
            rel = normalize_image_path(dest, "library destination", where)
            if not os.path.exists(src):
                raise UserError(f"loader '{src}' needed by '{host}' does not exist on this host",
                                where=where, exit_code=EXIT_COPY_FILE)
            absolute = _abs_host(ctx, src)
            ctx.host_inputs.add(absolute)
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            ops.mkdirs.append(Op("mkdir", parent, f"mkdir -p {rust_join(ctx.root, parent)}",
                                 ops.path, line, origin=AUTO))
            mode = os.stat(absolute).st_mode & 0o7777
            ops.sos.append(Op("shared_object", rel, f"copy -aL {src} {rust_join(ctx.root, rel)}",
                              ops.path, line, node=VFile(absolute, mode, AUTO),
                              src_name=rel.rsplit("/", 1)[-1], origin=AUTO))


# ----------------------------------------------------------------------------- dedupe


T = TypeVar("T")


def keep_one(groups: Sequence[list[T]], key: Callable[[T], str], seen: set[str] | None = None,
             *, last: bool = True) -> set[str]:
    """Keep one item per key across ``groups`` (lists in processing order, edited in place):
    the last one, as a later BOM overrides an earlier one, or with ``last=False`` the first.
    Keys already in ``seen`` are dropped everywhere; returns the keys kept."""
    seen = set() if seen is None else seen
    for items in reversed(groups) if last else groups:
        kept = []
        for item in reversed(items) if last else items:
            k = key(item)
            if k not in seen:
                seen.add(k)
                kept.append(item)
        items[:] = kept[::-1] if last else kept
    return seen


def _dest(op: Op) -> str:
    return op.dest


def _dir_copy_key(op: Op) -> str:
    """Where a directory copy lands: ``dest/name`` unless the source ends in ``/``."""
    name = rust_file_name(op.src_name)
    if op.src_name.endswith("/") or name is None:
        return op.dest
    return f"{op.dest}/{name}" if op.dest else name


def _dedupe(all_ops: list[_BomOps]) -> None:
    keep_one([b.mkdirs for b in all_ops], _dest, last=False)
    keep_one([b.links for b in all_ops], _dest)
    keep_one([b.dirs for b in all_ops], _dir_copy_key)
    files = keep_one([b.files for b in all_ops], _dest)
    keep_one([b.sos for b in all_ops], _dest, files)  # a copied file beats a found library


# ----------------------------------------------------------------------------- replay


def run_op(tree: VTree, op: Op) -> list[tuple[str, Entry]]:
    """Apply one operation to the image model; returns files written by dir copies."""
    try:
        if op.kind == "mkdir":
            tree.mkdir_p(op.dest, op.origin)
        elif op.kind == "link":
            tree.symlink(op.dest, op.target, op.origin)
        elif op.kind == "copy_dir":
            return tree.copy_tree(op.dest, op.entries or [], op.log)
        elif op.node is not None:
            tree.copy_file(op.dest, op.src_name, op.node, op.log)
        else:
            # a directory under `files`: ``rsync -aL SRC DEST`` makes DEST a directory (if it is
            # not one yet) and puts SRC inside it, so the tree lands one level deeper,
            # DEST/NAME/... (copy-bom.md §7). The walked entries already start with NAME (or are
            # the contents for a `NAME/` source), so they go into DEST as they are.
            tree.copy_tree(op.dest, op.entries or [], op.log, code=EXIT_COPY_FILE)
    except UserError as exc:
        if exc.where:
            raise
        raise UserError(exc.message, where=op.where(), exit_code=exc.exit_code) from None
    return []


class OverlayFS(HostFS):
    """Host files plus the image being assembled under :data:`IMAGE_PREFIX`."""

    def __init__(self, tree: VTree):
        self.tree = tree

    def file(self, path: str) -> str | None:
        if path == IMAGE_PREFIX or path.startswith(IMAGE_PREFIX + "/"):
            node = self.tree.node(path[len(IMAGE_PREFIX):])
            return node.src if isinstance(node, VFile) else None
        return super().file(path)


def _autodep_dirs(ctx: _Ctx, tree: VTree, b: _BomOps, written: list[tuple[str, Entry]],
                  so_pairs: set[tuple[str, str]]) -> list[Op]:
    fs = OverlayFS(tree)
    files = []
    for rel, _entry in written:
        node = tree.node(rel, follow_last=False)
        if isinstance(node, VFile) and may_need_libraries(node.src, node.stamp):
            files.append(IMAGE_PREFIX + "/" + rel)
    if not files:
        return []
    default = infer_default_loader(files, ctx.config, fs)
    new_ops: list[Op] = []
    pairs_done: set[tuple[str, str]] = set()
    for f in files:
        shown = rust_join(ctx.root, f[len(IMAGE_PREFIX) + 1:])
        res = find_dependencies(f, ctx.config, default, fs=fs, display=shown)
        ctx.warnings.extend(res.warnings)
        ctx.host_inputs.update(res.host_files_read)
        for m in res.missing:
            by = m.needed_by.replace(IMAGE_PREFIX, ctx.root)
            ctx.warnings.append(f"cannot autodep for {shown}: library {m.name} needed by {by} "
                                "was not found (not an error for files copied with `dirs`)")
        pairs = [(res.loader[0], res.loader[1])] if res.loader else []
        pairs += [(d.src, d.dest) for d in res.deps]
        for src, dest in pairs:
            if src.startswith(IMAGE_PREFIX) or (src, dest) in so_pairs or (src, dest) in pairs_done:
                continue
            pairs_done.add((src, dest))
            rel = normalize_image_path(dest, "library destination", b.path)
            if not os.path.exists(src):
                ctx.warnings.append(f"loader {src} for {shown} does not exist on this host; skipped")
                continue
            ctx.host_inputs.add(src)
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            new_ops.append(Op("mkdir", parent, f"mkdir -p {rust_join(ctx.root, parent)}", b.path,
                              origin=AUTO))
            mode = os.stat(src).st_mode & 0o7777
            new_ops.append(Op("shared_object", rel, f"copy -aL {src} {rust_join(ctx.root, rel)}",
                              b.path, node=VFile(src, mode, AUTO), src_name=rel.rsplit("/", 1)[-1],
                              origin=AUTO))
    return new_ops


# ----------------------------------------------------------------------------- entry point


def _extra_bom(ctx: _Ctx, extra: Mapping[str, Sequence[str | os.PathLike[str]]],
               missing: list[_Missing]) -> _BomOps:
    ops = _BomOps(EXTRA_BOM_NAME, ())
    autodep = []
    for image_dir in sorted(extra):
        where = f"{EXTRA_BOM_NAME}:{image_dir}"
        tdest = normalize_image_path(image_dir, "image dir", where)
        tdisp = rust_join(ctx.root, tdest) if tdest else ctx.root
        ops.mkdirs.append(Op("mkdir", tdest, f"mkdir -p {tdisp}", EXTRA_BOM_NAME))
        for p in extra[image_dir]:
            host = os.fspath(p)
            absolute = _abs_host(ctx, host)
            if not os.path.isfile(absolute):
                raise UserError(f"file to place in {image_dir} does not exist: {host}",
                                where=EXTRA_BOM_NAME, exit_code=EXIT_COPY_FILE)
            name = absolute.rstrip("/").rsplit("/", 1)[-1]
            dest = f"{tdest}/{name}" if tdest else name
            ctx.host_inputs.add(absolute)
            ctx.extra_paths.append(absolute)
            mode = os.stat(absolute).st_mode & 0o7777
            ops.files.append(Op("copy_file", dest, f"copy -aL {host} {rust_join(ctx.root, dest)}",
                                EXTRA_BOM_NAME, node=VFile(absolute, mode, EXPLICIT), src_name=name))
            autodep.append((absolute, 0))
    _autodep_files(ctx, ops, autodep, missing)
    return ops


def plan_bom(
    bom_file: str | os.PathLike[str],
    include_dirs: Sequence[str | os.PathLike[str]] = (),
    loader_config: str | os.PathLike[str] | LoaderConfig | None = None,
    env: Mapping[str, str] | None = None,
    extra_files: Mapping[str, Sequence[str | os.PathLike[str]]] | None = None,
    *,
    source_dir: str | os.PathLike[str] | None = None,
    root: str | None = None,
    origins: Mapping[str, str] | None = None,
    initial: VTree | None = None,
) -> Plan:
    """Plan the image for ``bom_file``. Pure apart from reading host files.

    ``initial`` is what the image holds before copy_bom runs (``occlum init``'s files); the
    BOM's operations are replayed on top of it, so its copies win as later copies would.

    Relative sources resolve against ``source_dir`` when given (default: the BOM file's
    directory). With ``root`` and no ``source_dir`` they follow copy_bom exactly: against the
    parent of ``root``, and a bare ``from`` against the current directory. ``origins`` names
    the target each ``extra_files`` path comes from, for error messages.
    """
    try:
        return _plan_bom(bom_file, include_dirs, loader_config, env, extra_files, source_dir, root,
                         origins or {}, initial)
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename}: {exc.strerror}", exit_code=EXIT_FILE_NOT_FOUND) from None


def _plan_bom(
    bom_file: str | os.PathLike[str],
    include_dirs: Sequence[str | os.PathLike[str]],
    loader_config: str | os.PathLike[str] | LoaderConfig | None,
    env: Mapping[str, str] | None,
    extra_files: Mapping[str, Sequence[str | os.PathLike[str]]] | None,
    source_dir: str | os.PathLike[str] | None,
    root: str | None,
    origins: Mapping[str, str],
    initial: VTree | None = None,
) -> Plan:
    cwd = os.getcwd()
    config = loader_config if isinstance(loader_config, LoaderConfig) else load_loader_config(loader_config)
    bom_path = os.fspath(bom_file)
    if source_dir is not None or root is None:
        base = os.fspath(source_dir) if source_dir is not None else (os.path.dirname(os.path.abspath(bom_path)))
        work, bare = base, base
    else:
        parent = rust_parent(root)
        work, bare = ("." if parent is None else parent), ""
    ctx = _Ctx(work=work, bare_base=bare, root=root if root is not None else "<image>",
               env=dict(os.environ) if env is None else dict(env), config=config, cwd=cwd,
               origins=origins)
    if config.path:
        ctx.host_inputs.add(_abs_host(ctx, config.path))
    order, parsed = collect_boms(bom_path, [os.fspath(d) for d in include_dirs], cwd)
    missing: list[_Missing] = []
    per_bom: list[_BomOps] = []
    for path in order:
        bom = parsed.get(path) or read_bom_file(path)
        ctx.warnings.extend(bom.warnings)
        ctx.host_inputs.add(_abs_host(ctx, path))
        per_bom.append(_plan_one(ctx, bom, missing))
    if extra_files:
        per_bom.append(_extra_bom(ctx, extra_files, missing))
    _dedupe(per_bom)
    tree = initial if initial is not None else VTree()
    ops: list[Op] = []
    written: dict[int, list[tuple[str, Entry]]] = {}
    for i, b in enumerate(per_bom):
        for op in b.mkdirs + b.links + b.dirs + b.files + b.sos:
            ops.append(op)
            out = run_op(tree, op)
            if op.kind == "copy_dir":
                written.setdefault(i, []).extend(out)
    so_pairs = {pair for b in per_bom for pair in b.so_pairs}
    made = {op.dest for op in ops if op.kind == "mkdir"}
    for i, b in enumerate(per_bom):
        for op in _autodep_dirs(ctx, tree, b, written.get(i, []), so_pairs):
            if op.kind == "mkdir":
                if op.dest in made:
                    continue
                made.add(op.dest)
            ops.append(op)
            run_op(tree, op)
    _check_missing(ctx, tree, missing)
    inputs = sorted(p for p in ctx.host_inputs if not p.startswith(IMAGE_PREFIX))
    return Plan(order, ops, tree, inputs, ctx.warnings, config, ctx.root)


def _check_missing(ctx: _Ctx, tree: VTree, missing: list[_Missing]) -> None:
    if not missing:
        return
    names = {path.rsplit("/", 1)[-1] for path, _ in tree.iter_nodes() if path}
    bad = [m for m in missing if m.name not in names]
    if not bad:
        return
    if all(m.bom == EXTRA_BOM_NAME for m in bad):  # rule-placed files: no BOM line to show
        loader = infer_default_loader(ctx.extra_paths, ctx.config)
        users = [p for p in ctx.extra_paths if loader and loader_pair(p, ctx.config) == loader]
        detail = explain_missing([(m.elf, m.name, m.needed_by) for m in bad], ctx.origins,
                                 loader, users, read_elf)
        raise UserError(f"missing libraries: {detail}", exit_code=EXIT_MISSING_LIBRARY)
    first = next(m for m in bad if m.bom != EXTRA_BOM_NAME)
    detail = "; ".join(
        f"{m.elf} needs {m.name}" + (f" (via {m.needed_by})" if m.needed_by != m.elf else "")
        for m in bad)
    search = ("; searched RPATH/RUNPATH, the loader config's LD_LIBRARY_PATH, ld.so.cache and "
              "the system dirs, and no file of that name is in the image")
    raise UserError(f"missing libraries: {detail}{search}", where=f"{first.bom}:{first.line}",
                    exit_code=EXIT_MISSING_LIBRARY)
