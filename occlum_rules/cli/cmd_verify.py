"""``occlum-rules verify``: check a release package, rebuild it, or check an instance.

Three forms:
  * ``verify PACKAGE.tar.gz [--manifest M]``: the tarball against its release manifest
    (package sha256 and size, then every member: type, mode, size, sha256, link target,
    owner 0/0 and the pinned mtime) and SHA256SUMS when it is beside the package; prints
    MRENCLAVE/MRSIGNER read from the signed LibOS inside the tarball.
  * ``verify --rebuild PACKAGE.tar.gz`` or ``verify --rebuild //pkg:target``: copy the
    workspace's sources (everything but its output directory, an in-tree cache and .git —
    .git is kept when source_date_epoch is 'git') to a temporary directory, build the package
    target there with ``doit`` under an empty cache, no remote cache and the manifest's
    SOURCE_DATE_EPOCH, then compare the bytes with the given package (or with the
    workspace's own built package for a label) and name the first differing member.
    When only the gzip bytes differ, the uncompressed tar streams of both are compared with
    the manifest's tar_sha256: equal streams made by another compressor (implementation,
    version or level, named in both manifests) pass, and the output says so.
    The signing key must be reachable from the copy (in the workspace, or an absolute path).
  * ``verify PACKAGE.tar.gz --provenance P [--provenance-key PUB.pem]`` and
    ``verify IMAGE.oci --provenance P [--provenance-key PUB.pem]``: first the provenance
    statement (``P`` is the ``.provenance.json`` or the signed ``.dsse.json``; with a key the
    DSSE signature must verify): every subject's sha256 against the package and its manifest,
    or against the image manifest of the OCI layout; then the package as above.
  * ``verify INSTANCE_DIR``: check an instance's SEFS images against their .ROOT_MAC files,
    that the LibOS's .builtin_config holds the protected config's MAC, and that the signed
    enclave's identity matches build/measurements.json.

The checks live in ``stages/verify_package.py``, ``stages/verify_instance.py`` and
``core/rebuild.py``; this module parses arguments and prints their results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from occlum_rules.stages.package import compressor_name
from occlum_rules.stages.verify_instance import InstanceCheck, verify_instance
from occlum_rules.stages.verify_package import PackageCheck, default_manifest, verify_package
from occlum_rules.stages.verify_provenance import (
    ProvenanceCheck,
    verify_image_provenance,
    verify_package_provenance,
)

MAX_SHOWN = 20  # problems listed for a failing package


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def print_package(check: PackageCheck) -> int:
    if check.problems:
        _err(f"FAILED: {check.package}: {check.problems[0]}")
        for p in check.problems[1:MAX_SHOWN]:
            _err(f"  {p}")
        if len(check.problems) > MAX_SHOWN:
            _err(f"  ... ({len(check.problems) - MAX_SHOWN} more)")
        return 1
    manifest = check.manifest
    print(f"OK: {check.package.name} matches its manifest ({len(manifest['contents'])} members, "
          f"sha256 {manifest['package']['sha256']})")
    identity, enclave = check.identity, manifest.get("enclave", {})
    if identity:
        print(f"MRENCLAVE: {identity['mrenclave']}")
        print(f"MRSIGNER:  {identity['mrsigner']}")
        print(f"ISVPRODID: {identity['isv_prod_id']}  ISVSVN: {identity['isv_svn']}  "
              f"DEBUG: {'allowed' if identity['debug_allowed'] else 'disabled'}")
    print(f"SGX mode: {enclave.get('sgx_mode')}  Occlum: {enclave.get('occlum_version')}")
    return 0


def print_instance(check: InstanceCheck) -> int:
    for image in check.images:
        if image.skipped:
            _err(f"{image.what}: {image.skipped}")
        else:
            print(f"{image.what}: {image.entries} entries verified, root MAC {image.root_mac}")
    if check.config_mac:
        print(f"config: .builtin_config holds the protected config's MAC {check.config_mac}")
    if check.identity:
        print(f"MRENCLAVE: {check.identity['mrenclave']}\nMRSIGNER:  {check.identity['mrsigner']}")
    if check.problems:
        for p in check.problems:
            _err(f"FAILED: {p}")
        return 1
    print(f"OK: instance {check.instance} verified")
    return 0


def print_provenance(check: ProvenanceCheck, what: Path) -> int:
    if check.problems:
        _err(f"FAILED: {check.problems[0]}")
        for p in check.problems[1:MAX_SHOWN]:
            _err(f"  {p}")
        return 1
    how = (f"DSSE signature verified (keyid {check.signed_by})" if check.signed_by else
           "signature NOT checked (no --provenance-key)" if check.envelope else "unsigned statement")
    print(f"OK: {what.name} matches its provenance ({len(check.statement['subject'])} subjects; "
          f"{how})")
    print(f"provenance MRENCLAVE: {check.mrenclave}")
    return 0


def provenance(args: argparse.Namespace, path: Path) -> int:
    if args.provenance_key and not args.provenance:
        _err("--provenance-key needs --provenance (the .dsse.json to check)")
        return 2
    if path.is_dir():
        if not (path / "oci-layout").is_file():
            _err(f"{path}: --provenance checks a package or an OCI image layout (image.oci), "
                 "not an instance directory")
            return 2
        return print_provenance(verify_image_provenance(args.provenance, path,
                                                        args.provenance_key), path)
    manifest = args.manifest or default_manifest(path)
    code = print_provenance(verify_package_provenance(args.provenance, path, manifest,
                                                      args.provenance_key), path)
    return code or print_package(verify_package(path, args.manifest))


def rebuild(target: str, package: Path | None, keep: bool, workspace: Path | None = None) -> int:
    from occlum_rules.core.rebuild import rebuild_package

    result = rebuild_package(target, package, keep=keep, workspace=workspace, log=_err)
    c = result.comparison
    if c.identical:
        print(f"OK: the rebuilt {result.rebuilt.name} is byte-identical (sha256 {c.original_sha256})")
        return 0
    if c.reproduced:
        release, here = (compressor_name(x) for x in c.compressors)
        print(f"OK: the rebuilt {result.rebuilt.name} holds the identical tar stream (tar_sha256 "
              f"{c.tar_sha256})")
        print(f"the compressed bytes differ only because another compressor was used: the "
              f"release was compressed by {release}, this rebuild by {here} (sha256 "
              f"{c.original_sha256} vs {c.other_sha256})")
        return 0
    why = c.explanation()
    _err(f"DIFFERENT: the rebuilt {result.rebuilt.name} has sha256 {c.other_sha256}, the package "
         f"{c.original_sha256}\nfirst differing file: {c.first_difference}"
         + (f"\n{why}" if why else ""))
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occlum-rules verify", allow_abbrev=False,
        description="Verify a release package against its manifest, rebuild it to check it is "
                    "reproducible, or verify a built instance directory.")
    parser.add_argument("what", help="PACKAGE.tar.gz, an instance directory, or (with "
                                     "--rebuild) an occlum_package label such as //app:package")
    parser.add_argument("--manifest", type=Path, metavar="M",
                        help="the release manifest (default: <name>.manifest.json beside it)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild in a temporary copy of the workspace and compare bytes")
    parser.add_argument("--keep", action="store_true", help="keep the --rebuild directory")
    parser.add_argument("--workspace", type=Path, metavar="DIR",
                        help="workspace to rebuild from (default: the one holding the current "
                             "directory)")
    parser.add_argument("--image-key", type=Path, metavar="KEY",
                        help="image key, to verify an encrypted instance image")
    parser.add_argument("--provenance", type=Path, metavar="P",
                        help="check PACKAGE.tar.gz or IMAGE.oci against this provenance "
                             "statement (.provenance.json) or DSSE envelope (.dsse.json)")
    parser.add_argument("--provenance-key", type=Path, metavar="PUB",
                        help="PEM public key (Ed25519 or ECDSA P-256) the envelope must be "
                             "signed with")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    what = args.what
    if args.rebuild:
        if what.startswith("//"):
            return rebuild(what, None, args.keep, args.workspace)
        return rebuild("", Path(what).resolve(), args.keep, args.workspace)
    path = Path(what)
    if args.provenance or args.provenance_key:
        return provenance(args, path)
    if path.is_dir():
        return print_instance(verify_instance(path, args.image_key))
    return print_package(verify_package(path, args.manifest))
