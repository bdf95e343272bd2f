"""Secrets stay out of the store, the outputs and the logs.

An instance is signed with a fresh RSA-3072 (e=3) key and its image encrypted with a key from
``occlum-rules gen-image-key``; then every file of the cache store, of out/ (outputs, state,
doit's database, build-report.json) and the captured build output is searched for the keys
in every encoding a leak would plausibly take: PEM, PEM body lines, DER (PKCS#1 and PKCS#8),
the private exponent and primes (big- and little-endian, hex, base64), the image key's raw
bytes, key-file text, hex and base64. Gzip files are searched decompressed too.

The one exception by design: with ``buildin_image_key = True`` the image key is inside the
initfs (and the initfs SEFS image, and that instance's package). Those outputs must then
never be stored in the cache.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path

import pytest

from tests.reliability.support import build, no_traceback
from tests.support.workspace import make_workspace, run_cli, run_doit

PKG = "examples/app"
BUILD = """\
occlum_cc_binary(name = "hello", srcs = ["hello.c"])

occlum_bom(name = "image", src = "hello.yaml", deps = {"/bin": [":hello"]})

occlum_instance(
    name = "sealed",
    bom = ":image",
    entry_points = ["/bin"],
    sign_key = "keys/sign.pem",
    image_key = "keys/image.key",
)

occlum_instance(
    name = "builtin",
    bom = ":image",
    entry_points = ["/bin"],
    sign_key = "keys/sign.pem",
    image_key = "keys/image.key",
    buildin_image_key = True,
)

occlum_package(name = "sealed_pkg", instance = ":sealed", package_name = "sealed", debug = True)

