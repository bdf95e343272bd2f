"""Stand-in LibOS sources, used when no Occlum install is found.

The stand-in binaries are NOT Occlum: they give the build a real enclave-shaped LibOS ELF (and
PAL, init, occlum-run placeholders) so the MAC patch, signing and measurement stages run end to
end. An instance built with them cannot run on SGX. The names below are imported on first
use: loading BUILD files needs only the list of sources, not the builder and its ELF checks.
"""

from typing import TYPE_CHECKING

from occlum_rules.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from occlum_rules.standin.build import (
        StandinFiles,
        build_standin,
        standin_sources,
        toolchain_identity,
    )
    from occlum_rules.standin.shape import LibosShape, check_libos_shape

__getattr__ = lazy_exports(__name__, {
    "StandinFiles": "build", "build_standin": "build", "standin_sources": "build",
    "toolchain_identity": "build", "LibosShape": "shape", "check_libos_shape": "shape",
})

__all__ = [
    "LibosShape",
    "StandinFiles",
    "build_standin",
    "check_libos_shape",
    "standin_sources",
    "toolchain_identity",
]
