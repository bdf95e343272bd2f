"""``occlum-rules protect-integrity``: drop-in for ``occlum-protect-integrity``.

    protect FILE [OUT]      write FILE.protected (or OUT), integrity-only
    show FILE [OUT]         print the verified plaintext (to OUT if given)
    show-mac FILE [OUT]     print the root MAC as xx-..-xx plus a newline (to OUT if given)
"""

from __future__ import annotations

import argparse
import os
import sys

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.config_mac import (
    protect_integrity,
    read_protected_mac,
    show_mac_line,
    show_protected,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="occlum-rules protect-integrity",
        description="Create and inspect integrity-only SGX protected files "
        "(drop-in for occlum-protect-integrity).",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    pr = sub.add_parser("protect", help="write FILE.protected (integrity-only)")
    pr.add_argument("file", metavar="FILE")
    pr.add_argument("out", metavar="OUT", nargs="?",
                    help="output path (default FILE.protected; its basename is authenticated)")
    sh = sub.add_parser("show", help="print the verified content of a protected file")
    sh.add_argument("file", metavar="PROTECTED_FILE")
    sh.add_argument("out", metavar="OUTPUT_FILE", nargs="?")
    sm = sub.add_parser("show-mac", help="print the root MAC (xx-..-xx and a newline)")
    sm.add_argument("file", metavar="PROTECTED_FILE")
    sm.add_argument("out", metavar="OUTPUT_FILE", nargs="?")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "protect":
        protect_integrity(args.file, args.out)
        return 0
    if not os.path.exists(args.file):
        raise UserError("failed to open the given protected file", args.file)
    if args.cmd == "show-mac":
        line = show_mac_line(read_protected_mac(args.file))
        if args.out:
            with open(args.out, "w") as f:
                f.write(line)
        else:
            sys.stdout.write(line)
            sys.stdout.flush()
        return 0
    # show: verify fully before creating the output, so a bad file leaves nothing behind
    read_protected_mac(args.file)
    if args.out:
        with AtomicFile(args.out, makedirs=False) as out:
            show_protected(args.file, out.file)
    else:
        sys.stdout.flush()
        show_protected(args.file, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0
