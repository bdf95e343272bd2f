"""``occlum-rules measure``: MRENCLAVE (and for signed enclaves MRSIGNER etc.) of an enclave.

Three forms:
  * ``--enclave SO --config Enclave.xml``: compute MRENCLAVE of an (unsigned) enclave the
    way sgx_sign would, without any key;
  * ``--enclave SIGNED_SO``: read MRENCLAVE, MRSIGNER, attributes, ISVPRODID and ISVSVN
    from the SIGSTRUCT in its metadata.
  * ``//pkg:instance``: the ``build/measurements.json`` of a built instance (MRENCLAVE,
    MRSIGNER, ISVPRODID, ISVSVN, attributes, SGX mode, LibOS, the three MACs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from occlum_rules.errors import UserError
from occlum_rules.stages.sign import signer
from occlum_rules.stages.sign.profiles import PROFILES


def measure_unsigned(enclave: Path, config: Path | None, profile: str | None = None) -> dict:
    m = signer.measure_enclave(enclave, config, profile=profile, resign=True,
                               ignore_rel_error=True, ignore_init_sec_error=True)
    return {"mrenclave": m.mrenclave.hex(), "sdk_profile": m.profile.name}


def measure_signed(enclave: Path) -> dict:
    return signer.read_signed_info(enclave)


def render(info: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(info, indent=2, sort_keys=True)
    lines = [f"MRENCLAVE: {info['mrenclave']}"]
    if "mrsigner" in info:
        lines += [
            f"MRSIGNER: {info['mrsigner']}",
            f"ATTRIBUTES.FLAGS: {info['attributes']['flags']:#018x}",
            f"ATTRIBUTES.XFRM: {info['attributes']['xfrm']:#018x}",
            f"ISVPRODID: {info['isv_prod_id']}",
            f"ISVSVN: {info['isv_svn']}",
            f"MISCSELECT: {info['misc_select']:#010x}",
            f"DEBUG: {'allowed' if info['debug_allowed'] else 'disabled'}",
        ]
    if "sdk_profile" in info:
        lines.append(f"SDK profile: {info['sdk_profile']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occlum-rules measure", allow_abbrev=False,
        description="Print MRENCLAVE of an enclave under an Enclave.xml (no key needed), or "
                    "MRENCLAVE/MRSIGNER/attributes/ISVPRODID/ISVSVN of a signed enclave.",
    )
    parser.add_argument("label", nargs="?", help="an occlum_instance target, e.g. //app:instance")
    parser.add_argument("--enclave", type=Path, metavar="SO",
                        help="enclave .so (unsigned with --config, or signed)")
    parser.add_argument("--config", type=Path, metavar="Enclave.xml",
                        help="compute MRENCLAVE under this config instead of reading a signature")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="SDK profile (default: from the enclave's g_global_data.sdk_version)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def measure_instance(label: str) -> dict:
    from occlum_rules.cli.common import built_provider

    ws, instance = built_provider(label, "instance", "occlum_instance", "measurements")
    return json.loads((ws.root / instance["measurements"].path).read_text())


def render_instance(info: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(info, indent=2, sort_keys=True)
    return "\n".join([
        f"MRENCLAVE: {info['mrenclave']}",
        f"MRSIGNER: {info['mrsigner']}",
        f"ISVPRODID: {info['isv_prod_id']}",
        f"ISVSVN: {info['isv_svn']}",
        f"ATTRIBUTES.FLAGS: {info['attributes']['flags']:#018x}",
        f"ATTRIBUTES.XFRM: {info['attributes']['xfrm']:#018x}",
        f"DEBUG: {'allowed' if info.get('debuggable') else 'disabled'}",
        f"SGX mode: {info['sgx_mode']}{' (EDMM)' if info.get('edmm') else ''}",
        f"LibOS: {info['libos']}",
        *([f"glibc: {info['glibc']}"] if info.get("glibc") else []),
        f"root FS MAC: {info['root_fs_mac']}",
        f"init FS MAC: {info['init_fs_mac']}",
        f"config MAC: {info['config_mac']}",
    ])


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.label is not None:
        if args.enclave is not None:
            raise UserError("give either a label or --enclave, not both")
        print(render_instance(measure_instance(args.label), args.format))
        return 0
    if args.enclave is None:
        raise UserError("give an occlum_instance label or --enclave SO")
    if not args.enclave.is_file():
        raise UserError("no such enclave file", str(args.enclave))
    if args.config is not None:
        info = measure_unsigned(args.enclave, args.config, args.profile)
    else:
        try:
            info = measure_signed(args.enclave)
        except UserError as exc:
            if "not signed" in str(exc):
                raise UserError(f"{exc.message}; pass --config Enclave.xml to compute its "
                                "MRENCLAVE", exc.where) from None
            raise
    print(render(info, args.format))
    return 0
