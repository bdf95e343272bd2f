"""occlum_provenance end to end: a real package and image built in two checkouts give the same
statement bytes; subjects, MRENCLAVE, sources and toolchains are the build's; the DSSE
envelopes verify with ``cryptography`` (Ed25519 and ECDSA P-256); ``verify`` catches tampered
packages and statements; the enclave key and bad key files are refused; the provenance private
key is in no output, cache entry or log."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.reliability.test_secrets import _search
from tests.rules.test_oci import HELLO_BUILD, RUNTIME_YAML
from tests.stages.test_provenance import spec_pae
from tests.support.workspace import make_workspace, run_cli, run_doit

OUT = "out/bin/app"
PACKAGE, MANIFEST = f"{OUT}/package/hello.tar.gz", f"{OUT}/package/hello.manifest.json"
PKG_ST = f"{OUT}/package_provenance/package_provenance.provenance.json"
PKG_ENV = f"{OUT}/package_provenance/package_provenance.dsse.json"
IMG_ST = f"{OUT}/image_provenance/image_provenance.provenance.json"
IMG_ENV = f"{OUT}/image_provenance/image_provenance.dsse.json"
LAYOUT = f"{OUT}/oci/image.oci"
BUILD = HELLO_BUILD + """
occlum_package(name = "package", instance = ":instance", package_name = "hello", debug = True)
occlum_provenance(name = "package_provenance", subject = ":package")
occlum_provenance(name = "image_provenance", subject = ":oci")
"""
FILES = {
    "app/BUILD.py": BUILD,
    "app/hello.c": '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n',
    "app/hello.yaml": "targets:\n  - target: /\n    mkdirs: [bin, data]\n",
    "app/data.txt": "one\n",
    "app/runtime.yaml": RUNTIME_YAML.read_text(),
}
WS_YAML = "source_date_epoch: 1704067200\n"


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _workspace(root: Path, key: bytes | None, extra_yaml: str = "") -> Path:
    files: dict[str, str | bytes] = dict(FILES)
    yaml = WS_YAML + extra_yaml
    if key is not None:
        files["keys/prov.pem"] = key
        yaml += "provenance:\n  signing_key: keys/prov.pem\n"
    return make_workspace(root, files, yaml)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """a: Ed25519 key; b: the same sources and key at another path, own cache; c: an ECDSA
    P-256 key, served from a's cache (only its signing actions run)."""
    base = tmp_path_factory.mktemp("prov")
    ed, p256 = ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
    a = _workspace(base / "a", _pem(ed))
    b = _workspace(base / "another" / "checkout" / "b", _pem(ed))
    c = _workspace(base / "c", _pem(p256))
    logs = {}
    for root, cache in ((a, "cache-a"), (b, "cache-b"), (c, "cache-a")):
        result = run_doit(root, "build", cache=base / cache)
        assert result.returncode == 0, result.output
        logs[root.name] = result.output
    for name, key in (("ed.pub", ed), ("p256.pub", p256)):
        (base / name).write_bytes(_public_pem(key))
    return {"a": a, "b": b, "c": c, "base": base, "ed": ed, "p256": p256, "logs": logs}


def _statement(ws: Path, rel: str) -> dict:
    return json.loads((ws / rel).read_bytes())


def test_package_statement_subjects_are_the_files(built):
    a = built["a"]
    st = _statement(a, PKG_ST)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    assert subjects == {"hello.tar.gz": _sha(a / PACKAGE), "hello.manifest.json": _sha(a / MANIFEST)}
    definition = st["predicate"]["buildDefinition"]
    assert definition["externalParameters"] == {
        "workspace": "workspace", "targets": ["//app:package", "//app:package_provenance"],
        "source_date_epoch": 1704067200}
    manifest = json.loads((a / MANIFEST).read_bytes())
    enclave = definition["internalParameters"]["enclave"]
    assert enclave["mrenclave"] == manifest["enclave"]["mrenclave"]
    assert enclave["mrsigner"] == manifest["enclave"]["mrsigner"]
    assert st["predicate"]["runDetails"]["builder"]["id"]


