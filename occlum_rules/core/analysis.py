"""From BUILD files to actions: load packages, resolve labels, run rule implementations.

Analysis runs on every build (it is not cached); what it read is still recorded, per target
(``Target.reads``, filled by the rule's ``ctx.fs``) and for the workspace (WORKSPACE.yaml,
BUILD and macro files, the set of packages, each package's files as glob() saw them), so
:meth:`Graph.stale_inputs` can say which answers no longer hold.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from occlum_rules.core import dialect
from occlum_rules.core.action import Action
from occlum_rules.core.fileview import FileView, Read
from occlum_rules.core.labels import Label, parse_label
from occlum_rules.core.rule import (
    LABEL,
    LABEL_LIST,
    LABEL_LIST_DICT,
    SOURCE,
    SOURCE_LIST,
    File,
    Rule,
    RuleContext,
    Target,
    check_attrs,
)
from occlum_rules.core.workspace import WORKSPACE_FILE, Workspace
from occlum_rules.core.yamlcheck import did_you_mean
from occlum_rules.errors import UserError

if TYPE_CHECKING:
    from occlum_rules.toolchains.resolve import Toolchains

_TARGET_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=,@~-]*$")


class Graph:
    """Every target of a workspace and the actions their rules declare."""

    def __init__(self, ws: Workspace, rules: dict[str, Rule], toolchains: Toolchains | None = None):
        if toolchains is None:
            from occlum_rules.toolchains import Toolchains

            toolchains = Toolchains(ws)
        self.ws = ws
        self.rules = rules
        self.toolchains: Toolchains = toolchains
        self.reads: list[Read] = []   # WORKSPACE.yaml, BUILD and macro files as evaluated
        self.packages: dict[str, Path] = {}
        self.targets: dict[Label, Target] = {}
        self.actions: list[Action] = []
        self._known_files: set[str] = set()
        self._loaded: dict[str, dict[str, Any]] = {}
        self._loading: list[str] = []
        self._current_pkg: list[str] = []

    # ------------------------------------------------------------------ loading
    def discover(self) -> None:
        root = self.ws.root
        out_top = self.ws.output_dir.split("/")[0]
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            keep = []
            for d in sorted(dirnames):
                if d.startswith(".") or (rel == "" and d == out_top) or d in ("__pycache__", "node_modules"):
                    continue
                if (Path(dirpath) / d / WORKSPACE_FILE).exists():
                    continue  # a nested workspace is not part of this one
                keep.append(d)
            dirnames[:] = keep
            if self.ws.build_file in filenames:
                self.packages[rel] = Path(dirpath)
        self._record_listing("packages", "", sorted(self.packages))

    def _record_source(self, path: Path) -> None:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
        rel = self._display(path)
        self.reads.append(Read("file", rel, digest))

    def _record_listing(self, kind: str, pkg: str, names: list[str]) -> None:
        read = Read(kind, pkg, _listing_digest(names))
        if read not in self.reads:
            self.reads.append(read)

    def _answer(self, fs: FileView, read: Read) -> str:
        """Today's answer to one of the workspace's own reads (see FileView.answer)."""
        if read.kind == "packages":
            again = Graph(self.ws, self.rules, self.toolchains)
            again.discover()
            return _listing_digest(sorted(again.packages))
        if read.kind == "glob":
            base = self.ws.root / read.path
            if not (base / self.ws.build_file).is_file():
                return "absent"
            return _listing_digest(self._package_files(read.path, base))
        return fs.answer(read)

    def analysis_inputs(self) -> dict[str, list[Read]]:
        """What analysis read: ``"//"`` for the workspace's own files, then per target."""
        found = {"//": list(self.reads)}
        found.update({str(label): list(t.reads) for label, t in sorted(self.targets.items())})
        return found

    def stale_inputs(self) -> list[tuple[str, Read]]:
        """(target or "//", read) for each answer analysis used that no longer holds."""
        fs = FileView(self.ws.root, self.ws.build_file, self.ws.output_dir, [])
        return [(owner, read) for owner, reads in self.analysis_inputs().items()
                for read in reads if self._answer(fs, read) != read.digest]

    def load_all(self) -> None:
        if self.ws.config_path is not None:
            self._record_source(self.ws.config_path)
        self.discover()
        for pkg in sorted(self.packages):
            self.load_package(pkg)

    def _display(self, path: Path) -> str:
        try:
            return path.relative_to(self.ws.root).as_posix()
        except ValueError:
            return str(path)

    def load_package(self, pkg: str) -> None:
        build_path = self.packages[pkg] / self.ws.build_file
        ns = dialect.base_namespace()
        ns.update(self._package_builtins())
        self._current_pkg.append(pkg)
        try:
            dialect.evaluate(build_path, self._display(build_path), ns, self._known_files)
        finally:
            self._current_pkg.pop()
        self._record_source(build_path)

    def _package_builtins(self) -> dict[str, Any]:
        funcs: dict[str, Any] = {name: self._rule_function(rule) for name, rule in self.rules.items()}
        funcs["glob"] = self._glob
        funcs["load"] = self._load
        funcs["package_name"] = lambda: self._current_pkg[-1]
        return funcs

    def _location(self) -> str:
        return dialect.caller_location(self._known_files)

    def _rule_function(self, rule: Rule) -> Callable[..., None]:
        def rule_call(**kwargs: Any) -> None:
            location = self._location()
            if not self._current_pkg:
                raise UserError(f"{rule.name}() can only be called while a BUILD file is loaded",
                                where=location)
            pkg = self._current_pkg[-1]
            name = kwargs.get("name")
            if not isinstance(name, str) or not _TARGET_NAME_RE.match(name):
                raise UserError(f"{rule.name}(): 'name' must be a target name (letters, digits, "
                                f"_ . - + = , @ ~), got {name!r}", where=location)
            attrs = check_attrs(rule, kwargs, location)
            label = Label(pkg, name)
            if label in self.targets:
                raise UserError(f"duplicate target name '{name}' (first defined at "
                                f"{self.targets[label].location})", where=location)
            self.targets[label] = Target(label=label, rule=rule, attrs=attrs, location=location)

        rule_call.__name__ = rule.name
        return rule_call

    def _glob(self, include: list[str], exclude: list[str] | None = None,
              allow_empty: bool = True) -> list[str]:
        location = self._location()
        if isinstance(include, str) or not isinstance(include, (list, tuple)):
            raise UserError("glob() takes a list of patterns, e.g. glob([\"src/**/*.c\"])", where=location)
        exclude = list(exclude or [])
        for pattern in list(include) + exclude:
            if not isinstance(pattern, str) or pattern.startswith("/") or ".." in pattern.split("/"):
                raise UserError(f"glob pattern {pattern!r} must be relative and stay in the package",
                                where=location)
        pkg = self._current_pkg[-1]
        base = self.packages[pkg]
        files = self._package_files(pkg, base)
        self._record_listing("glob", pkg, files)
        result = sorted(f for f in files if any(_match(f, p) for p in include)
                        and not any(_match(f, p) for p in exclude))
        if not result and not allow_empty:
            raise UserError(f"glob({list(include)!r}) matched no files", where=location)
        return result

    def _package_files(self, pkg: str, base: Path) -> list[str]:
        files: list[str] = []
        out_abs = self.ws.out.resolve()
        for dirpath, dirnames, filenames in os.walk(base):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not (
                (here / d / self.ws.build_file).exists() or (here / d).resolve() == out_abs
                or d == "__pycache__"))
            rel_dir = os.path.relpath(dirpath, base)
            for f in filenames:
                if f == self.ws.build_file and rel_dir == ".":
                    continue
                rel = f if rel_dir == "." else f"{rel_dir}/{f}".replace(os.sep, "/")
                files.append(rel)
        return files

    def _load(self, label_text: str, *symbols: str, **aliases: str) -> None:
        location = self._location()
        pkg = self._current_pkg[-1] if self._current_pkg else ""
        try:
            label = parse_label(label_text, pkg)
        except UserError as exc:
            raise UserError(exc.message, where=location) from None
        path = self.ws.root / label.package / label.name
        if not path.name.endswith(".py"):
            raise UserError(f"load() expects a .py file label such as '//macros:defs.py', got "
                            f"'{label_text}'", where=location)
        key = str(label)
        if key in self._loading:
            chain = " -> ".join(self._loading + [key])
            raise UserError(f"load cycle: {chain}", where=location)
        if key not in self._loaded:
            if not path.is_file():
                raise UserError(f"load(): file '{self._display(path)}' not found", where=location)
            ns = dialect.base_namespace()
            ns.update(self._package_builtins())
            self._loading.append(key)
            try:
                dialect.evaluate(path, self._display(path), ns, self._known_files)
            finally:
                self._loading.pop()
            self._record_source(path)
            self._loaded[key] = {k: v for k, v in ns.items() if not k.startswith("_")}
        exported = self._loaded[key]
        frame_globals = _caller_globals(self._known_files)
        wanted = [(s, s) for s in symbols] + list(aliases.items())
        for local, remote in wanted:
            if not isinstance(remote, str) or remote not in exported or remote in self.rules:
                hint = did_you_mean(str(remote), sorted(exported))
                raise UserError(f"load(): '{remote}' is not defined in {key}{hint}", where=location)
            frame_globals[local] = exported[remote]

    # ------------------------------------------------------------------ resolution
    def _resolve_ref(self, target: Target, ref: str, allow_file: bool) -> Any:
        pkg = target.label.package
        if allow_file and not (ref.startswith(":") or ref.startswith("//")):
            if ref.startswith("/") or ".." in ref.split("/") or ref == "":
                raise UserError(f"source '{ref}' must be a path inside the package "
                                "(no '..' and not absolute)", where=target.location)
            path = f"{pkg}/{ref}" if pkg else ref
            full = self.ws.root / path
            if (self.ws.root / path).exists():
                return File(path=path, is_dir=full.is_dir())
            same = Label(pkg, ref)
            if same in self.targets:
                return self.targets[same]
            raise UserError(f"missing source file '{path}'", where=target.location)
        try:
            label = parse_label(ref, pkg)
        except UserError as exc:
            raise UserError(exc.message, where=target.location) from None
        if label not in self.targets:
            if allow_file and label.package in self.packages:
                path = f"{label.package}/{label.name}" if label.package else label.name
                full = self.ws.root / path
                if full.exists():  # a source file named by label, e.g. "//keys:dev.pem"
                    return File(path=path, is_dir=full.is_dir())
            if label.package not in self.packages:
                raise UserError(f"no package '{label.package}' for label '{ref}' (no "
                                f"{self.ws.build_file} there)", where=target.location)
            names = [t.name for t in self.targets if t.package == label.package]
            hint = did_you_mean(label.name, names)
            raise UserError(f"no target named '{label.name}' in //{label.package}{hint}",
                            where=target.location)
        return self.targets[label]

    def resolve(self) -> None:
        for target in self.targets.values():
            resolved: dict[str, Any] = {}
            for key, value in target.attrs.items():
                spec = target.rule.attrs[key]
                if value is None:
                    resolved[key] = value
                elif spec.kind == LABEL:
                    resolved[key] = self._resolve_ref(target, value, allow_file=False)
                elif spec.kind == LABEL_LIST:
                    resolved[key] = [self._resolve_ref(target, v, allow_file=False) for v in value]
                elif spec.kind == SOURCE:
                    resolved[key] = self._resolve_ref(target, value, allow_file=True)
                elif spec.kind == SOURCE_LIST:
                    resolved[key] = [self._resolve_ref(target, v, allow_file=True) for v in value]
                elif spec.kind == LABEL_LIST_DICT:
                    resolved[key] = {k: [self._resolve_ref(target, v, allow_file=True) for v in vs]
                                     for k, vs in value.items()}
                else:
                    resolved[key] = value
            target.resolved = resolved

    def deps_of(self, target: Target) -> list[Target]:
        return target.direct_deps()

    def order(self) -> list[Target]:
        """Targets in dependency order; a cycle is an error naming the whole loop."""
        done: set[Label] = set()
        active: list[Target] = []
        result: list[Target] = []

        def visit(t: Target) -> None:
            if t.label in done:
                return
            if t in active:
                loop = active[active.index(t):] + [t]
                chain = " -> ".join(str(x.label) for x in loop)
                raise UserError(f"dependency cycle: {chain}", where=loop[0].location)
            active.append(t)
            for dep in self.deps_of(t):
                visit(dep)
            active.pop()
            done.add(t.label)
            result.append(t)

        for label in sorted(self.targets):
            visit(self.targets[label])
        return result

    def analyze(self) -> list[Action]:
        self.resolve()
        seen_outputs: dict[str, str] = {}
        for target in self.order():
            ctx = RuleContext(target, self.ws, self.toolchains)
            providers = target.rule.impl(ctx)
            if not isinstance(providers, dict) or "files" not in providers:
                raise UserError(f"rule {target.rule.name} returned no 'files' provider",
                                where=target.location)
            target.providers = providers
            target.actions = list(ctx._actions)
            for action in ctx._actions:
                for out in action.outputs:
                    if out in seen_outputs:
                        raise UserError(f"output '{out}' is produced by two actions: "
                                        f"{seen_outputs[out]} and {action.id}", where=target.location)
                    seen_outputs[out] = action.id
                self.actions.append(action)
        return self.actions


def source_files(value: Any) -> list[File]:
    """Flatten a resolved source attribute: files stay, targets give their ``files``."""
    if value is None:
        return []
    if isinstance(value, File):
        return [value]
    if isinstance(value, Target):
        return list((value.providers or {})["files"])
    out: list[File] = []
    for v in value:
        out.extend(source_files(v))
    return out


def _listing_digest(names: list[str]) -> str:
    return hashlib.sha256("\0".join(names).encode()).hexdigest()


def _match(path: str, pattern: str) -> bool:
    return _match_parts(path.split("/"), pattern.split("/"))


def _match_parts(parts: list[str], pats: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_match_parts(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    if not parts:
        return False
    return fnmatch.fnmatchcase(parts[0], pats[0]) and _match_parts(parts[1:], pats[1:])


def _caller_globals(paths: set[str]) -> dict[str, Any]:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in paths:
            return frame.f_globals
        frame = frame.f_back
    raise UserError("load() must be called from a BUILD or macro file")
