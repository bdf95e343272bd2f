"""Labels name targets across packages, as in Bazel: ``//pkg/path:name``.

A package is a directory (relative to the workspace root, with ``/`` separators) that holds a
BUILD file. Labels are plain values so they hash, sort and print the same everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from occlum_rules.errors import UserError

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=,@~-]*(/[A-Za-z0-9_][A-Za-z0-9_.+=,@~-]*)*$")
_PKG_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True, order=True)
class Label:
    package: str
    name: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"

    @property
    def task_name(self) -> str:
        """The doit task name: the label itself, which doit accepts verbatim."""
        return str(self)


def _check_package(pkg: str, text: str) -> None:
    if pkg == "":
        return
    for part in pkg.split("/"):
        if part in ("", ".", "..") or not _PKG_PART_RE.match(part):
            raise UserError(
                f"bad label '{text}': package path must be directory names separated by '/', "
                "without '.', '..' or empty parts"
            )


def _check_name(name: str, text: str) -> None:
    if not name or not _NAME_RE.match(name) or ".." in name.split("/"):
        raise UserError(
            f"bad label '{text}': target name must be letters, digits and _.-+=,@~ "
            "(no '..', no leading '/')"
        )


def parse_label(text: str, current_package: str | None = None) -> Label:
    """Parse ``//pkg:name``, ``//pkg`` (name = last directory) or ``:name`` / ``name``.

    Relative forms need ``current_package``. Raises UserError (without location; callers add
    ``file:line``) for anything malformed.
    """
    if not isinstance(text, str):
        raise UserError(f"expected a label string, got {type(text).__name__}")
    if text.startswith("//"):
        body = text[2:]
        if ":" in body:
            pkg, name = body.split(":", 1)
        else:
            pkg = body
            name = body.rsplit("/", 1)[-1]
        pkg = pkg.rstrip("/") if pkg.endswith("/") and pkg != "/" else pkg
        _check_package(pkg, text)
        if not name:
            raise UserError(f"bad label '{text}': '//' alone names no target")
        _check_name(name, text)
        return Label(pkg, name)
    if text.startswith("@") or text.startswith("/"):
        raise UserError(f"bad label '{text}': expected '//package:name' or ':name'")
    if current_package is None:
        raise UserError(f"bad label '{text}': a relative label needs a package; use '//package:name'")
    name = text[1:] if text.startswith(":") else text
    _check_name(name, text)
    return Label(current_package, name)
