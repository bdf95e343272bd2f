"""Load YAML with line numbers and check it against a small schema.

pyyaml's plain ``safe_load`` forgets where things were, so every error about a config file
would lose its line. We compose the node tree, check it, and only then build plain values.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occlum_rules.errors import UserError
from occlum_rules.user_files import read_user_text


@dataclass
class Field:
    """One key of a mapping: its accepted type(s) and help text for the docs."""

    kind: Any  # str|int|bool|"any"|tuple of literals|list spec ["str"]|dict schema|Union list
    doc: str = ""
    default: Any = None


@dataclass
class Schema:
    fields: dict[str, Field] = field(default_factory=dict)
    open: bool = False  # open mappings take any key (user variables)


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def compose(path: Path, text: str | None = None) -> yaml.Node | None:
    try:
        if text is None:
            text = read_user_text(path)
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:
        # its str() spans two lines; a control character is reported as one, with its line
        line = text.count("\n", 0, exc.position) + 1 if isinstance(text, str) else None
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise UserError(f"invalid YAML: character {char} is not allowed ({exc.reason})",
                        where=f"{path}:{line}" if line else str(path)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"invalid YAML: {exc.problem or exc.context}", where=f"{path}{at}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"invalid YAML: {' '.join(str(exc).split())}", where=str(path)) from None
    except RecursionError:  # pyyaml's composer recurses once per nesting level
        raise UserError("invalid YAML: nested too deeply", where=str(path)) from None


def _scalar(path: Path, node: yaml.Node) -> Any:
    try:
        return yaml.SafeLoader(""  # constructor only; no stream is read
                               ).construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:  # a bad !!binary, an unknown !!tag, ...
        raise UserError(f"invalid YAML value: {exc.problem or exc.context}",
                        where=_where(path, node)) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp on 2024-13-45
        raise UserError(f"invalid YAML value: {exc}", where=_where(path, node)) from None
    except RecursionError:
        raise UserError("invalid YAML: nested too deeply", where=_where(path, node)) from None


def check(path: Path, node: yaml.Node | None, schema: Schema, key_path: str = "") -> dict:
    """Check ``node`` against ``schema`` and return plain Python values."""
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{key_path or 'top level'}: expected a mapping", where=_where(path, node))
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = _scalar(path, key_node)
        full = f"{key_path}.{key}" if key_path else str(key)
        if not isinstance(key, str):
            raise UserError(f"key {key!r}: keys must be strings", where=_where(path, key_node))
        if key in out:
            raise UserError(f"key '{full}' appears twice", where=_where(path, key_node))
        if key not in schema.fields:
            if schema.open:
                out[key] = _scalar(path, value_node)
                continue
            hint = did_you_mean(key, list(schema.fields))
            raise UserError(f"unknown key '{full}'{hint}; expected one of: "
                            f"{', '.join(schema.fields)}", where=_where(path, key_node))
        out[key] = check_value(path, value_node, schema.fields[key].kind, full)
    return out


def _describe(kind: Any) -> str:
    if isinstance(kind, Schema):
        return "a mapping"
    if isinstance(kind, tuple):
        return "one of " + ", ".join(repr(k) for k in kind)
    if isinstance(kind, list):
        if len(kind) == 1:
            return f"a list of {_describe(kind[0])}"
        return " or ".join(_describe(k) for k in kind[1:])
    return {str: "a string", int: "an integer", bool: "true or false", dict: "a mapping"}.get(
        kind, str(kind))


def check_value(path: Path, node: yaml.Node, kind: Any, key_path: str) -> Any:
    if isinstance(kind, Schema):
        return check(path, node, kind, key_path)
    if isinstance(kind, list) and kind and kind[0] == "union":
        for option in kind[1:]:
            try:
                return check_value(path, node, option, key_path)
            except UserError:
                continue
        value = _scalar(path, node)
        raise UserError(f"key '{key_path}': expected {_describe(kind)}, got {value!r}",
                        where=_where(path, node))
    if isinstance(kind, list):
        if not isinstance(node, yaml.SequenceNode):
            raise UserError(f"key '{key_path}': expected {_describe(kind)}", where=_where(path, node))
        return [check_value(path, item, kind[0], f"{key_path}[{i}]") for i, item in enumerate(node.value)]
    value = _scalar(path, node)
    if isinstance(kind, tuple):
        if value not in kind:
            raise UserError(f"key '{key_path}': expected {_describe(kind)}, got {value!r}",
                            where=_where(path, node))
        return value
    if kind == "any":
        return value
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise UserError(f"key '{key_path}': expected {_describe(kind)}, got {value!r}",
                        where=_where(path, node))
    return value
