"""Build provenance: in-toto Statement v1 with an SLSA provenance v1 predicate, DSSE envelopes.

Pure formats, no engine: the statement is built from plain data the action collects, encoded
as canonical JSON (sorted keys, no whitespace, UTF-8) so the same build gives the same bytes
on every checkout, and it holds no wall-clock time (``source_date_epoch`` is the only time).
The enclave identity (MRENCLAVE, MRSIGNER, ...) goes in ``internalParameters.enclave``: it
is what the build produced inside the subject, and a verifier wants it next to the digests.

DSSE (https://github.com/secure-systems-lab/dsse, protocol v1) signs
``PAE(payloadType, payload)`` with Ed25519 or ECDSA P-256 (SHA-256, DER signature); the
``keyid`` is the sha256 of the public key's DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from occlum_rules.core.digests import sha256_file
from occlum_rules.errors import UserError
from occlum_rules.user_files import read_user_file

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://occlum-rules.dev/provenance/build/v1"
BUILDER_ID = "https://occlum-rules.dev/builder/occlum-rules"
PAYLOAD_TYPE = "application/vnd.in-toto+json"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def canonical_json(obj: Any) -> bytes:
    """The one encoding of a statement: sorted keys, no spaces, UTF-8, newline-terminated."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def statement(*, subjects: list[tuple[str, str]], build_type: str = BUILD_TYPE,
              external: dict[str, Any], internal: dict[str, Any],
              dependencies: list[dict[str, Any]], builder_version: str) -> dict[str, Any]:
    """An in-toto Statement v1 of subjects ``(name, sha256 hex)`` with an SLSA v1 predicate.

    ``dependencies`` are SLSA ResourceDescriptors; they are sorted here so the order in which
    the build found them does not change the bytes."""
    deps = sorted(dependencies, key=lambda d: (d.get("uri", ""), d.get("name", ""),
                                               json.dumps(d.get("digest", {}), sort_keys=True)))
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(subjects)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {"buildType": build_type, "externalParameters": external,
                                "internalParameters": internal,
                                "resolvedDependencies": deps},
            "runDetails": {"builder": {"id": BUILDER_ID,
                                       "version": {"occlum-rules": builder_version}}},
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# --------------------------------------------------------------------------- keys

def load_any_private_key(path: Path, what: str, name: str | None = None) -> Any:
    """A PEM private key of any type (to compare it with the enclave key), or one error
    naming the file (never its contents)."""
    shown = name or str(path)
    data = read_user_file(path, what, where=shown)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UserError(f"{shown}: {what} is not an unencrypted PEM private key") from None


def check_signing_key(key: Any, what: str, shown: str) -> PrivateKey:
    """``key`` if it is Ed25519 or ECDSA P-256 (the DSSE signers this project supports)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    kind = type(key).__name__.lstrip("_").removesuffix("PrivateKey") or "this"
    raise UserError(f"{shown}: {what} must be an Ed25519 or ECDSA P-256 key, not {kind}")


def load_private_key(path: Path, what: str, name: str | None = None) -> PrivateKey:
    """An Ed25519 or ECDSA P-256 private key from a PEM file, or one error naming the file."""
    return check_signing_key(load_any_private_key(path, what, name), what, name or str(path))


def load_public_key(path: Path, what: str) -> PublicKey:
    """An Ed25519 or ECDSA P-256 public key (PEM), or one error naming the file."""
    data = read_user_file(path, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UserError(f"{path}: {what} is not a PEM public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey) or (
            isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        return key
    raise UserError(f"{path}: {what} must be an Ed25519 or ECDSA P-256 public key")


def public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def same_public_key(pem: bytes, other: Any) -> bool:
    """Whether a PEM key (private or public, any type: e.g. the enclave's RSA key) is the
    key pair of ``other``."""
    try:
        key: Any = serialization.load_pem_private_key(pem, password=None).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return False
    return public_der(key) == public_der(other.public_key())


def key_id(public: Any) -> str:
    return hashlib.sha256(public_der(public)).hexdigest()


# --------------------------------------------------------------------------- DSSE

def sign_envelope(payload: bytes, key: PrivateKey) -> bytes:
    """A DSSE envelope (canonical JSON) of ``payload`` signed by ``key``."""
    message = pae(PAYLOAD_TYPE, payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(message)
    else:
        sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
    return canonical_json({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(key.public_key()), "sig": base64.b64encode(sig).decode()}],
    })


def open_envelope(data: bytes, public: PublicKey | None, where: str) -> bytes:
    """The payload of a DSSE envelope; with ``public``, only if one signature verifies."""
    try:
        env = json.loads(data)
        if env["payloadType"] != PAYLOAD_TYPE:
            raise UserError(f"{where}: payloadType is {env['payloadType']!r}, not {PAYLOAD_TYPE}")
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: not a DSSE envelope (payloadType, payload, signatures)") from None
    if public is not None:
        message = pae(PAYLOAD_TYPE, payload)
        for sig in sigs:
            try:
                if isinstance(public, ed25519.Ed25519PublicKey):
                    public.verify(sig, message)
                else:
                    public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
                return payload
            except InvalidSignature:
                continue
        raise UserError(f"{where}: no signature verifies with the given public key "
                        f"(keyid {key_id(public)[:16]}…)")
    return payload


# --------------------------------------------------------------------------- verify

def load_statement(data: bytes, where: str) -> dict[str, Any]:
    try:
        st = json.loads(data)
    except ValueError:
        raise UserError(f"{where}: not JSON") from None
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE or \
            st.get("predicateType") != PREDICATE_TYPE or not isinstance(st.get("subject"), list):
        raise UserError(f"{where}: not an in-toto Statement v1 with an SLSA provenance v1 "
                        "predicate")
    return st


def image_manifest_digest(layout: Path) -> str:
    """sha256 of the image manifest an OCI layout's index.json names, hashed from its blob
    (so a changed layout shows, not just a changed index)."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        digest = index["manifests"][0]["digest"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{layout}: not an OCI image layout (index.json with a manifest)") from None
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise UserError(f"{layout}: index.json names no sha256 manifest")
    blob = layout / "blobs" / "sha256" / digest[len("sha256:"):]
    try:
        return sha256_file(blob)
    except OSError:
        raise UserError(f"{layout}: the manifest blob {digest} is missing") from None


def check_subjects(st: dict[str, Any], actual: dict[str, str], where: str) -> list[str]:
    """Problems found comparing the statement's subjects with ``actual`` (subject name ->
    the sha256 the verifier computed from the files it was given)."""
    problems: list[str] = []
    for subject in st["subject"]:
        name = subject.get("name") if isinstance(subject, dict) else None
        want = ((subject.get("digest") or {}).get("sha256")) if isinstance(subject, dict) else None
        if name not in actual:
            problems.append(f"{where}: subject {name!r} has no file to check it against")
        elif actual[name] != want:
            problems.append(f"{name}: sha256 {actual[name]} does not match the statement "
                            f"({want})")
    return problems
