"""Writing the generated files: whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from occlum_rules.errors import UserError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stage(path: Path, data: bytes) -> str:
    """Write ``data`` to a temporary file beside ``path``; return its name.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 minus umask),
    not mkstemp's 0600, so it matches what gen_internal_conf leaves behind.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write: {exc.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    os.replace(_stage(path, data), path)


def write_config_outputs(
    sdk_xml: str | Path, output_json: str | Path, enclave_xml: bytes, sys_json: bytes
) -> None:
    """Both files are staged before either is renamed, so a failure leaves both old ones."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in ((Path(sdk_xml), enclave_xml), (Path(output_json), sys_json)):
            staged.append((_stage(path, data), path))
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in staged:  # Enclave.xml first, as gen_internal_conf writes them
        os.replace(tmp, path)
