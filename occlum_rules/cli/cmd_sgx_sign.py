"""``occlum-rules sgx-sign``: a drop-in for the SGX SDK's sgx_sign (sign, gendata, catsig, dump).

Same single-dash options, same stdout (the pretty-printed Enclave.xml) and stderr lines,
exit status 255 on failure, and the outputs (-out, -dumpfile, -cssfile) removed when a
command fails. The SDK profile (2.26 or Occlum's 2.20/2.21 fork) is picked from the
enclave's g_global_data.sdk_version unless -profile names one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.sign import signer
from occlum_rules.stages.sign.dump import dump_text, sigstruct_of
from occlum_rules.stages.sign.enclave_xml import render_enclave_xml
from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.profiles import PROFILES

FAIL = 255
PATH_OPTIONS = ("enclave", "config", "key", "out", "sig", "unsigned", "dumpfile", "cssfile")
MODES = {
    # mode: (required, optional)
    "sign": (("enclave", "key", "out"), ("config", "dumpfile", "cssfile")),
    "gendata": (("enclave", "out"), ("config",)),
    "catsig": (("enclave", "key", "out", "sig", "unsigned"), ("config", "dumpfile", "cssfile")),
    "dump": (("enclave", "dumpfile"), ("cssfile",)),
}
HELP = {
    "enclave": "the enclave .so to sign (or, for dump, a signed enclave)",
    "config": "Enclave.xml (sgx_sign's defaults when omitted)",
    "key": "PEM RSA-3072/e=3 key: private for sign, public (SPKI) for catsig",
    "out": "output: the signed enclave, or for gendata the 256-byte signing material",
    "sig": "the 384-byte big-endian signature over the signing material (catsig)",
    "unsigned": "the signing material made by gendata (catsig)",
    "dumpfile": "write a text dump of the metadata here",
    "cssfile": "write the raw 1808-byte SIGSTRUCT here",
}


class _Once(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f'Repeatly specified "{option_string}" option.')
        setattr(namespace, self.dest, values)


class _OnceFlag(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest):
            parser.error(f'Repeatly specified "{option_string}" option.')
        setattr(namespace, self.dest, True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occlum-rules sgx-sign", allow_abbrev=False,
        description="Drop-in sgx_sign in pure Python: sign, gendata, catsig or dump an SGX "
                    "enclave, byte-identical to Intel SDK 2.26 and Occlum's SDK 2.20/2.21 fork.",
        epilog="SIGSTRUCT's date is SOURCE_DATE_EPOCH's UTC day when set, else today. An "
               "encrypted private key takes its passphrase from OCCLUM_RULES_KEY_PASSPHRASE "
               "or asks on a terminal.",
    )
    sub = parser.add_subparsers(dest="mode", required=True, metavar="{sign,gendata,catsig,dump}")
    for mode, (required, optional) in MODES.items():
        p = sub.add_parser(mode, allow_abbrev=False, help=f"sgx_sign {mode}")
        for name in required + optional:
            p.add_argument(f"-{name}", dest=name, action=_Once, metavar="FILE",
                           required=name in required, help=HELP[name])
        p.add_argument("-ignore-rel-error", dest="ignore_rel_error", action=_OnceFlag,
                       help="sign even with text relocations")
        p.add_argument("-ignore-init-sec-error", dest="ignore_init_sec_error", action=_OnceFlag,
                       help="sign even with an .init section")
        if mode != "dump":
            p.add_argument("-resign", dest="resign", action=_OnceFlag,
                           help="sign an enclave that was signed before")
            p.add_argument("-profile", dest="profile", action=_Once, choices=sorted(PROFILES),
                           help="force an SDK profile instead of reading the enclave's sdk_version")
    return parser


def _check_distinct(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    given = [(name, getattr(args, name, None)) for name in PATH_OPTIONS]
    given = [(n, v) for n, v in given if v is not None]
    for i, (a, va) in enumerate(given):
        for b, vb in given[i + 1 :]:
            if va == vb:
                parser.error(f'Option "-{a}" and option "-{b}" are using the same file path.')


def _print_config(path: str | None) -> None:
    """sgx_sign pretty-prints Enclave.xml to stdout before anything else."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise SignError(f'Configuration file "{path}" is not found.')
    try:
        data = p.read_bytes()
    except OSError:
        raise SignError(f'Failed to open file "{path}".') from None
    sys.stdout.write(render_enclave_xml(data))
    sys.stdout.flush()


def _run(args: argparse.Namespace) -> list[str]:
    mode = args.mode
    if mode == "dump":
        area, _ = signer.metadata_area(Path(args.enclave))
        signer.write_output(Path(args.dumpfile), dump_text(area).encode())
        if args.cssfile:
            signer.write_output(Path(args.cssfile), sigstruct_of(area))
        print("Succeed.")
        return []
    _print_config(args.config)
    config = Path(args.config).read_bytes() if args.config else None
    common = dict(profile=args.profile, resign=args.resign, ignore_rel_error=args.ignore_rel_error,
                  ignore_init_sec_error=args.ignore_init_sec_error)
    if mode == "gendata":
        return signer.gendata(Path(args.enclave), config, Path(args.out), **common).log
    if mode == "sign":
        result = signer.sign_enclave(Path(args.enclave), config, Path(args.key), Path(args.out), **common)
    else:
        result = signer.catsig(Path(args.enclave), config, Path(args.key), Path(args.sig),
                               Path(args.unsigned), Path(args.out), **common)
    if args.dumpfile:
        signer.write_output(Path(args.dumpfile), dump_text(result.metadata).encode())
    if args.cssfile:
        signer.write_output(Path(args.cssfile), result.sigstruct)
    return result.log


def main(argv: list[str]) -> int:
    parser = build_parser()
    if argv in (["-help"], ["-version"]):  # sgx_sign's own spellings
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    _check_distinct(args, parser)
    try:
        log = _run(args)
    except UserError as exc:
        # like sgx_sign: its own lines, no file-name prefix
        lines = exc.log_before + exc.tool_lines if isinstance(exc, SignError) else [str(exc)]
        sys.stderr.write("".join(line + "\n" for line in lines))
        for name in ("out", "dumpfile", "cssfile"):
            path = getattr(args, name, None)
            if path:
                Path(path).unlink(missing_ok=True)
        return FAIL
    sys.stderr.write("".join(line + "\n" for line in log))
    return 0
