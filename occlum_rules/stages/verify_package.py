"""Check a release package against its manifest, and compare two packages byte for byte.

The tarball is only ever streamed: nothing is extracted, no link is followed, and members
with absolute or ``..`` names or links leaving the package are refused (by
:func:`occlum_rules.stages.package.read_package`). Results are returned, never printed:
the CLI decides how to show them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.digests import sha256_file
from occlum_rules.errors import UserError
from occlum_rules.stages.package import (
    compare_contents,
    first_difference,
    parse_sha256sums,
    read_package,
)
from occlum_rules.stages.sign import read_signed_info

SIGNED = "build/lib/libocclum-libos.signed.so"
IDENTITY_KEYS = ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn")


def default_manifest(package: Path) -> Path:
    """``<name>.manifest.json`` beside ``<name>.tar.gz``."""
    stem = package.name[: -len(".tar.gz")] if package.name.endswith(".tar.gz") else package.stem
    return package.with_name(f"{stem}.manifest.json")


def load_manifest(path: Path) -> dict[str, Any]:
    """A release manifest, or a UserError naming the file and what is wrong with it."""
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


@dataclass
class PackageCheck:
    """What :func:`verify_package` found. No problems means the package verified."""

    package: Path
    manifest_path: Path
    manifest: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)  # read from the signed LibOS

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sums(package: Path, manifest_path: Path, package_sha: str) -> list[str]:
    """SHA256SUMS beside the package, when there is one, must agree with both files."""
    sums = package.with_name("SHA256SUMS")
    if not sums.is_file():
        return []
    listed = parse_sha256sums(sums.read_text())
    problems = []
    for path, actual in ((package, package_sha), (manifest_path, None)):
        if path.parent.resolve() != sums.parent.resolve() or path.name not in listed:
            continue
        if listed[path.name] != (actual or sha256_file(path)):
            problems.append(f"{path.name}: does not match its line in SHA256SUMS")
    return problems


def verify_package(package: Path, manifest_path: Path | None = None) -> PackageCheck:
    """The package's sha256 and size, then every member (type, mode, size, sha256, link
    target, owner 0/0, pinned mtime) against the manifest; SHA256SUMS when it is beside the
    package; and the signed LibOS's identity against the manifest's enclave section."""
    if not package.is_file():
        raise UserError(f"{package}: no such package file")
    manifest_path = manifest_path or default_manifest(package)
    manifest = load_manifest(manifest_path)
    check = PackageCheck(package, manifest_path, manifest)
    problems = check.problems
    digest, size = sha256_file(package), os.path.getsize(package)
    want = manifest["package"]
    top = want.get("top")
    kept: dict[str, bytes] = {}
    signed_name = f"{top}/{SIGNED}" if top else None
    contents = read_package(package, on_file=kept.__setitem__,
                            keep=lambda name: name == signed_name)
    expected = manifest["contents"]
    epoch = want.get("source_date_epoch")
    if contents.error:
        # only what was read can be compared; the rest was never reached
        read = {m["path"] for m in contents.members}
        reached = [m for m in expected if m["path"] in read]
        problems += compare_contents(contents.members, reached, epoch)
        problems.append(f"{contents.error} ({len(expected) - len(reached)} of {len(expected)} "
                        "members not checked)")
    else:
        problems += compare_contents(contents.members, expected, epoch)
        if contents.top != top:
            problems.insert(0, f"top directory is {contents.top!r}, manifest says {top!r}")
    if digest != want.get("sha256") or size != want.get("size"):
        framing = "" if problems else (
            "; every member matches, so the difference is in the gzip/tar framing")
        problems.append(f"sha256 {digest} ({size} bytes) does not match the manifest's "
                        f"{want.get('sha256')} ({want.get('size')} bytes){framing}")
    problems += _check_sums(package, manifest_path, digest)
    if signed_name is not None and signed_name in kept:
        try:
            check.identity = read_signed_info(kept[signed_name])
        except UserError as exc:
            problems.append(f"{signed_name}: {exc}")
        else:
            enclave = manifest.get("enclave", {})
            for key in IDENTITY_KEYS:
                if check.identity.get(key) != enclave.get(key):
                    problems.append(f"{signed_name}: {key.upper()} {check.identity.get(key)} "
                                    f"differs from the manifest's {enclave.get(key)}")
    elif not contents.error and not any(p.startswith(f"{signed_name}:") for p in problems):
        problems.append(f"{signed_name}: missing from the package")
    return check


@dataclass(frozen=True)
class PackageComparison:
    """Two packages compared: their digests and, when they differ, where."""

    original_sha256: str
    other_sha256: str
    first_difference: str | None  # a member path, or what differs when no member does

    @property
    def identical(self) -> bool:
        return self.original_sha256 == self.other_sha256


def compare_packages(original: Path, other: Path) -> PackageComparison:
    a, b = sha256_file(original), sha256_file(other)
    if a == b:
        return PackageComparison(a, b, None)
    where = first_difference(original, other) or "the gzip stream (members are identical)"
    return PackageComparison(a, b, where)
