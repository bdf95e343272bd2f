"""``occlum-rules patch-builtin-config LIBOS_SO MAC_FILE``: objcopy-free config-MAC patch."""

from __future__ import annotations

import argparse

from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.builtin_config import patch_builtin_config


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="occlum-rules patch-builtin-config",
        description="Write MAC_FILE (show-mac output) into the .builtin_config section of "
        "LIBOS_SO in place, as `objcopy --update-section .builtin_config=MAC_FILE` does.",
    )
    p.add_argument("libos", metavar="LIBOS_SO")
    p.add_argument("mac_file", metavar="MAC_FILE")
    args = p.parse_args(argv)
    try:
        with open(args.mac_file, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise UserError(f"cannot read MAC file: {exc.strerror}", args.mac_file) from None
    patch_builtin_config(args.libos, content)
    return 0
