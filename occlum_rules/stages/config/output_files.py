"""Writing the generated files: whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 minus umask),
    not mkstemp's 0600, so it matches what gen_internal_conf leaves behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_config_outputs(
    sdk_xml: str | Path, output_json: str | Path, enclave_xml: bytes, sys_json: bytes
) -> None:
    """Enclave.xml first, then .Occlum_sys.json (the order gen_internal_conf uses)."""
    write_atomic(sdk_xml, enclave_xml)
    write_atomic(output_json, sys_json)
