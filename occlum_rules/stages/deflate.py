"""The deflate implementations a package can be compressed with, and their identity.

Any conforming deflate stream inflates to the same bytes, but the compressed bytes depend
on the implementation, its version and the level. The package therefore names the
compressor that made it (:attr:`Deflater.identity`, in the release manifest and in every
key that covers compressed bytes), and a release records the sha256 of its uncompressed tar
stream too, so a rebuild with another compressor can still be checked.

``zlib-ng`` (the pinned ``zlib-ng`` wheel, which bundles its own zlib-ng library) is the
default: at the package's default level 6 it compresses within 2 % of the standard zlib's
size and 1.4–2.8x faster (bench/package.py; the README has the numbers). The standard
``zlib`` is the fallback where the wheel cannot be imported.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from occlum_rules.errors import UserError

DEFAULT = "zlib-ng"
NAMES = ("zlib-ng", "zlib")


@dataclass(frozen=True)
class Deflater:
    """One deflate implementation at one version; ``module`` has zlib's compressobj API."""

    name: str
    version: str
    module: Any

    @property
    def identity(self) -> str:
        """What changes the compressed bytes: the implementation and its version."""
        return f"{self.name} {self.version}"

    def raw(self, level: int) -> Any:
        """A raw deflate compressor (no zlib or gzip wrapper) with an empty dictionary."""
        return self.module.compressobj(level, self.module.DEFLATED, -15)

    def segment(self, data: bytes | bytearray | memoryview, level: int) -> bytes:
        """``data`` as deflate blocks ending byte-aligned and not final (a full flush), so
        independently made segments concatenate into one stream."""
        c = self.raw(level)
        return c.compress(data) + c.flush(self.module.Z_FULL_FLUSH)

    def crc32(self, data: bytes | bytearray | memoryview) -> int:
        """The gzip CRC-32 (the same function everywhere; zlib-ng's is several times faster
        than the system zlib's, which is why it is asked of the implementation)."""
        return self.module.crc32(data)

    def final(self, data: bytes, level: int) -> bytes:
        c = self.raw(level)
        return c.compress(data) + c.flush(self.module.Z_FINISH)


def _zlib_ng() -> ModuleType | None:
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return None
    return zlib_ng


ZLIB = Deflater("zlib", zlib.ZLIB_RUNTIME_VERSION, zlib)


def deflater(name: str) -> Deflater:
    """The implementation called ``name`` on this machine, or a UserError saying why not."""
    if name == "zlib":
        return ZLIB
    if name == "zlib-ng":
        module = _zlib_ng()
        if module is None:
            raise UserError("deflate implementation 'zlib-ng' is not installed here "
                            "(pip install zlib-ng, or set OCCLUM_RULES_DEFLATE=zlib)")
        from zlib_ng import __version__ as wheel
        return Deflater("zlib-ng", f"{module.ZLIBNG_RUNTIME_VERSION} (python-zlib-ng {wheel})",
                        module)
    raise UserError(f"unknown deflate implementation {name!r}: expected one of "
                    f"{', '.join(NAMES)}")


def preferred(requested: str | None = None) -> Deflater:
    """``requested`` when given, else the default when it is installed, else zlib."""
    if requested:
        return deflater(requested)
    return deflater(DEFAULT) if _zlib_ng() is not None else ZLIB
