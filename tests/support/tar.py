"""Unpacking archives the tests made themselves, on every Python the project supports."""

from __future__ import annotations

import tarfile
from pathlib import Path


def extract_all(archive: Path, dst: Path) -> None:
    """Unpack keeping permission bits.

    ``filter="tar"`` (which keeps modes and refuses escaping members) exists only from Python
    3.10.12 / 3.11.4; Debian 12 ships 3.11.2, where the archive, made by the test itself, is
    unpacked without it.
    """
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dst, filter="tar")
        else:
            tar.extractall(dst)  # noqa: S202 - the test wrote this archive
