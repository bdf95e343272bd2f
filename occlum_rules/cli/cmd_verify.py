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
    The signing key must be reachable from the copy (in the workspace, or an absolute path).
  * ``verify INSTANCE_DIR``: check an instance's SEFS images against their .ROOT_MAC files,
    that the LibOS's .builtin_config holds the protected config's MAC, and that the signed
    enclave's identity matches build/measurements.json.

The tarball is only ever streamed: nothing is extracted, no link is followed, and members
with absolute or ``..`` names or links leaving the package are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from occlum_rules.errors import UserError

SIGNED = "build/lib/libocclum-libos.signed.so"


def _sha256(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _default_manifest(package: Path) -> Path:
    stem = package.name[: -len(".tar.gz")] if package.name.endswith(".tar.gz") else package.stem
    return package.with_name(f"{stem}.manifest.json")


def _load_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no release manifest (pass --manifest)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("package"), dict) or not isinstance(
            data.get("contents"), list):
        raise UserError(f"{path}: not an occlum-rules release manifest")
    return data


# --------------------------------------------------------------------------- package

def verify_package(package: Path, manifest_path: Path | None) -> tuple[list[str], dict]:
    """(problems, identity read from the package). No problems means it verified."""
    from occlum_rules.stages.package import compare_contents, parse_sha256sums, read_package
    from occlum_rules.stages.sign import read_signed_info

    if not package.is_file():
        raise UserError(f"{package}: no such package file")
    manifest_path = manifest_path or _default_manifest(package)
    manifest = _load_manifest(manifest_path)
    problems: list[str] = []
    digest, size = _sha256(package)
    want = manifest["package"]
    top = want.get("top")
    kept: dict[str, bytes] = {}
    signed_name = f"{top}/{SIGNED}" if top else None
    contents = read_package(package, on_file=kept.__setitem__,
                            keep=lambda name: name == signed_name)
    expected = manifest["contents"]
    if contents.error:
        # only what was read can be compared; the rest was never reached
        read = {m["path"] for m in contents.members}
        reached = [m for m in expected if m["path"] in read]
        problems += compare_contents(contents.members, reached, want.get("source_date_epoch"))
        problems.append(f"{contents.error} ({len(expected) - len(reached)} of {len(expected)} "
                        "members not checked)")
    else:
        problems += compare_contents(contents.members, expected, want.get("source_date_epoch"))
        if contents.top != top:
            problems.insert(0, f"top directory is {contents.top!r}, manifest says {top!r}")
    if digest != want.get("sha256") or size != want.get("size"):
        framing = "" if problems else (
            "; every member matches, so the difference is in the gzip/tar framing")
        problems.append(f"sha256 {digest} ({size} bytes) does not match the manifest's "
                        f"{want.get('sha256')} ({want.get('size')} bytes){framing}")
    sums = package.with_name("SHA256SUMS")
    if sums.is_file():
        listed = parse_sha256sums(sums.read_text())
        for path, actual in ((package, digest),
                             (manifest_path, hashlib.sha256(manifest_path.read_bytes()).hexdigest())):
            if path.parent.resolve() == sums.parent.resolve() and path.name in listed and (
                    listed[path.name] != actual):
                problems.append(f"{path.name}: does not match its line in SHA256SUMS")
    identity: dict = {}
    if signed_name in kept:
        try:
            identity = read_signed_info(kept[signed_name])
        except UserError as exc:
            problems.append(f"{signed_name}: {exc}")
        else:
            enclave = manifest.get("enclave", {})
            for key in ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn"):
                if identity.get(key) != enclave.get(key):
                    problems.append(f"{signed_name}: {key.upper()} {identity.get(key)} differs "
                                    f"from the manifest's {enclave.get(key)}")
    elif not contents.error and not any(p.startswith(f"{signed_name}:") for p in problems):
        problems.append(f"{signed_name}: missing from the package")
    return problems, identity


def _print_identity(identity: dict, manifest: dict) -> None:
    enclave = manifest.get("enclave", {})
    if identity:
        print(f"MRENCLAVE: {identity['mrenclave']}")
        print(f"MRSIGNER:  {identity['mrsigner']}")
        print(f"ISVPRODID: {identity['isv_prod_id']}  ISVSVN: {identity['isv_svn']}  "
              f"DEBUG: {'allowed' if identity['debug_allowed'] else 'disabled'}")
    print(f"SGX mode: {enclave.get('sgx_mode')}  Occlum: {enclave.get('occlum_version')}")


# --------------------------------------------------------------------------- rebuild

def _copy_sources(ws, dest: Path) -> None:
    """The workspace as a fresh checkout would have it: no outputs, caches or VCS data."""
    root = ws.root
    skip = {ws.out.resolve()}
    cache = ws.cache_dir()
    if cache.is_relative_to(root) and cache != root:
        skip.add(cache)
    keep_git = ws.source_date_epoch_policy == "git"

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        skipped = {n for n in names if n in ("__pycache__", ".pytest_cache")
                   or (here / n).resolve() in skip}
        if here == root and not keep_git and ".git" in names:
            skipped.add(".git")
        return skipped

    shutil.copytree(root, dest, symlinks=True, ignore=ignore)


