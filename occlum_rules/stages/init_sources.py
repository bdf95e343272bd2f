"""Where ``occlum init``'s files come from on this machine: an install, or stand-ins.

Both image/ and initfs/ take the same files (musl runtime, /etc/localtime, glibc), so both
are planned from one :class:`InitfsSources`. With an Occlum install they are what
``occlum init`` copies. Without one the musl runtime is the host's own musl (Debian's
``musl`` package: ``/lib/ld-musl-x86_64.so.1`` and its ``libc.so``) as a STAND-IN: the
files Occlum ships come from its musl-cross-make toolchain instead; musl builds of
libstdc++, libgcc_s and libgomp have no host stand-in and are left out; there is no
Occlum glibc, so no glibc part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from occlum_rules.stages.instance_layout import InitfsSources

HOST_MUSL_LOADER = Path("/lib/ld-musl-x86_64.so.1")
HOST_MUSL_LIBC = (Path("/usr/lib/x86_64-linux-musl/libc.so"), Path("/usr/lib/musl/lib/libc.so"))
OS_LIBS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64")  # occlum init: Ubuntu's, else /usr/lib64
STANDIN_NOTE = ("occlum-rules: musl runtime: the host's musl (/lib/ld-musl-x86_64.so.1, libc.so) "
                "stands in for Occlum's in image/ and initfs/ (no Occlum install)")


def host_musl_standin() -> dict[str, str]:
    """image/lib name -> the host's musl file, for those present (no install)."""
    found: dict[str, str] = {}
    if HOST_MUSL_LOADER.exists():
        found["ld-musl-x86_64.so.1"] = str(HOST_MUSL_LOADER)
    libc = next((p for p in HOST_MUSL_LIBC if p.exists()), None)
    if libc is not None:
        found["libc.so"] = str(libc)
    return found


LOCALTIME = "/etc/localtime"
NO_LOCALTIME_NOTE = ("occlum-rules: this host has no /etc/localtime (or it points nowhere; "
                     "install tzdata): image/ and initfs/ get no etc/localtime, so the enclave "
                     "runs in UTC")


def host_localtime() -> str | None:
    """/etc/localtime when it leads to a file (minimal containers often lack tzdata)."""
    return LOCALTIME if os.path.isfile(LOCALTIME) else None  # the module's, so tests can move it


def init_sources(install: Any, init: str | None) -> InitfsSources:
    """The sources ``occlum init`` would use with ``install`` (None: the stand-ins above)."""
    localtime = host_localtime()
    if install is None:
        return InitfsSources(home="", init=init, musl_runtime=host_musl_standin(),
                             glibc_lib=None, os_lib="", localtime=localtime)
    return InitfsSources(
        home=str(install.home), init=init,
        musl_runtime={n: str(p) for n, p in install.musl_runtime().items()},
        glibc_lib=str(install.glibc_lib) if install.glibc_lib else None,
        os_lib=OS_LIBS[0] if os.path.isdir(OS_LIBS[0]) else OS_LIBS[1], localtime=localtime)
