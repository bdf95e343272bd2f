"""Reading Occlum.json text the way serde_json does, with errors that point at line:column.

Objects are kept as :class:`JsonObject` (the key/value pairs in document order) instead of
dicts, because the two kinds of object in Occlum.json treat a repeated key differently:
in a typed struct (``resource_limits``, a mount, ...) serde rejects it ("duplicate
field"), while inside free-form ``env``/``entry_points`` the last one silently wins.
The schema layer decides which rule applies; this layer only keeps the evidence.
"""

from __future__ import annotations

import json
from typing import Any

from occlum_rules.errors import UserError
from occlum_rules.stages.config.json_numbers import parse_json_number


class JsonObject:
    """A JSON object as its ``(key, value)`` pairs, duplicates and order preserved."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]):
        self.pairs = list(pairs)

    def __iter__(self):
        return iter(self.pairs)

    def __repr__(self) -> str:
        return f"JsonObject({self.pairs!r})"

    def to_dict(self) -> dict[str, Any]:
        """Last value wins, as in serde_json::Value."""
        return dict(self.pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def find_comment(text: str) -> int | None:
    """Offset of the first ``//`` or ``/*`` outside a JSON string, or None.

    Occlum's documentation shows Occlum.json with comments, but JSON (and gen_internal_conf)
    has none; finding them lets the error say so instead of "expecting property name".
    """
    in_string = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "/" and text[i + 1 : i + 2] in ("/", "*"):
            return i
        i += 1
    return None



def _after_trailing_comma(text: str, pos: int) -> int:
    """Python 3.13 points at a trailing comma, older releases (and serde_json) at the bracket."""
    if pos < len(text) and text[pos] == ",":
        after = len(text) - len(text[pos + 1 :].lstrip(" \t\r\n"))
        if after < len(text) and text[after] in "}]":
            return after
    return pos


def _is_trailing_comma(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t\r\n")
    return pos < len(text) and text[pos] in "}]" and before.endswith(",")

def parse_json_text(data: bytes | str, source: str = "Occlum.json") -> Any:
    """Parse JSON text into plain values with :class:`JsonObject` objects.

    Numbers follow serde_json (see :mod:`json_numbers`). Rejected like serde_json does:
    a byte-order mark, invalid UTF-8, comments, trailing characters, NaN/Infinity, lone
    surrogate escapes. Errors are :class:`UserError` with ``source:line:column``.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, col = _line_col(data[: exc.start].decode("utf-8", "replace"), exc.start)
            raise UserError("the file is not valid UTF-8", f"{source}:{line}:{col}") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        raise UserError("invalid JSON: a UTF-8 byte-order mark is not allowed", f"{source}:1:1")
    try:
        tree = json.loads(
            text,
            object_pairs_hook=JsonObject,
            parse_int=parse_json_number,
            parse_float=parse_json_number,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as exc:
        message, pos = exc.msg, exc.pos
        comment = find_comment(text)
        if comment is not None and comment <= pos:
            line, col = _line_col(text, comment)
            raise UserError(
                "invalid JSON: comments are not allowed in Occlum.json (JSON has no comments); "
                "remove them",
                f"{source}:{line}:{col}",
            ) from None
        pos = _after_trailing_comma(text, pos)
        if message == "Extra data":
            message = "trailing characters after the JSON value"
        elif _is_trailing_comma(text, pos):
            message = "trailing comma before the closing bracket"
        elif not text[pos:].strip(" \t\r\n"):
            # Point at the last character, as serde_json does for "EOF while parsing".
            message = "unexpected end of file (is the JSON truncated?)"
            pos = max(0, len(text.rstrip(" \t\r\n")) - 1)
        line, col = _line_col(text, pos)
        raise UserError(f"invalid JSON: {message}", f"{source}:{line}:{col}") from None
    except UserError as exc:
        raise UserError(f"invalid JSON: {exc.message}", source) from None
    except ValueError as exc:
        raise UserError(f"invalid JSON: {exc}", source) from None
    except RecursionError:
        raise UserError("invalid JSON: nested too deeply", source) from None
    _check_surrogates(tree, source)
    return tree


def _check_surrogates(value: Any, source: str) -> None:
    """serde_json refuses unpaired UTF-16 surrogate escapes; Python's json keeps them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, JsonObject):
            strings = [k for k, _ in item]
            stack.extend(v for _, v in item)
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            if any("\ud800" <= ch <= "\udfff" for ch in s):
                raise UserError(
                    f"invalid JSON: unpaired surrogate escape in string {s.encode('utf-8', 'backslashreplace').decode()!r}",
                    source,
                )


def to_plain(value: Any) -> Any:
    """A :class:`JsonObject` tree as plain dicts/lists (last duplicate key wins)."""
    if isinstance(value, JsonObject):
        return {k: to_plain(v) for k, v in value.to_dict().items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value
