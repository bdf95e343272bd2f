"""Stand-in LibOS sources, used when no Occlum install is found.

The stand-in binaries are NOT Occlum: they give the build a real enclave-shaped LibOS ELF (and
PAL, init, occlum-run placeholders) so the MAC patch, signing and measurement stages run end to
end. An instance built with them cannot run on SGX.
"""

from occlum_rules.standin.build import (
    StandinFiles,
    build_standin,
    standin_sources,
    toolchain_identity,
)
from occlum_rules.standin.shape import LibosShape, check_libos_shape

__all__ = [
    "LibosShape",
    "StandinFiles",
    "build_standin",
    "check_libos_shape",
    "standin_sources",
    "toolchain_identity",
]
