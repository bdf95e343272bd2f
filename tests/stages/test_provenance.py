"""The provenance formats on their own: canonical statement bytes, DSSE envelopes checked with
``cryptography`` directly against a PAE written here from the DSSE spec, and key errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from occlum_rules.errors import UserError
from occlum_rules.stages import provenance as prov


def spec_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in ASCII decimal."""
    t = payload_type.encode("utf-8")
    return b" ".join([b"DSSEv1", str(len(t)).encode(), t, str(len(payload)).encode(), payload])


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def sample() -> dict:
    return prov.statement(
        subjects=[("b.tar.gz", "2" * 64), ("a.manifest.json", "1" * 64)],
        external={"targets": ["//app:package"], "source_date_epoch": 1704067200},
        internal={"enclave": {"mrenclave": "ab" * 32}},
        dependencies=[{"name": "z.c", "digest": {"sha256": "3" * 64}},
                      {"name": "a.c", "digest": {"sha256": "4" * 64}}],
        builder_version="0.1.0")


def test_statement_shape_and_canonical_bytes():
    st = sample()
    data = prov.canonical_json(st)
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert [s["name"] for s in st["subject"]] == ["a.manifest.json", "b.tar.gz"]
    deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [d["name"] for d in deps] == ["a.c", "z.c"]
    assert st["predicate"]["runDetails"]["builder"]["id"].startswith("https://")
    assert b"Time" not in data and b"metadata" not in data  # no clock in the statement


def test_pae_matches_the_spec_example():
    # the example of the DSSE protocol document
    assert prov.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert prov.pae(prov.PAYLOAD_TYPE, b"{}") == spec_pae(prov.PAYLOAD_TYPE, b"{}")


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_envelopes_verify_with_cryptography_directly(kind):
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else \
        ec.generate_private_key(ec.SECP256R1())
    payload = prov.canonical_json(sample())
    env = json.loads(prov.sign_envelope(payload, key))
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(env["payload"]) == payload
    sig = base64.b64decode(env["signatures"][0]["sig"])
    message = spec_pae(env["payloadType"], payload)
    if kind == "ed25519":
        key.public_key().verify(sig, message)
    else:
        key.public_key().verify(sig, message, ec.ECDSA(hashes.SHA256()))
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    assert env["signatures"][0]["keyid"] == hashlib.sha256(der).hexdigest()
    # and our reader agrees, and refuses another key
    assert prov.open_envelope(json.dumps(env).encode(), key.public_key(), "x") == payload
    with pytest.raises(UserError, match="no signature verifies"):
        prov.open_envelope(json.dumps(env).encode(),
                           ed25519.Ed25519PrivateKey.generate().public_key(), "x")


def test_key_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    with pytest.raises(UserError, match=r"keys/bad.pem: .* not an unencrypted PEM private key"):
        prov.load_private_key(bad, "provenance signing key", "keys/bad.pem")
    with pytest.raises(UserError, match=r"keys/none.pem: .*not found"):
        prov.load_private_key(tmp_path / "none.pem", "provenance signing key", "keys/none.pem")
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(UserError, match="must be an Ed25519 or ECDSA P-256 key, not RSA"):
        prov.load_private_key(rsa_file, "provenance signing key")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(UserError, match="must be an Ed25519 or ECDSA P-256"):
        prov.load_private_key(p384, "provenance signing key")


def test_same_public_key_compares_public_halves():
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    assert prov.same_public_key(pem(key), key) and prov.same_public_key(public, key)
    assert not prov.same_public_key(pem(ed25519.Ed25519PrivateKey.generate()), key)
    assert not prov.same_public_key(b"garbage", key)
