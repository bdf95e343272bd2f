"""``occlum-rules gen-conf``: a drop-in for Occlum's ``gen_internal_conf``.

Same flags and the same INSTANCE_IS_FOR_EDMM_PLATFORM environment variable, same bytes
out. Unlike the real tool, a bad Occlum.json is a non-zero exit with one message naming
the field, and neither output file is touched (the real tool prints the message, exits 0
and leaves both files truncated to 0 bytes).

``--occlum-version X.Y.Z`` reproduces that release's tool instead of the newest (see
occlum_rules/stages/config/profiles.py): Occlum 0.29 has no EDMM, so it does not read
INSTANCE_IS_FOR_EDMM_PLATFORM; before 0.30.1 no "Build on platform" line is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.config.json_source import parse_json_text
from occlum_rules.stages.config.output_files import write_config_outputs
from occlum_rules.stages.config.pipeline import SGX_MODES, generate_config
from occlum_rules.stages.config.profiles import SUPPORTED, profile_for_version
from occlum_rules.stages.config.schema import read_config

EDMM_ENV = "INSTANCE_IS_FOR_EDMM_PLATFORM"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occlum-rules gen-conf",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Generate Enclave.xml and .Occlum_sys.json from Occlum.json, byte-identical to "
            "Occlum's gen_internal_conf. The EDMM layout is used when the environment has "
            f"{EDMM_ENV}=YES (exactly) or Occlum.json sets feature.enable_edmm."
        ),
        epilog=(
            "example:\n  INSTANCE_IS_FOR_EDMM_PLATFORM=NO occlum-rules gen-conf --user_json Occlum.json gen_conf \\\n"
            '    --user_fs_mac "$(cat build/mount/.ROOT_MAC)" --init_fs_mac "$(cat build/initfs/.ROOT_MAC)" \\\n'
            "    --sdk_xml build/Enclave.xml --output_json build/.Occlum_sys.json"
        ),
    )
    parser.add_argument("--user_json", required=True, metavar="FILE", help="the user's Occlum.json")
    parser.add_argument(
        "--sgx-mode",
        choices=SGX_MODES,
        default=None,
        help=(
            "HYPER behaves like Occlum's ms_buffer build of the tool (adds MarshalBufferSize "
            "from resource_limits.marshal_buffer_size); default: $SGX_MODE if it is HYPER, else HW"
        ),
    )
    parser.add_argument(
        "--occlum-version",
        metavar="X.Y.Z",
        default=None,
        help=f"behave like this Occlum release's tool (supported: {SUPPORTED}); default: the newest",
    )
    sub = parser.add_subparsers(dest="command", metavar="gen_conf", required=True)
    gen = sub.add_parser("gen_conf", help="generate the image config", allow_abbrev=False)
    gen.add_argument(
        "--user_fs_mac", required=True, metavar="MAC", help="MAC of the root (user) SEFS image"
    )
    gen.add_argument(
        "--init_fs_mac", required=True, metavar="MAC", help="MAC of the init SEFS image"
    )
    gen.add_argument(
        "--output_json", required=True, metavar="FILE", help=".Occlum_sys.json to write"
    )
    gen.add_argument("--sdk_xml", required=True, metavar="FILE", help="Enclave.xml to write")
    return parser


def sgx_mode_from(option: str | None) -> str:
    if option:
        return option
    return "HYPER" if os.environ.get("SGX_MODE") == "HYPER" else "HW"


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    profile = profile_for_version(args.occlum_version, "--occlum-version")
    user_json = Path(args.user_json)
    if not user_json.is_file():
        raise UserError("file not found", f"--user_json {user_json}")
    data = user_json.read_bytes()
    platform = os.environ.get(EDMM_ENV)
    if platform is None and profile.edmm:
        # Like the real tool, a broken Occlum.json is reported before the missing variable.
        read_config(parse_json_text(data, str(user_json)), source=str(user_json), profile=profile)
        raise UserError(
            f"the environment variable {EDMM_ENV} is not set; set it to YES for an EDMM platform "
            "(HW mode with ENABLE_EDMM) or NO otherwise",
            EDMM_ENV,
        )
    edmm = platform == "YES"
    out = generate_config(
        data,
        args.user_fs_mac,
        args.init_fs_mac,
        edmm=edmm,
        sgx_mode=sgx_mode_from(args.sgx_mode),
        source=str(user_json),
        profile=profile,
    )
    for warning in out.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    write_config_outputs(args.sdk_xml, args.output_json, out.enclave_xml, out.sys_json)
    if profile.edmm_line:
        print(f"Build on platform {'WITH' if out.edmm else 'WITHOUT'} EDMM support")
    return 0