occlum_package(name = "builtin_pkg", instance = ":builtin", package_name = "builtin", debug = True)
"""
HELLO_C = '#include <stdio.h>\nint main(void) { puts("secret-free"); return 0; }\n'
BOM = "targets:\n  - target: /\n    mkdirs: [bin, lib, etc, tmp, dev, proc, root, host]\n"
# where the built-in key is allowed to be: that instance's initfs, its SEFS pack, its package
ALLOWED = (f"out/bin/{PKG}/builtin/initfs/", f"out/bin/{PKG}/builtin/build/initfs/",
           f"out/bin/{PKG}/builtin_pkg/")


def _rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=3, key_size=3072)


def _needles(key, image_key_text: str) -> dict[str, bytes]:
    """name -> byte string whose presence anywhere would be a leak."""
    from cryptography.hazmat.primitives import serialization

    enc = serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    der8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, enc)
    der1 = key.private_bytes(serialization.Encoding.DER,
                             serialization.PrivateFormat.TraditionalOpenSSL, enc)
    nums = key.private_numbers()
    d = nums.d.to_bytes(384, "big")
    p = nums.p.to_bytes(192, "big")
    q = nums.q.to_bytes(192, "big")
    found = {"pem": pem, "der-pkcs8": der8[100:164], "der-pkcs1": der1[100:164],
             "der-pkcs1-b64": base64.b64encode(der1)[120:180]}
    for i, line in enumerate(pem.splitlines()[5:-5:7]):
        found[f"pem-line-{i}"] = line
    for name, value in (("d", d), ("p", p), ("q", q)):
        mid = value[len(value) // 2 - 16: len(value) // 2 + 16]
        found[f"{name}-be"] = mid
        found[f"{name}-le"] = mid[::-1]
        found[f"{name}-hex"] = mid.hex().encode()
        found[f"{name}-HEX"] = mid.hex().upper().encode()
        found[f"{name}-b64"] = base64.b64encode(value)[40:100]
    raw = bytes(int(x, 16) for x in image_key_text.strip().split("-"))
    found.update({"image-raw": raw, "image-text": image_key_text.strip().encode(),
                  "image-TEXT": image_key_text.strip().upper().encode(),
                  "image-hex": raw.hex().encode(), "image-HEX": raw.hex().upper().encode(),
                  "image-b64": base64.b64encode(raw).rstrip(b"=")})
    return found


def _search(root: Path, needles: dict[str, bytes], rel_to: Path) -> dict[str, set[str]]:
    """relative file path -> names of the needles found in it (gzip files also inflated)."""
    hits: dict[str, set[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                try:
                    data += gzip.decompress(data)
                except (OSError, EOFError):
                    pass
            found = {n for n, needle in needles.items() if needle in data}
            if found:
                hits[str(path.relative_to(rel_to))] = found
    return hits


@pytest.fixture(scope="module")
def secret_build(tmp_path_factory):
    base = tmp_path_factory.mktemp("secrets")
    ws = make_workspace(base / "ws", {f"{PKG}/BUILD.py": BUILD, f"{PKG}/hello.c": HELLO_C,
                                      f"{PKG}/hello.yaml": BOM})
    from cryptography.hazmat.primitives import serialization

    key = _rsa_key()
    (ws / PKG / "keys").mkdir()
    (ws / PKG / "keys/sign.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    r = run_cli("gen-image-key", str(ws / PKG / "keys/image.key"))
    assert r.returncode == 0, r.output
    image_key_text = (ws / PKG / "keys/image.key").read_text()
    cache = base / "cache"
    first = build(ws, cache)
    # a second checkout with the same keys, served from the same store
    ws2 = make_workspace(base / "ws2", {f"{PKG}/BUILD.py": BUILD, f"{PKG}/hello.c": HELLO_C,
                                        f"{PKG}/hello.yaml": BOM})
    (ws2 / PKG / "keys").mkdir()
    for name in ("sign.pem", "image.key"):
        (ws2 / PKG / "keys" / name).write_bytes((ws / PKG / "keys" / name).read_bytes())
    second = build(ws2, cache)
    explain = run_cli("explain", f"//{PKG}:sealed", cwd=ws)
    logs = base / "logs"
    logs.mkdir()
    for name, text in (("first.log", first.output), ("second.log", second.output),
                       ("explain.log", explain.output)):
        (logs / name).write_text(text)
    return {"base": base, "ws": ws, "ws2": ws2, "cache": cache, "logs": logs,
            "needles": _needles(key, image_key_text)}


def test_keys_are_not_in_the_store(secret_build):
    hits = _search(secret_build["cache"], secret_build["needles"], secret_build["base"])
    assert not hits, f"key material in the cache store: {hits}"


def test_keys_are_not_in_logs(secret_build):
    hits = _search(secret_build["logs"], secret_build["needles"], secret_build["base"])
    assert not hits, f"key material in the build output: {hits}"
    assert no_traceback((secret_build["logs"] / "first.log").read_text())


@pytest.mark.parametrize("which", ["ws", "ws2"])
def test_keys_are_only_where_builtin_puts_them(secret_build, which):
    ws = secret_build[which]
    hits = _search(ws / "out", secret_build["needles"], ws)
    leaks = {p: n for p, n in hits.items() if not p.startswith(ALLOWED)}
    assert not leaks, f"key material in outputs/state: {leaks}"
    # the search does work: the built-in key is found exactly where it was put
    builtin = {p for p, names in hits.items() if "image-text" in names}
    assert f"out/bin/{PKG}/builtin/initfs/etc/image_key" in builtin, hits
    assert any(p.startswith(f"out/bin/{PKG}/builtin/build/initfs/") for p in builtin), hits
    assert any(p.startswith(f"out/bin/{PKG}/builtin_pkg/") for p in builtin), hits
    # and only the image key: the signing key is nowhere, not even there
    assert all(n.startswith("image-") for names in hits.values() for n in names), hits


def test_outputs_holding_the_builtin_key_are_not_cached(secret_build):
    cached_paths = set()
    for entry in (secret_build["cache"] / "ac").glob("*/*"):
        manifest = json.loads(entry.read_bytes())
        cached_paths |= {o["path"] for o in manifest["outputs"]}
    holding = [p for p in cached_paths if p.startswith(tuple(a.rstrip("/") for a in ALLOWED))]
    assert not holding, f"outputs holding the built-in key were cached: {holding}"
    # while the instance without the built-in key is cached (the check can see entries)
    assert any(p.startswith(f"out/bin/{PKG}/sealed/") for p in cached_paths)
    # ... and the second checkout rebuilt the key-holding outputs locally
    rep = json.loads((secret_build["ws2"] / "out/build-report.json").read_text())
    outcome = {a["id"]: a["outcome"] for a in rep["actions"]}
    assert outcome[f"//{PKG}:builtin:initfs"] == "run"
    assert outcome[f"//{PKG}:sealed:initfs"] == "cache_hit_local"


def test_search_finds_a_planted_leak(secret_build, tmp_path):
    """The search is able to fail: a planted hex dump of the exponent slice is found."""
    needles = secret_build["needles"]
    (tmp_path / "leak.txt").write_bytes(b"debug: " + needles["d-hex"] + b"\n")
    (tmp_path / "leak.gz").write_bytes(gzip.compress(needles["image-text"]))
    hits = _search(tmp_path, needles, tmp_path)
    assert "d-hex" in hits["leak.txt"] and "image-text" in hits["leak.gz"]


def test_bad_key_errors_do_not_echo_the_key(tmp_path):
    """A malformed image key or signing key is refused without printing its content."""
    ws = make_workspace(tmp_path / "ws", {f"{PKG}/BUILD.py": BUILD, f"{PKG}/hello.c": HELLO_C,
                                          f"{PKG}/hello.yaml": BOM})
    (ws / PKG / "keys").mkdir()
    bad_image = "c0-ff-ee-11-22-33-44-55-66-77-88-99-aa-bb-cc-zz\n"
    (ws / PKG / "keys/image.key").write_text(bad_image)
    (ws / PKG / "keys/sign.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\n"
                                            "TUlJRzR3SUJBQUtDQVlFQXNlY3JldHNlY3JldA==\n"
                                            "-----END RSA PRIVATE KEY-----\n")
    r = run_doit(ws, "build", cache=tmp_path / "cache")
    assert r.returncode == 1 and no_traceback(r.output), r.output
    assert "c0-ff-ee" not in r.output and "TUlJRzR3" not in r.output, r.output
