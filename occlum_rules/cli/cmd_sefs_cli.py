"""``occlum-rules sefs-cli``: drop-in for Occlum's ``sefs-cli zip`` / ``unzip``.

    [--enclave LIB] zip [--key KEYFILE] DIR IMAGE MAC_FILE
    [--enclave LIB] unzip [-p] [--key KEYFILE] IMAGE DIR

``--enclave`` is accepted and ignored (no enclave is needed). Extensions: ``zip --state
FILE`` packs incrementally against a previous pack, ``--manifest FILE`` reads the tree
description from JSON; ``unzip --mac MAC_FILE`` also checks the root MAC.
"""

from __future__ import annotations

import argparse
import json
import os

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.image_key import load_image_key
from occlum_rules.stages.securefs.mactext import parse_mac_text
from occlum_rules.stages.securefs.sefs import pack_image
from occlum_rules.stages.securefs.sefs_verify import unpack_image
from occlum_rules.user_files import read_user_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="occlum-rules sefs-cli",
        description="Create or extract SEFS images (drop-in for Occlum's sefs-cli).",
    )
    p.add_argument("-e", "--enclave", metavar="LIB", help="ignored (accepted for compatibility)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    z = sub.add_parser("zip", help="create a new IMAGE for DIR and write its root MAC to MAC_FILE")
    z.add_argument("dir", metavar="DIR", help="source directory")
    z.add_argument("image", metavar="IMAGE", help="target SEFS image directory (__ROOT)")
    z.add_argument("mac", metavar="MAC_FILE", help="root MAC output (xx-..-xx, no newline)")
    z.add_argument("-k", "--key", metavar="KEYFILE", help="encrypt with this image key")
    z.add_argument("--state", metavar="FILE",
                   help="incremental: reuse the pack recorded in FILE (IMAGE may exist)")
    z.add_argument("--manifest", metavar="FILE",
                   help="JSON list of {path,type,mode,size,sha256,target} describing DIR")
    z.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show live progress (default: on a terminal, for big images)")
    u = sub.add_parser("unzip", help="verify IMAGE and extract it into a new DIR")
    u.add_argument("image", metavar="IMAGE", help="source SEFS image directory (__ROOT)")
    u.add_argument("dir", metavar="DIR", help="target directory (must not exist)")
    u.add_argument("-p", "--protect-integrity", action="store_true",
                   help="the image is integrity-only (needed unless --key is given)")
    u.add_argument("-k", "--key", metavar="KEYFILE", help="decrypt with this image key")
    u.add_argument("--mac", metavar="MAC_FILE", help="also require this root MAC")
    return p


def _write_mac(path: str, text: str) -> None:
    with AtomicFile(path, makedirs=False) as f:
        f.write(text.encode())


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    key = load_image_key(args.key) if args.key else None
    if args.cmd == "zip":
        if os.path.lexists(args.image) and not args.state:
            raise UserError("image directory already exists (sefs-cli creates it)", args.image)
        manifest = None
        if args.manifest:
            text = read_user_text(args.manifest, "manifest")
            try:
                manifest = json.loads(text)
            except ValueError as exc:
                raise UserError(f"cannot read manifest: {exc}", args.manifest) from None
            if not isinstance(manifest, list):
                raise UserError("manifest must be a JSON list", args.manifest)
        result = pack_image(args.dir, args.image, key=key, state_path=args.state,
                            manifest=manifest, progress=args.progress)
        _write_mac(args.mac, result.mac_text)
        print("Generate the SEFS image successfully")
        return 0
    if key is None and not args.protect_integrity:
        raise UserError(
            "without --key the image must be integrity-only (-p); SGX auto-key images "
            "can only be opened inside an enclave"
        )
    expected = None
    if args.mac:
        expected = parse_mac_text(read_user_text(args.mac, "MAC file"))
    unpack_image(args.image, args.dir, key, expected_mac=expected)
    print("Decrypt the SEFS image successfully")
    return 0
