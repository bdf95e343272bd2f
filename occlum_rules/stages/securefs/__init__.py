"""Secure-FS build stages: SGX protected files, SEFS images, config MAC, image keys.

Pure-Python equivalents of ``occlum-protect-integrity``, ``sefs-cli zip/unzip``,
``objcopy --update-section .builtin_config`` and ``occlum gen-image-key``, byte-identical
to Occlum's tools in every deterministic mode.
"""

from occlum_rules.stages.securefs.builtin_config import patch_builtin_config
from occlum_rules.stages.securefs.config_mac import (
    protect_integrity,
    read_protected_mac,
    show_mac_line,
)
from occlum_rules.stages.securefs.image_key import (
    format_image_key,
    generate_image_key,
    key_fingerprint,
    load_image_key,
    parse_image_key,
)
from occlum_rules.stages.securefs.pfs import IntegrityError, protect_file, read_protected
from occlum_rules.stages.securefs.sefs import (
    PackResult,
    TreeEntry,
    mac_text,
    pack_image,
    parse_mac_text,
    unpack_image,
    verify_image,
)

__all__ = [
    "IntegrityError",
    "PackResult",
    "TreeEntry",
    "format_image_key",
    "generate_image_key",
    "key_fingerprint",
    "load_image_key",
    "mac_text",
    "pack_image",
    "parse_image_key",
    "parse_mac_text",
    "patch_builtin_config",
    "protect_file",
    "protect_integrity",
    "read_protected",
    "read_protected_mac",
    "show_mac_line",
    "unpack_image",
    "verify_image",
]
