"""``occlum-rules config check|explain Occlum.json``.

``check`` runs every rule gen_internal_conf applies (plus the root-mount check) without
writing anything, as the newest release's tool or the one ``--occlum-version`` names; ``explain`` prints the resolved enclave resources -- kernel heap init
and max, user space, TCS counts, reserved memory -- with where each number came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from occlum_rules.stages.config.explain import explain_text
from occlum_rules.stages.config.mounts import app_stages
from occlum_rules.stages.config.pipeline import SGX_MODES, resolve
from occlum_rules.stages.config.profiles import SUPPORTED, profile_for_version
from occlum_rules.user_files import read_user_file


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("occlum_json", metavar="Occlum.json", help="the Occlum.json to read")
    parser.add_argument(
        "--edmm",
        action="store_true",
        help="as on an EDMM platform (INSTANCE_IS_FOR_EDMM_PLATFORM=YES); "
        "feature.enable_edmm in the file turns EDMM on regardless",
    )
    parser.add_argument(
        "--sgx-mode",
        choices=SGX_MODES,
        default="HW",
        help="HYPER adds MarshalBufferSize (Occlum's ms_buffer build); default HW",
    )
    parser.add_argument(
        "--occlum-version",
        metavar="X.Y.Z",
        default=None,
        help=f"check and explain as this Occlum release's tool does (supported: {SUPPORTED}); "
        "default: the newest",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occlum-rules config",
        allow_abbrev=False,
        description="Validate an Occlum.json, or explain the enclave resources it asks for.",
    )
    sub = parser.add_subparsers(dest="action", metavar="{check,explain}", required=True)
    _add_common(sub.add_parser("check", help="validate only (exit 1 with the first problem)"))
    _add_common(
        sub.add_parser("explain", help="print heap, user space, TCS and reserved memory, and why")
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    profile = profile_for_version(args.occlum_version, "--occlum-version")
    path = Path(args.occlum_json)
    data = read_user_file(path)
    res = resolve(data, edmm=args.edmm, sgx_mode=args.sgx_mode, source=str(path), profile=profile)
    # the mount checks of the release (the MACs are only known at build time)
    app_stages(res.config, "", "", str(path), profile, res.warnings)
    for warning in res.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.action == "check":
        layout = "EDMM" if res.resources.edmm else "non-EDMM"
        print(f"{path}: ok ({layout} layout, SGX mode {args.sgx_mode}, {profile.label})")
    else:
        sys.stdout.write(explain_text(res, str(path)))
    return 0
