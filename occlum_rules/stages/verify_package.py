"""Check a release package against its manifest, and compare two packages byte for byte.

The tarball is only ever streamed: nothing is extracted, no link is followed, and members
with absolute or ``..`` names or links leaving the package are refused (by
:func:`occlum_rules.stages.package.read_package`). Results are returned, never printed:
the CLI decides how to show them.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.digests import sha256_file, sha256_reader
from occlum_rules.errors import UserError
from occlum_rules.stages.package import (
    compare_contents,
    compressor_name,
    first_difference,
    manifest_compressor,
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
    """Two packages compared: their digests and, when they differ, where.

    When the gzip bytes differ but the release manifest records ``tar_sha256``, both
    packages' uncompressed tar streams are compared with it: equal streams made by two
    different compressors (``compressors``: the release's, the rebuild's) are a
    reproduced release whose compressed bytes differ only by the compressor.
    """

    original_sha256: str
    other_sha256: str
    first_difference: str | None  # a member path, or what differs when no member does
    tar_sha256: str | None = None  # the manifest's; None when it records none
    original_tar_sha256: str | None = None  # of each package's uncompressed stream, when read
    other_tar_sha256: str | None = None
    compressors: tuple[dict | None, dict | None] = (None, None)

    @property
    def identical(self) -> bool:
        return self.original_sha256 == self.other_sha256

    @property
    def same_tar(self) -> bool:
        return self.tar_sha256 is not None and (
            self.original_tar_sha256 == self.other_tar_sha256 == self.tar_sha256)

    @property
    def compressor_differs(self) -> bool:
        left, right = self.compressors
        return left is not None and right is not None and left != right

    @property
    def reproduced(self) -> bool:
        """Byte-identical, or the same tar stream compressed by another compressor."""
        return self.identical or (self.same_tar and self.compressor_differs)

    def explanation(self) -> str | None:
        """Why two differing packages do not count as reproduced, beyond the first
        differing member (None when they do, or when nothing more is known)."""
        if self.reproduced:
            return None
        if self.tar_sha256 is None:
            return ("the release manifest records no tar_sha256 (it predates the field), so "
                    "only byte-identical packages verify")
        if self.original_tar_sha256 != self.tar_sha256:
            return (f"the package's tar stream has sha256 {self.original_tar_sha256}, its "
                    f"manifest's tar_sha256 is {self.tar_sha256}")
        if self.other_tar_sha256 != self.tar_sha256:
            return (f"the rebuilt tar stream has sha256 {self.other_tar_sha256}, the manifest's "
                    f"tar_sha256 is {self.tar_sha256}")
        return ("the tar streams are identical, yet the same compressor "
                f"({compressor_name(self.compressors[0])}) made different gzip bytes")


def tar_stream_sha256(package: Path) -> str | None:
    """sha256 of a ``.tar.gz``'s uncompressed stream (streamed), or None when it is not a
    readable gzip file."""
    try:
        with gzip.open(package, "rb") as f:
            return sha256_reader(f)
    except (OSError, EOFError, zlib.error):
        return None


def compare_packages(original: Path, other: Path, manifest: dict | None = None,
                     other_manifest: dict | None = None) -> PackageComparison:
    """``original`` (described by the release ``manifest``) against ``other`` (a rebuild,
    described by ``other_manifest``)."""
    a, b = sha256_file(original), sha256_file(other)
    if a == b:
        return PackageComparison(a, b, None)
    where = first_difference(original, other) or "the gzip stream (members are identical)"
    want = (manifest or {}).get("package", {})
    tar_sha = want.get("tar_sha256") if isinstance(want.get("tar_sha256"), str) else None
    if tar_sha is None:
        return PackageComparison(a, b, where)
    return PackageComparison(
        a, b, where, tar_sha, tar_stream_sha256(original), tar_stream_sha256(other),
        (manifest_compressor(want), manifest_compressor((other_manifest or {}).get("package", {}))))
