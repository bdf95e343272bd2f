"""``occlum-rules patch-builtin-config LIBOS_SO MAC_FILE``: objcopy-free config-MAC patch."""

from __future__ import annotations

import argparse

from occlum_rules.stages.securefs.builtin_config import patch_builtin_config
from occlum_rules.user_files import read_user_file


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="occlum-rules patch-builtin-config",
        description="Write MAC_FILE (show-mac output) into the .builtin_config section of "
        "LIBOS_SO in place, as `objcopy --update-section .builtin_config=MAC_FILE` does.",
    )
    p.add_argument("libos", metavar="LIBOS_SO")
    p.add_argument("mac_file", metavar="MAC_FILE")
    args = p.parse_args(argv)
    patch_builtin_config(args.libos, read_user_file(args.mac_file, "MAC file"))
    return 0
