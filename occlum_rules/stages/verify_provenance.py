"""Check a package or an image against its provenance statement (and its DSSE signature).

What is checked: the envelope's signature with the given public key (when one is given), the
statement's type, every subject's sha256 against the file the verifier holds (the package
tarball and manifest, or the image manifest blob an OCI layout's index.json names) and, for
a package, that the statement's MRENCLAVE is the manifest's. Results are returned, never
printed: the CLI decides how to show them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.core.digests import sha256_file
from occlum_rules.errors import UserError
from occlum_rules.stages import provenance as prov
from occlum_rules.user_files import read_user_file


@dataclass
class ProvenanceCheck:
    statement: dict[str, Any]
    signed_by: str | None               # keyid that verified, None when not checked
    envelope: bool                      # the file was a DSSE envelope
    problems: list[str] = field(default_factory=list)

    def kind_is(self, kind: str, where: Path) -> bool:
        """Whether the statement attests a ``kind`` ("package", "image"); else one problem."""
        internal = self.statement["predicate"]["buildDefinition"].get("internalParameters", {})
        found = internal.get("subject_kind")
        if found != kind:
            self.problems.append(f"{where}: the statement attests {found or 'something else'}, "
                                 f"not {'a package' if kind == 'package' else 'an image'}")
        return found == kind

    @property
    def mrenclave(self) -> str | None:
        internal = self.statement["predicate"]["buildDefinition"].get("internalParameters", {})
        return (internal.get("enclave") or {}).get("mrenclave")


def read_statement(path: Path, public_key: Path | None) -> ProvenanceCheck:
    """The statement in ``path`` (a statement or a DSSE envelope); with ``public_key`` the
    envelope's signature must verify (a bare statement then is an error: nothing is signed)."""
    data = read_user_file(path, "provenance file")
    key = prov.load_public_key(public_key, "provenance public key") if public_key else None
    try:
        is_envelope = isinstance(json.loads(data), dict) and "payloadType" in json.loads(data)
    except ValueError:
        raise UserError(f"{path}: not JSON") from None
    if is_envelope:
        payload = prov.open_envelope(data, key, str(path))
    elif key is not None:
        raise UserError(f"{path}: a bare statement has no signature to check with "
                        f"{public_key}; give the .dsse.json envelope")
    else:
        payload = data
    statement = prov.load_statement(payload, str(path))
    return ProvenanceCheck(statement, prov.key_id(key) if key else None, is_envelope)


def verify_package_provenance(path: Path, package: Path, manifest: Path,
                              public_key: Path | None) -> ProvenanceCheck:
    check = read_statement(path, public_key)
    if not check.kind_is("package", path):
        return check
    actual = {}
    for f in (package, manifest):
        try:
            actual[f.name] = sha256_file(f)
        except OSError as exc:
            raise UserError(f"{f}: cannot read ({exc.strerror})") from None
    check.problems += prov.check_subjects(check.statement, actual, str(path))
    try:
        stated = json.loads(manifest.read_bytes())["enclave"]["mrenclave"]
    except (OSError, ValueError, KeyError, TypeError):
        stated = None
    if stated != check.mrenclave:
        check.problems.append(f"{path}: MRENCLAVE {check.mrenclave} is not the manifest's "
                              f"({stated})")
    return check


def verify_image_provenance(path: Path, layout: Path, public_key: Path | None) -> ProvenanceCheck:
    check = read_statement(path, public_key)
    if not check.kind_is("image", path):
        return check
    digest = prov.image_manifest_digest(layout)
    names = [s.get("name") for s in check.statement["subject"] if isinstance(s, dict)]
    check.problems += prov.check_subjects(check.statement, {n: digest for n in names if n},
                                          str(path))
    return check
