"""Files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str | os.PathLike, *parts, mode: int | None = None) -> None:
    """Write ``parts`` (bytes-like) to a temporary file beside ``path``, then rename it into
    place: a reader, or a build killed half-way, never sees half a file. The temporary name
    carries the process id, so parallel workers writing the same file do not collide."""
    path = os.fspath(path)
    parent, name = os.path.split(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