def test_image_statement_subject_is_the_manifest_digest(built):
    a = built["a"]
    st = _statement(a, IMG_ST)
    digest = (a / f"{OUT}/oci/image.digest").read_text().strip()
    assert st["subject"] == [{"name": "oci:latest", "digest": {"sha256": digest[7:]}}]
    assert _sha(a / LAYOUT / "blobs/sha256" / digest[7:]) == digest[7:]
    manifest = json.loads((a / MANIFEST).read_bytes())
    assert st["predicate"]["buildDefinition"]["internalParameters"]["enclave"]["mrenclave"] == \
        manifest["enclave"]["mrenclave"]


def test_dependencies_hold_sources_and_toolchains(built):
    from occlum_rules.cli.common import load

    a = built["a"]
    deps = _statement(a, PKG_ST)["predicate"]["buildDefinition"]["resolvedDependencies"]
    named = {d["name"]: d["digest"]["sha256"] for d in deps if d["name"] != "toolchain"}
    for rel in ("app/hello.c", "app/hello.yaml", "app/data.txt", "app/BUILD.py"):
        assert named[rel] == _sha(a / rel), rel
    assert not any(n.startswith(str(a)) for n in named)  # workspace-relative
    # files found while the image is assembled are pinned through the image manifest
    [image_manifest] = [d["name"] for d in deps
                        if d.get("annotations", {}).get("role", "").startswith("image manifest")]
    assert named[image_manifest] == _sha(a / image_manifest)
    image_files = {e.get("sha256") for e in json.loads((a / image_manifest).read_text())}
    assert _sha(a / "app/data.txt") in image_files
    fingerprints = {d["annotations"]["fingerprint"] for d in deps if d["name"] == "toolchain"}
    cwd = os.getcwd()
    try:
        os.chdir(a)
        _ws, graph = load(a)
    finally:
        os.chdir(cwd)
    used = {fp for act in graph.actions if act.label in ("//app:hello", "//app:instance")
            for fp in act.toolchains}
    assert used and used <= fingerprints
    image_deps = _statement(a, IMG_ST)["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert "app/runtime.yaml" in {d.get("name") for d in image_deps}


def test_two_checkouts_give_identical_statement_bytes(built):
    a, b = built["a"], built["b"]
    for rel in (PKG_ST, IMG_ST, PKG_ENV, IMG_ENV):  # Ed25519 signatures are deterministic
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert str(b).encode() not in (b / PKG_ST).read_bytes()


@pytest.mark.parametrize("which", ["a", "c"])  # Ed25519, ECDSA P-256
def test_envelopes_verify_with_cryptography(built, which):
    ws = built[which]
    key = built["ed" if which == "a" else "p256"].public_key()
    for st_rel, env_rel in ((PKG_ST, PKG_ENV), (IMG_ST, IMG_ENV)):
        env = json.loads((ws / env_rel).read_bytes())
        assert env["payloadType"] == "application/vnd.in-toto+json"
        payload = base64.b64decode(env["payload"])
        assert payload == (ws / st_rel).read_bytes()
        sig = base64.b64decode(env["signatures"][0]["sig"])
        if which == "a":
            key.verify(sig, spec_pae(env["payloadType"], payload))
        else:
            key.verify(sig, spec_pae(env["payloadType"], payload), ec.ECDSA(hashes.SHA256()))
    # c was served from a's cache: the same statement, only the signature differs
    assert (built["c"] / PKG_ST).read_bytes() == (built["a"] / PKG_ST).read_bytes()


def test_verify_accepts_the_package_and_the_image(built):
    a, base = built["a"], built["base"]
    r = run_cli("verify", str(a / PACKAGE), "--provenance", str(a / PKG_ENV),
                "--provenance-key", str(base / "ed.pub"))
    assert r.returncode == 0 and "DSSE signature verified" in r.stdout, r.output
    r = run_cli("verify", str(a / LAYOUT), "--provenance", str(a / IMG_ENV),
                "--provenance-key", str(base / "ed.pub"))
    assert r.returncode == 0 and "matches its provenance" in r.stdout, r.output
    r = run_cli("verify", str(built["c"] / LAYOUT), "--provenance", str(built["c"] / IMG_ENV),
                "--provenance-key", str(base / "p256.pub"))
    assert r.returncode == 0, r.output


def _one_error(r) -> str:
    assert r.returncode == 1 and "Traceback" not in r.output, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.output
    return lines[0]


def test_verify_fails_on_a_tampered_package(built, tmp_path):
    a, base = built["a"], built["base"]
    copy = tmp_path / "package"
    shutil.copytree(a / f"{OUT}/package", copy)
    tarball = copy / "hello.tar.gz"
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 1
    tarball.write_bytes(bytes(data))
    line = _one_error(run_cli("verify", str(tarball), "--provenance", str(a / PKG_ENV),
                              "--provenance-key", str(base / "ed.pub")))
    assert "FAILED: hello.tar.gz: sha256" in line and "does not match the statement" in line


def test_verify_fails_on_a_tampered_statement(built, tmp_path):
    a, base = built["a"], built["base"]
    env = json.loads((a / PKG_ENV).read_bytes())
    payload = base64.b64decode(env["payload"]).replace(b'"isv_svn":0', b'"isv_svn":1')
    env["payload"] = base64.b64encode(payload).decode()
    forged = tmp_path / "forged.dsse.json"
    forged.write_text(json.dumps(env))
    line = _one_error(run_cli("verify", str(a / PACKAGE), "--provenance", str(forged),
                              "--provenance-key", str(base / "ed.pub")))
    assert "no signature verifies with the given public key" in line
    # the right statement with the wrong key fails the same way
    line = _one_error(run_cli("verify", str(a / PACKAGE), "--provenance", str(a / PKG_ENV),
                              "--provenance-key", str(base / "p256.pub")))
    assert "no signature verifies" in line


def test_the_private_key_is_nowhere(built):
    needles: dict[str, bytes] = {}
    for name in ("ed", "p256"):
        key = built[name]
        text = _pem(key)
        needles[f"{name}-pem"] = text
        for i, line in enumerate(text.splitlines()[1:-1]):
            needles[f"{name}-pem-line-{i}"] = line
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        needles[f"{name}-der"] = der
    raw = built["ed"].private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    needles.update({"ed-raw": raw, "ed-hex": raw.hex().encode(),
                    "ed-b64": base64.b64encode(raw).rstrip(b"=")})
    scalar = built["p256"].private_numbers().private_value.to_bytes(32, "big")
    needles.update({"p256-raw": scalar, "p256-hex": scalar.hex().encode()})
    base = built["base"]
    for ws in ("a", "b", "c"):
        assert not _search(built[ws] / "out", needles, base), ws
    for cache in ("cache-a", "cache-b"):
        assert not _search(base / cache, needles, base), cache
    for name, log in built["logs"].items():
        assert not any(n in log.encode() for n in needles.values()), name
    # the search can find it: the key file itself holds it
    assert _search(built["a"] / "keys", needles, base)


def test_the_enclave_signing_key_is_refused(built, tmp_path):
    from occlum_rules.core.fileview import dev_signing_key

    # the default enclave key (the built-in development key) by its path
    ws = make_workspace(tmp_path / "dev", FILES,
                        WS_YAML + f"provenance:\n  signing_key: {dev_signing_key()}\n")
    r = run_doit(ws, "build", cache=tmp_path / "cache")
    assert r.returncode == 1 and "Traceback" not in r.output, r.output
    assert "is the enclave signing key" in r.output, r.output
    # signing.key from WORKSPACE.yaml, as another file with the same key
    pem = Path(dev_signing_key()).read_bytes()
    files = {**FILES, "keys/enclave.pem": pem, "keys/copy.pem": pem}
    ws = make_workspace(tmp_path / "ws", files, WS_YAML + "signing:\n  key: keys/enclave.pem\n"
                        "provenance:\n  signing_key: keys/copy.pem\n")
    r = run_doit(ws, "build", cache=tmp_path / "cache")
    assert r.returncode == 1 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if "enclave signing key" in line]
    assert len(errors) == 1 and "keys/copy.pem" in errors[0], r.output
    assert not any((ws / "out").rglob("*.dsse.json"))


@pytest.mark.parametrize("content", [None, b"not a key\n"])
def test_a_bad_key_file_is_one_error_naming_it(tmp_path, content):
    files: dict[str, str | bytes] = dict(FILES)
    if content is not None:
        files["keys/bad.pem"] = content
    ws = make_workspace(tmp_path / "ws", files,
                        WS_YAML + "provenance:\n  signing_key: keys/bad.pem\n")
    r = run_doit(ws, "build", cache=tmp_path / "cache")
    assert r.returncode == 1 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if "keys/bad.pem" in line]
    assert len(errors) == 1, r.output
    assert ("not found" if content is None else "not an unencrypted PEM private key") in errors[0]
