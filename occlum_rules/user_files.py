"""Reading a file the user named: its bytes, or one UserError that names it.

Every file the user points the build at (Occlum.json, a BOM, WORKSPACE.yaml, an image
key, a MAC file) is read through here, so a missing, unreadable or undecodable file is
always reported the same way (``<file>: <what> not found`` / ``cannot read <what>: <reason>``
/ ``not UTF-8 text``) and never as a traceback.
"""

from __future__ import annotations

import os

from occlum_rules.errors import UserError


def _unreadable(path: str | os.PathLike[str], what: str | None, where: str | None,
                exit_code: int, exc: OSError) -> UserError:
    place = where or os.fspath(path)
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{what or 'file'} not found", place, exit_code)
    reason = exc.strerror or str(exc)
    return UserError(f"cannot read{' ' + what if what else ''}: {reason}", place, exit_code)


def read_user_file(path: str | os.PathLike[str], what: str | None = None, *,
                   where: str | None = None, exit_code: int = 1) -> bytes:
    """The bytes of ``path``. ``what`` names the kind of file in the message ("image key
    file"); ``where`` replaces the path in front of it (e.g. ``--user_json x.json``)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _unreadable(path, what, where, exit_code, exc) from None


def read_user_text(path: str | os.PathLike[str], what: str | None = None, *,
                   where: str | None = None, exit_code: int = 1) -> str:
    """The UTF-8 text of ``path`` (universal newlines, like ``open(path).read()``)."""
    data = read_user_file(path, what, where=where, exit_code=exit_code)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where or os.fspath(path), exit_code) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
