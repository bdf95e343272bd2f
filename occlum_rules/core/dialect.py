"""The BUILD dialect: Python syntax, Starlark-like restrictions.

BUILD files are data with a little logic (list comprehensions, macros). They must be
deterministic and hermetic, so the checker refuses everything that could read the machine
or hide control flow: imports, classes, while loops, try, global/nonlocal, names starting
with ``_`` (which closes the dunder escape hatches) and the I/O and eval builtins. What is
left is evaluated in a fresh namespace that offers only the rules and a few pure builtins.
"""

from __future__ import annotations

import ast
import builtins
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from occlum_rules.errors import UserError

_FORBIDDEN_NODES: dict[type, str] = {
    ast.Import: "import statements are not allowed; use load()",
    ast.ImportFrom: "import statements are not allowed; use load()",
    ast.ClassDef: "class definitions are not allowed",
    ast.While: "while loops are not allowed; use a for loop over a list",
    ast.Try: "try statements are not allowed",
    ast.Global: "global statements are not allowed",
    ast.Nonlocal: "nonlocal statements are not allowed",
    ast.With: "with statements are not allowed",
    ast.AsyncFunctionDef: "async functions are not allowed",
    ast.AsyncFor: "async loops are not allowed",
    ast.AsyncWith: "async with is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "generators are not allowed",
    ast.YieldFrom: "generators are not allowed",
    ast.Raise: "raise is not allowed; call fail(\"message\")",
    ast.Delete: "del is not allowed",
}
if hasattr(ast, "TryStar"):
    _FORBIDDEN_NODES[ast.TryStar] = "try statements are not allowed"

_FORBIDDEN_CALLS = {"open", "exec", "eval", "__import__", "compile", "input", "globals",
                    "locals", "vars", "getattr", "setattr", "delattr", "breakpoint", "exit", "quit"}

_SAFE_BUILTINS = ["abs", "all", "any", "bool", "dict", "enumerate", "float", "hasattr", "int",
                  "isinstance", "len", "list", "max", "min", "range", "repr", "reversed",
                  "sorted", "str", "tuple", "zip", "True", "False", "None", "type", "set"]


def check_source(source: str, path: str) -> ast.Module:
    """Parse and refuse forbidden constructs; every error names ``path:line``."""
    nul = source.find("\0")
    if nul >= 0:  # Python < 3.12 reports this as a ValueError without a line
        line = source.count("\n", 0, nul) + 1
        raise UserError("a NUL byte in the source (BUILD files are text)", where=f"{path}:{line}")
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        at = f":{exc.lineno}" if exc.lineno else ""
        raise UserError(f"syntax error: {exc.msg}", where=f"{path}{at}") from None
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', 1)}"
        for kind, message in _FORBIDDEN_NODES.items():
            if isinstance(node, kind):
                raise UserError(message, where=where)
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            name = getattr(node, "name", None)
            for arg in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                if arg.arg.startswith("_"):
                    raise UserError(f"names starting with '_' are not allowed: '{arg.arg}'", where=where)
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            name = node.arg
        if name is not None and name.startswith("_"):
            raise UserError(f"names starting with '_' are not allowed: '{name}'", where=where)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in _FORBIDDEN_CALLS:
            raise UserError(f"{node.func.id}() is not available in BUILD files", where=where)
    return tree


class FailCalled(Exception):
    pass


def _fail(message: str = "fail() called") -> None:
    raise FailCalled(str(message))


def _print(*args: Any) -> None:
    print(*args, file=sys.stderr)


def base_namespace() -> dict[str, Any]:
    safe = {name: getattr(builtins, name) for name in _SAFE_BUILTINS if hasattr(builtins, name)}
    safe["print"] = _print
    safe["fail"] = _fail
    return {"__builtins__": safe}


def current_line(path: str) -> int:
    """Line of the innermost frame executing ``path`` (for rule calls and glob errors)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == path:
            return frame.f_lineno
        frame = frame.f_back
    return 0


def caller_location(paths: set[str]) -> str:
    """``file:line`` of the innermost BUILD/macro frame on the stack."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in paths:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def evaluate(path: Path, display: str, namespace: dict[str, Any], known_files: set[str],
             on_error: Callable[[Exception, str], UserError] | None = None) -> dict[str, Any]:
    """Check and run one BUILD or macro file in ``namespace``; map errors to ``file:line``."""
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("file not found", where=display) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=display) from None
    tree = check_source(source, display)
    try:
        code = compile(tree, display, "exec")
    except SyntaxError as exc:  # some mistakes (a repeated keyword) only show when compiling
        line = f":{exc.lineno}" if exc.lineno else ""
        raise UserError(f"syntax error: {exc.msg}", where=f"{display}{line}") from None
    known_files.add(display)
    try:
        exec(code, namespace)  # noqa: S102 - the tree was checked and builtins are restricted
    except UserError as exc:
        if exc.where is None:
            exc.where = _innermost(exc, known_files)
            exc.args = (str(exc),)
        raise
    except FailCalled as exc:
        raise UserError(f"fail: {exc}", where=_innermost(exc, known_files)) from None
    except RecursionError:
        raise UserError("recursion too deep", where=display) from None
    except Exception as exc:  # any Python error in user code becomes one located message
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NameError):
            message = f"{exc} (rules and builtins available: see the README's BUILD section)"
        raise UserError(message, where=_innermost(exc, known_files)) from None
    return namespace


def _innermost(exc: BaseException, known_files: set[str]) -> str:
    where = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename in known_files:
            where = f"{frame.f_code.co_filename}:{lineno}"
    return where or "<BUILD>"
