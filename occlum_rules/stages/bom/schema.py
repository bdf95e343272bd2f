"""Parse and validate a BOM file (copy_bom's YAML schema) with line numbers.

copy_bom deserialises BOMs with serde, which silently ignores unknown keys, so a typo such as
``mkdir:`` or ``renam:`` quietly does nothing. We walk the YAML node tree ourselves (pyyaml's
composer keeps line marks) so every problem can be reported as ``file:line`` and typos can be
flagged with a suggestion. Scalars follow YAML 1.2 like serde_yaml: ``autodep: no`` is a
string, not a boolean, and is rejected just as copy_bom rejects it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import yaml

from occlum_rules.errors import UserError
from occlum_rules.user_files import read_user_text

# copy_bom's exit statuses (process::exit(-n) seen by the shell as 256-n).
EXIT_FILE_NOT_FOUND = 255
EXIT_COPY_FILE = 254
EXIT_INVALID_BOM = 253
EXIT_MKDIR_OR_COPY_DIR = 252
EXIT_SYMLINK = 251
EXIT_HASH = 249
EXIT_MISSING_LIBRARY = 248

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_WORDS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


class LStr(str):
    """A string that remembers the line (1-based) it came from in its BOM file."""

    line: int

    def __new__(cls, value: str, line: int) -> LStr:
        obj = super().__new__(cls, value)
        obj.line = line
        return obj


@dataclass(frozen=True)
class FileEntry:
    name: LStr
    hash: LStr | None = None
    autodep: bool = True
    rename: LStr | None = None
    line: int = 0


@dataclass(frozen=True)
class Source:
    from_: LStr | None
    dirs: tuple[LStr, ...] | None
    files: tuple[FileEntry, ...] | None
    line: int


@dataclass(frozen=True)
class Link:
    src: LStr
    linkname: LStr
    line: int


@dataclass(frozen=True)
class Target:
    target: LStr
    mkdirs: tuple[LStr, ...]
    createlinks: tuple[Link, ...]
    copy: tuple[Source, ...]
    line: int


@dataclass(frozen=True)
class BomFile:
    path: str
    includes: tuple[LStr, ...]
    excludes: tuple[LStr, ...]
    targets: tuple[Target, ...]
    warnings: tuple[str, ...] = field(default=())


class _Ctx:
    def __init__(self, path: str):
        self.path = path
        self.warnings: list[str] = []

    def where(self, node: yaml.Node | None) -> str:
        if node is None:
            return self.path
        return f"{self.path}:{node.start_mark.line + 1}"

    def fail(self, node: yaml.Node | None, message: str) -> UserError:
        return UserError(message, where=self.where(node), exit_code=EXIT_INVALID_BOM)


def _mapping(ctx: _Ctx, node: yaml.Node, what: str, known: tuple[str, ...]) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, f"{what} must be a mapping with keys {', '.join(known)}")
    out: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ctx.fail(key_node, f"{what}: keys must be plain names")
        key = key_node.value
        if key in out:
            raise ctx.fail(key_node, f"duplicate key '{key}' in {what}")
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            tip = f"; did you mean '{hint[0]}'?" if hint else f" (known keys: {', '.join(known)})"
            ctx.warnings.append(f"{ctx.where(key_node)}: unknown key '{key}' in {what} is ignored{tip}")
            continue
        out[key] = value_node
    return out


def _is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG)


def _string(ctx: _Ctx, node: yaml.Node | None, what: str) -> LStr | None:
    if _is_null(node):
        return None
    return _required_string(ctx, node, what)


def _required_string(ctx: _Ctx, node: yaml.Node | None, what: str) -> LStr:
    if node is None or _is_null(node):
        raise ctx.fail(node, f"missing required field '{what}' (a string)")
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, f"'{what}' must be a string, not a {'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    return LStr(node.value, node.start_mark.line + 1)


def _string_list(ctx: _Ctx, node: yaml.Node | None, what: str) -> tuple[LStr, ...] | None:
    if _is_null(node):
        return None
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, f"'{what}' must be a list of strings")
    items = []
    for item in node.value:
        value = _string(ctx, item, f"{what} item")
        if value is None:
            raise ctx.fail(item, f"'{what}' items must be strings, not empty")
        items.append(value)
    return tuple(items)


def _seq(ctx: _Ctx, node: yaml.Node | None, what: str) -> list[yaml.Node]:
    if _is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, f"'{what}' must be a list")
    return list(node.value)


def _bool(ctx: _Ctx, node: yaml.Node | None, what: str) -> bool | None:
    if _is_null(node):
        return None
    if isinstance(node, yaml.ScalarNode) and node.style is None and node.value in _BOOL_WORDS:
        return _BOOL_WORDS[node.value]
    shown = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
    raise ctx.fail(node, f"'{what}' must be true or false (YAML 1.2), got {shown!r}")


def _file_entry(ctx: _Ctx, node: yaml.Node) -> FileEntry:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode) and not _is_null(node):
        return FileEntry(name=LStr(node.value, line), line=line)
    if _is_null(node):
        raise ctx.fail(node, "a 'files' item must be a file name or a mapping with 'name'")
    m = _mapping(ctx, node, "a 'files' item", ("name", "hash", "autodep", "rename"))
    name = _required_string(ctx, m.get("name"), "name") if "name" in m else None
    if name is None:
        raise ctx.fail(node, "a 'files' item written as a mapping needs 'name'")
    autodep = _bool(ctx, m.get("autodep"), "autodep")
    return FileEntry(
        name=name,
        hash=_string(ctx, m.get("hash"), "hash"),
        autodep=True if autodep is None else autodep,
        rename=_string(ctx, m.get("rename"), "rename"),
        line=line,
    )


def _source(ctx: _Ctx, node: yaml.Node) -> Source:
    m = _mapping(ctx, node, "a 'copy' item", ("from", "dirs", "files"))
    files = None
    if not _is_null(m.get("files")):
        files = tuple(_file_entry(ctx, item) for item in _seq(ctx, m["files"], "files"))
    src = Source(
        from_=_string(ctx, m.get("from"), "from"),
        dirs=_string_list(ctx, m.get("dirs"), "dirs"),
        files=files,
        line=node.start_mark.line + 1,
    )
    if src.files is None and src.dirs is None and src.from_ is None:
        raise ctx.fail(node, "a 'copy' item needs 'from', 'dirs' or 'files' (field 'from' cannot be empty)")
    return src


def _link(ctx: _Ctx, node: yaml.Node) -> Link:
    m = _mapping(ctx, node, "a 'createlinks' item", ("src", "linkname"))
    if "src" not in m:
        raise ctx.fail(node, "a 'createlinks' item needs 'src'")
    if "linkname" not in m:
        raise ctx.fail(node, "a 'createlinks' item needs 'linkname'")
    return Link(
        src=_required_string(ctx, m["src"], "src"),
        linkname=_required_string(ctx, m["linkname"], "linkname"),
        line=node.start_mark.line + 1,
    )


def _target(ctx: _Ctx, node: yaml.Node) -> Target:
    m = _mapping(ctx, node, "a 'targets' item", ("target", "mkdirs", "createlinks", "copy"))
    if "target" not in m:
        raise ctx.fail(node, "a 'targets' item needs 'target' (the destination dir in the image)")
    return Target(
        target=_required_string(ctx, m["target"], "target"),
        mkdirs=_string_list(ctx, m.get("mkdirs"), "mkdirs") or (),
        createlinks=tuple(_link(ctx, n) for n in _seq(ctx, m.get("createlinks"), "createlinks")),
        copy=tuple(_source(ctx, n) for n in _seq(ctx, m.get("copy"), "copy")),
        line=node.start_mark.line + 1,
    )


def parse_bom_text(text: str, path: str) -> BomFile:
    """Parse BOM text; ``path`` is only used in messages. Raises UserError (exit 253)."""
    ctx = _Ctx(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a control character or bad encoding: no .problem
        raise UserError(f"invalid YAML: {exc.reason} (character {exc.character!r} at byte "
                        f"{exc.position})", where=path, exit_code=EXIT_INVALID_BOM) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = " ".join((getattr(exc, "problem", None) or str(exc)).split())
        raise UserError(f"invalid YAML: {problem}", where=where, exit_code=EXIT_INVALID_BOM) from None
    except RecursionError:
        raise UserError("invalid YAML: nested too deeply", where=path,
                        exit_code=EXIT_INVALID_BOM) from None
    if root is None:
        raise UserError("empty BOM file (expected a mapping with 'targets' and/or 'includes')",
                        where=path, exit_code=EXIT_INVALID_BOM)
    m = _mapping(ctx, root, "the BOM", ("includes", "excludes", "targets"))
    bom = BomFile(
        path=path,
        includes=_string_list(ctx, m.get("includes"), "includes") or (),
        excludes=_string_list(ctx, m.get("excludes"), "excludes") or (),
        targets=tuple(_target(ctx, n) for n in _seq(ctx, m.get("targets"), "targets")),
        warnings=(),
    )
    return BomFile(bom.path, bom.includes, bom.excludes, bom.targets, tuple(ctx.warnings))


def read_bom_file(path: str) -> BomFile:
    """Read and parse one BOM file; unreadable files are exit 255 like copy_bom."""
    text = read_user_text(path, "BOM file", exit_code=EXIT_FILE_NOT_FOUND)
    return parse_bom_text(text, path)
