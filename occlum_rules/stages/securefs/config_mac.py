"""``occlum-protect-integrity``: the integrity-only protected ``.Occlum_sys.json`` and its MAC.

The LibOS opens ``build/.Occlum_sys.json.protected`` integrity-only and compares its root
MAC with the text patched into ``.builtin_config``; the clean name inside the file is the
basename of the *output* path, so the output must keep Occlum's name.
"""

from __future__ import annotations

import os

from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.mactext import mac_text
from occlum_rules.stages.securefs.pfs import ProtectedFileReader, clean_name_of, protect_file

PROTECTED_SUFFIX = ".protected"


def protect_integrity(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> bytes:
    """Protect ``src`` (integrity-only) into ``dst`` (default ``src + '.protected'``); root MAC."""
    out = os.fspath(dst) if dst is not None else os.fspath(src) + PROTECTED_SUFFIX
    if not os.path.isfile(src):
        raise UserError("cannot open the input file", os.fspath(src))
    return protect_file(src, out)


def show_mac_line(mac: bytes) -> str:
    """What ``show-mac`` prints: 47 characters and a newline (48 bytes)."""
    return mac_text(mac) + "\n"


def read_protected_mac(path: str | os.PathLike) -> bytes:
    """Root MAC of an integrity-only protected file, after verifying the whole file."""
    with ProtectedFileReader(path, expected_name=clean_name_of(path)) as r:
        for _ in r.chunks():
            pass
        return r.header.mac


def show_protected(path: str | os.PathLike, out) -> None:
    """Write the verified plaintext of an integrity-only protected file to ``out`` (binary)."""
    with ProtectedFileReader(path, expected_name=clean_name_of(path)) as r:
        for chunk in r.chunks():
            out.write(chunk)
