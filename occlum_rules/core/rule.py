"""Rules: an attribute schema plus an implementation that declares actions.

Implementations never touch files. They receive a :class:`RuleContext`, read resolved
attributes, declare output files and actions, and return a dict of providers (``files``,
plus whatever the rule family shares, e.g. ``static_libs`` or ``image``). What they need to
know about the file system they ask ``ctx.fs`` (:mod:`occlum_rules.core.fileview`), which
records each answer as an input of the target's analysis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from occlum_rules.core.action import Action
from occlum_rules.core.labels import Label
from occlum_rules.core.workspace import Workspace
from occlum_rules.errors import UserError

if TYPE_CHECKING:
    from occlum_rules.core.fileview import FileView, Read
    from occlum_rules.toolchains.resolve import Toolchains

# Attribute kinds. Labels and sources are resolved during analysis.
STRING = "string"
BOOL = "bool"
INT = "int"
STRING_LIST = "string_list"
STRING_DICT = "string_dict"
LABEL = "label"              # one target
LABEL_LIST = "label_list"    # targets
SOURCE = "source"            # one file in the package, or a label whose output is one file
SOURCE_LIST = "source_list"  # files in the package and/or labels
LABEL_LIST_DICT = "label_list_dict"  # {"/bin": [":app", "data.txt"]}: image paths → sources
JSON = "json"                # any JSON-like value (dicts for Occlum.json fields)
SIZE = "size"                # an int or an Occlum size string such as "64MB"

_PY_TYPES = {
    STRING: (str,), BOOL: (bool,), INT: (int,), STRING_LIST: (list, tuple),
    STRING_DICT: (dict,), LABEL: (str,), LABEL_LIST: (list, tuple), SOURCE: (str,),
    SOURCE_LIST: (list, tuple), LABEL_LIST_DICT: (dict,), JSON: (dict, list, str, int, float, bool),
    SIZE: (int, str),
}
_KIND_TEXT = {
    STRING: "a string", BOOL: "True or False", INT: "an integer", STRING_LIST: "a list of strings",
    STRING_DICT: "a dict of strings", LABEL: "a label string", LABEL_LIST: "a list of labels",
    SOURCE: "a file name or label", SOURCE_LIST: "a list of file names or labels",
    LABEL_LIST_DICT: "a dict of image directory to list of files/labels",
    JSON: "a JSON-like value", SIZE: "an integer or a size string such as '64MB'",
}


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = None
    mandatory: bool = False
    doc: str = ""
    values: tuple[str, ...] | None = None   # allowed values for strings


@dataclass(frozen=True)
class File:
    """A file or directory the build knows: a source in the workspace or an action output."""

    path: str                     # workspace-relative (or absolute for host files)
    producer: str | None = None   # action id, None for sources
    is_dir: bool = False

    def __str__(self) -> str:
        return self.path


@dataclass
class Rule:
    name: str
    attrs: dict[str, Attr]
    impl: Callable[[RuleContext], dict[str, Any]]
    doc: str = ""
    default_target: bool = True   # part of `doit build`


@dataclass
class Target:
    label: Label
    rule: Rule
    attrs: dict[str, Any]   # as written, type-checked
    location: str           # "path/BUILD.py:12"
    resolved: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, Any] | None = None
    reads: list[Read] = field(default_factory=list)  # what analysis read for its rule
    actions: list[Action] = field(default_factory=list)  # what its rule declared (provenance
    # walks these for the sources and toolchains behind a package or image)

    def direct_deps(self) -> list[Target]:
        """The targets its resolved attributes name (labels in lists and dicts too), in
        attribute order, repeats kept."""
        found: list[Target] = []

        def visit(value: Any) -> None:
            if isinstance(value, Target):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    visit(v)
            elif isinstance(value, dict):
                for v in value.values():
                    visit(v)

        visit(list(self.resolved.values()))
        return found


def check_attrs(rule: Rule, kwargs: dict[str, Any], location: str) -> dict[str, Any]:
    from occlum_rules.core.yamlcheck import did_you_mean

    attrs: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "name":
            continue
        spec = rule.attrs.get(key)
        if spec is None:
            hint = did_you_mean(key, sorted(rule.attrs))
            raise UserError(f"{rule.name}() got an unknown attribute '{key}'{hint}", where=location)
        if value is None:
            continue
        if not isinstance(value, _PY_TYPES[spec.kind]) or (
                spec.kind == INT and isinstance(value, bool)):
            raise UserError(f"{rule.name}(): attribute '{key}' must be {_KIND_TEXT[spec.kind]}, "
                            f"got {type(value).__name__} {value!r}", where=location)
        if spec.kind in (STRING_LIST, LABEL_LIST, SOURCE_LIST):
            assert isinstance(value, (list, tuple))
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                raise UserError(f"{rule.name}(): attribute '{key}' must be {_KIND_TEXT[spec.kind]}, "
                                f"found {bad[0]!r}", where=location)
            value = list(value)
        if spec.kind == STRING_DICT and not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise UserError(f"{rule.name}(): attribute '{key}' must be a dict of strings",
                            where=location)
        if spec.kind == LABEL_LIST_DICT:
            for k, v in value.items():
                if not isinstance(k, str) or not isinstance(v, (list, tuple)) or not all(
                        isinstance(x, str) for x in v):
                    raise UserError(f"{rule.name}(): attribute '{key}' must be "
                                    f"{_KIND_TEXT[spec.kind]}", where=location)
        if spec.values is not None and value not in spec.values:
            raise UserError(f"{rule.name}(): attribute '{key}' must be one of "
                            f"{', '.join(repr(v) for v in spec.values)}, got {value!r}",
                            where=location)
        attrs[key] = value
    for key, spec in rule.attrs.items():
        if key not in attrs:
            if spec.mandatory:
                raise UserError(f"{rule.name}(): missing mandatory attribute '{key}'", where=location)
            attrs[key] = spec.default() if callable(spec.default) else spec.default
    return attrs


class Actions:
    """``ctx.actions``: how implementations declare work."""

    def __init__(self, ctx: RuleContext):
        self._ctx = ctx

    def _common(self, name: str, inputs: Sequence[File | str],
                outputs: list[File]) -> tuple[list[str], dict[str, str], list[str]]:
        in_paths: list[str] = []
        producers: dict[str, str] = {}
        for f in inputs:
            if isinstance(f, File):
                in_paths.append(f.path)
                if f.producer:
                    producers[f.path] = f.producer
            else:
                in_paths.append(str(f))
        unique = list(dict.fromkeys(in_paths))
        upstream = sorted(set(producers.values()))
        return unique, producers, upstream

    def _add(self, action: Action) -> None:
        self._ctx._actions.append(action)

    def run(self, name: str, kind: str, argv: Sequence[File | str], inputs: Sequence[File | str],
            outputs: list[File],
            toolchains: list[str] | None = None, env: dict[str, str] | None = None,
            description: str = "") -> None:
        """A command line. ``argv`` items may be File objects: outputs become placeholders
        resolved to the scratch location at run time; inputs become their paths."""
        action_id = self._ctx.action_id(name)
        out_index = {f.path: i for i, f in enumerate(outputs)}
        rendered: list[str] = []
        for item in argv:
            if isinstance(item, File) and item.path in out_index:
                rendered.append(f"${{OUT:{out_index[item.path]}}}")
            else:
                rendered.append(str(item))
        ins, producers, upstream = self._common(name, inputs, outputs)
        self._add(Action(
            id=action_id, label=str(self._ctx.label), name=name, kind=kind, inputs=ins,
            outputs=[f.path for f in outputs], output_types=["dir" if f.is_dir else "file" for f in outputs],
            argv=rendered, toolchains=list(toolchains or []), env=dict(env or {}),
            producers=upstream, input_producers=producers, description=description or name))
        self._claim(outputs, action_id)

    def stage(self, name: str, kind: str, func: str, inputs: Sequence[File | str],
              outputs: list[File], params: dict[str, Any] | None = None, toolchains: list[str] | None = None,
              secrets: dict[str, str] | None = None, in_place: bool = False,
              cacheable: bool = True, description: str = "",
              ensure_dirs: list[str] | None = None,
              prune_dirs: dict[str, list[str]] | None = None, local_only: str = "") -> None:
        """A Python stage function ``module:function(ctx: StageContext)``. ``local_only``:
        why it may not run on a remote worker (it reads more of the workspace than its
        inputs name, say), or empty."""
        action_id = self._ctx.action_id(name)
        ins, producers, upstream = self._common(name, inputs, outputs)
        self._add(Action(
            id=action_id, label=str(self._ctx.label), name=name, kind=kind, inputs=ins,
            outputs=[f.path for f in outputs], output_types=["dir" if f.is_dir else "file" for f in outputs],
            func=func, params=dict(params or {}), toolchains=list(toolchains or []),
            secrets=dict(secrets or {}), in_place=in_place, cacheable=cacheable,
            producers=upstream, input_producers=producers, description=description or name,
            ensure_dirs=list(ensure_dirs or []),
            prune_dirs={d: sorted(names) for d, names in (prune_dirs or {}).items()},
            local_only=local_only))
        self._claim(outputs, action_id)

    def _claim(self, outputs: list[File], action_id: str) -> None:
        for f in outputs:
            if f.producer != action_id:
                raise UserError(f"internal: output {f.path} declared for another action")


class RuleContext:
    """What a rule implementation sees: its target's attributes, the workspace settings, the
    toolchains, the file-system view of analysis (``fs``) and ways to declare outputs and
    actions."""

    def __init__(self, target: Target, workspace: Workspace, toolchains: Toolchains):
        from occlum_rules.core.fileview import FileView

        self.target = target
        self.label = target.label
        self.attr = target.resolved
        self.workspace = workspace
        self.toolchains = toolchains
        self.fs: FileView = FileView(workspace.root, workspace.build_file, workspace.output_dir,
                                     target.reads)
        self.location = target.location
        self._actions: list[Action] = []
        self._declared: set[str] = set()
        self.actions = Actions(self)

    @property
    def package_out(self) -> str:
        pkg = self.label.package
        return f"{self.workspace.output_dir}/bin/{pkg}" if pkg else f"{self.workspace.output_dir}/bin"

    def action_id(self, name: str) -> str:
        return f"{self.label}:{name}"

    def declare_file(self, name: str, action: str, is_dir: bool = False,
                     private: bool = False) -> File:
        """An output under ``out/bin/<package>/<target>/`` owned by action ``action``.

        ``private`` outputs (intermediate files that are not part of what the target
        presents, such as a stand-in runtime) go under ``out/private/`` instead.
        """
        if not name or os.path.isabs(name) or ".." in name.split("/"):
            raise UserError(f"output name '{name}' must stay inside the target's output directory",
                            where=self.location)
        base = self.package_out
        if private:
            base = base.replace(f"{self.workspace.output_dir}/bin", f"{self.workspace.output_dir}/private", 1)
        path = f"{base}/{self.label.name}/{name}"
        if path in self._declared:
            raise UserError(f"output '{path}' declared twice", where=self.location)
        self._declared.add(path)
        return File(path=path, producer=self.action_id(action), is_dir=is_dir)

    def error(self, message: str) -> UserError:
        return UserError(message, where=self.location)
