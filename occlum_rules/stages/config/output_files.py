"""Writing the generated files: whole or not at all."""

from __future__ import annotations

from pathlib import Path

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.errors import UserError


def _stage(path: Path, data: bytes) -> AtomicFile:
    """``data`` in a temporary file beside ``path``, not yet renamed.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 minus umask),
    as gen_internal_conf leaves it.
    """
    try:
        staged = AtomicFile(path, makedirs=False)
    except OSError as exc:
        raise UserError(f"cannot write: {exc.strerror}", str(path)) from None
    try:
        staged.write(data)
    except BaseException:
        staged.discard()
        raise
    return staged


def write_config_outputs(
    sdk_xml: str | Path, output_json: str | Path, enclave_xml: bytes, sys_json: bytes
) -> None:
    """Both files are staged before either is renamed, so a failure leaves both old ones."""
    staged: list[AtomicFile] = []
    try:
        for path, data in ((Path(sdk_xml), enclave_xml), (Path(output_json), sys_json)):
            staged.append(_stage(path, data))
    except BaseException:
        for f in staged:
            f.discard()
        raise
    try:
        for f in staged:  # Enclave.xml first, as gen_internal_conf writes them
            f.commit()
    finally:
        for f in staged:
            f.discard()  # a no-op for the committed ones: their temporary name is gone