def rebuild(target: str, package: Path | None, keep: bool, workspace: Path | None = None) -> int:
    from occlum_rules.cli.common import load
    from occlum_rules.core.labels import parse_label
    from occlum_rules.stages.package import first_difference

    manifest = None
    if package is not None:
        manifest = _load_manifest(_default_manifest(package))
        target = manifest.get("label")
        if not target:
            raise UserError(f"{package}: its manifest names no target to rebuild")
    label = parse_label(target)
    ws, graph = load(workspace or Path.cwd())
    found = graph.targets.get(label)
    if found is None or "package" not in (found.providers or {}):
        raise UserError(f"{label} is not an occlum_package target of the workspace at {ws.root}")
    rel = found.providers["package"]["tarball"].path
    original = package or ws.root / rel
    if not original.is_file():
        raise UserError(f"{original}: not built yet; run `doit {label}` first")
    if manifest is None:
        manifest = _load_manifest(_default_manifest(original))
    tmp = Path(tempfile.mkdtemp(prefix="occlum-rules-verify-"))
    try:
        checkout = tmp / "checkout"
        _copy_sources(ws, checkout)
        env = dict(os.environ)
        env.update({"OCCLUM_RULES_CACHE": str(tmp / "cache"), "OCCLUM_RULES_REMOTE_CACHE": "off",
                    "SOURCE_DATE_EPOCH": str(manifest["package"].get("source_date_epoch", 0))})
        env.pop("OCCLUM_RULES_RUN_ID", None)
        print(f"rebuilding {label} from a copy of {ws.root} in {checkout} (empty cache)",
              file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "doit", str(label)], cwd=checkout, env=env,
                              capture_output=True, text=True)
        rebuilt = checkout / rel
        if proc.returncode != 0 or not rebuilt.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise UserError(f"rebuilding {label} failed:\n{tail}")
        a, _ = _sha256(original)
        b, _ = _sha256(rebuilt)
        if a == b:
            print(f"OK: the rebuilt {rebuilt.name} is byte-identical (sha256 {a})")
            return 0
        where = first_difference(original, rebuilt) or "the gzip stream (members are identical)"
        print(f"DIFFERENT: the rebuilt {rebuilt.name} has sha256 {b}, the package {a}\n"
              f"first differing file: {where}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"kept the rebuild in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- instance

def _builtin_config(path: Path) -> bytes:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            section = ELFFile(f).get_section_by_name(".builtin_config")
            if section is None:
                raise UserError(f"{path}: no .builtin_config section")
            return section.data()
    except ELFError as exc:
        raise UserError(f"{path}: not an ELF file ({exc})") from None


def verify_instance(inst: Path, image_key: Path | None) -> list[str]:
    from occlum_rules.stages.securefs import (
        load_image_key,
        mac_text,
        read_protected_mac,
        show_mac_line,
        verify_image,
    )
    from occlum_rules.stages.sign import read_signed_info

    problems: list[str] = []
    encrypted = False
    config = inst / "build" / "image_config.json"
    if config.is_file():
        encrypted = json.loads(config.read_text()).get("image_type") == "encrypted"
    for what, rel, key in (("image", "build/mount", image_key if encrypted else None),
                           ("initfs", "build/initfs", None)):
        if what == "image" and encrypted and image_key is None:
            print(f"{what}: encrypted; pass --image-key to verify it", file=sys.stderr)
            continue
        try:
            mac = (inst / rel / ".ROOT_MAC").read_text().strip()
            entries = verify_image(inst / rel / "__ROOT", load_image_key(key) if key else None,
                                   expected_mac=mac)
            print(f"{what}: {len(entries)} entries verified, root MAC {mac}")
        except (UserError, OSError, ValueError) as exc:
            problems.append(f"{rel}: {getattr(exc, 'message', exc)}")
    protected = inst / "build" / ".Occlum_sys.json.protected"
    signed = inst / SIGNED
    try:
        conf_mac = read_protected_mac(protected)
        builtin = _builtin_config(signed)
        line = show_mac_line(conf_mac).encode()
        if not builtin.startswith(line.rstrip(b"\n")):
            problems.append(f"{SIGNED}: .builtin_config does not hold the protected config's MAC "
                            f"{mac_text(conf_mac)}")
        else:
            print(f"config: .builtin_config holds the protected config's MAC {mac_text(conf_mac)}")
        info = read_signed_info(signed)
        print(f"MRENCLAVE: {info['mrenclave']}\nMRSIGNER:  {info['mrsigner']}")
        measurements = inst / "build" / "measurements.json"
        if measurements.is_file():
            recorded = json.loads(measurements.read_text())
            for key in ("mrenclave", "mrsigner"):
                if recorded.get(key) != info[key]:
                    problems.append(f"build/measurements.json: {key} {recorded.get(key)} differs "
                                    f"from the signed enclave's {info[key]}")
            if recorded.get("config_mac") not in (None, mac_text(conf_mac)):
                problems.append("build/measurements.json: config_mac differs from the protected "
                                "config's MAC")
    except (UserError, OSError, ValueError) as exc:
        problems.append(str(getattr(exc, "message", exc)))
    return problems


# --------------------------------------------------------------------------- main

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
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    what = args.what
    if args.rebuild:
        if what.startswith("//"):
            return rebuild(what, None, args.keep, args.workspace)
        return rebuild("", Path(what).resolve(), args.keep, args.workspace)
    path = Path(what)
    if path.is_dir():
        problems = verify_instance(path, args.image_key)
        if problems:
            for p in problems:
                print(f"FAILED: {p}", file=sys.stderr)
            return 1
        print(f"OK: instance {path} verified")
        return 0
    problems, identity = verify_package(path, args.manifest)
    manifest = _load_manifest(args.manifest or _default_manifest(path))
    if problems:
        print(f"FAILED: {path}: {problems[0]}", file=sys.stderr)
        for p in problems[1:20]:
            print(f"  {p}", file=sys.stderr)
        if len(problems) > 20:
            print(f"  ... ({len(problems) - 20} more)", file=sys.stderr)
        return 1
    print(f"OK: {path.name} matches its manifest ({len(manifest['contents'])} members, "
          f"sha256 {manifest['package']['sha256']})")
    _print_identity(identity, manifest)
    return 0
