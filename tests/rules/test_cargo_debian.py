"""The Rust examples with the distribution's Rust: Debian 12's cargo 1.65 / rustc 1.63 and
its librust-*-dev crates in /usr/share/cargo/registry, offline; then the seed enclave
library again with rustup's cargo in the same checkout (CI has both).

These need Debian's packages, which no code of ours can stand in for; without them the
tests skip and say which packages to install (the registry builds themselves are also
tested with a crate made on the spot in test_cargo_deps.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.support.examples import DEBIAN_CARGO, MISSING_CRATES
from tests.support.workspace import REPO, copy_examples, outcomes, run_doit

RUSTUP_CARGO = Path(os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")) / "bin/cargo"

needs_debian = pytest.mark.skipif(
    not DEBIAN_CARGO.is_file() or bool(MISSING_CRATES),
    reason="needs Debian's Rust packages: apt-get install cargo rustc and the librust-*-dev "
           "packages of the README's quick start "
           f"(cargo: {'found' if DEBIAN_CARGO.is_file() else 'missing'}; "
           f"registry lacks: {', '.join(MISSING_CRATES[:4]) or 'nothing'})")

SEED_LIB = "out/bin/examples/seed_service/neo_service_enclave/libneo_service_enclave.so"
SEED_APP = "out/bin/examples/seed_service/seed_app/seed_app"
TARGETS = ["//examples/hello_rust:hello_rust", "//examples/enclave_lib:enclave_lib",
           "//examples/enclave_lib:loader", "//examples/seed_service:neo_service_enclave",
           "//examples/seed_service:seed_app"]


def built_by(path: Path, rustc: Path) -> bool:
    """Did this rustc build the library? Newer rustc versions name themselves in .comment;
    Debian's 1.63 does not, but its std carries its source path /usr/src/rustc-<version>."""
    version = subprocess.run([rustc, "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    with open(path, "rb") as f:
        comment = ELFFile(f).get_section_by_name(".comment").data()
    return f"rustc version {version} ".encode() in comment or \
        f"/usr/src/rustc-{version}/library/".encode() in path.read_bytes()


def expected_tag(message: str) -> tuple[str, str]:
    """(sha256, tag) as the enclave library defines them, computed here independently:
    key = HMAC-SHA256("neo-service seed", "enclave key v1"); the tag is HMAC-SHA256 under
    it of bincode 1.x's encoding of (service, message, sha256): each string as a
    little-endian u64 length and its bytes."""
    digest = hashlib.sha256(message.encode()).hexdigest()
    key = hmac.new(b"neo-service seed", b"enclave key v1", hashlib.sha256).digest()
    signed = b"".join(struct.pack("<Q", len(s.encode())) + s.encode()
                      for s in ("neo_service_enclave", message, digest))
    return digest, hmac.new(key, signed, hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def debian_build(tmp_path_factory):
    if not DEBIAN_CARGO.is_file() or MISSING_CRATES:
        pytest.skip("Debian's cargo or librust-*-dev packages are not installed")
    base = tmp_path_factory.mktemp("debian-rust")
    ws = copy_examples(base / "ws", ["hello_rust", "enclave_lib", "seed_service"])
    yaml = ws / "WORKSPACE.yaml"
    yaml.write_text(yaml.read_text() + f"  cargo: [{DEBIAN_CARGO}]\n")
    result = run_doit(ws, *TARGETS, cache=base / "cache")
    assert result.returncode == 0, result.output
    return ws, base


@needs_debian
def test_examples_build_with_debians_cargo_offline(debian_build):
    ws, _ = debian_build
    # built by the rustc beside Debian's cargo (1.63 on Debian 12), not rustup's
    assert built_by(ws / SEED_LIB, DEBIAN_CARGO.parent / "rustc")
    assert subprocess.run([ws / "out/bin/examples/hello_rust/hello_rust/hello_rust", "ci"],
                          capture_output=True, text=True, check=True).stdout == \
        "Hello, ci, from Rust!\n"
    loader = subprocess.run([ws / "out/bin/examples/enclave_lib/loader/loader",
                             ws / "out/bin/examples/enclave_lib/enclave_lib/libenclave_lib.so"],
                            capture_output=True, text=True, check=True)
    assert loader.stdout == "enclave_lib 0.1.0: 2 + 40 = 42\n"
    # the lock files are ones Debian's cargo reads (and --locked left them as they were)
    for lock in ("hello_rust/Cargo.lock", "enclave_lib/rust/Cargo.lock"):
        assert (ws / "examples" / lock).read_text() == (REPO / "examples" / lock).read_text()
        assert "\nversion = 3\n" in (REPO / "examples" / lock).read_text()
    # the seed resolved against the registry in its staging copy, not in the checkout
    assert not (ws / "examples/seed_service/enclave/Cargo.lock").exists()


@needs_debian
def test_seed_enclave_library_uses_its_crates(debian_build):
    ws, _ = debian_build
    run = subprocess.run([ws / SEED_APP, ws / SEED_LIB, "pay 10 GAS"], capture_output=True,
                         text=True, check=True)
    first, second = run.stdout.splitlines()
    record = json.loads(first)
    digest, tag = expected_tag("pay 10 GAS")
    assert record == {"service": "neo_service_enclave", "message": "pay 10 GAS",
                      "sha256": digest, "tag": tag}
    assert second == "tampered record refused: the tag does not match the record"


@needs_debian
@pytest.mark.skipif(not RUSTUP_CARGO.is_file(), reason=f"rustup's cargo is not installed "
                    f"({RUSTUP_CARGO})")
def test_seed_enclave_with_rustups_cargo_in_its_own_target_dir(debian_build):
    ws, base = debian_build
    yaml = ws / "WORKSPACE.yaml"
    yaml.write_text(yaml.read_text().replace(f"  cargo: [{DEBIAN_CARGO}]\n",
                                             f"  cargo: [{RUSTUP_CARGO}]\n"))
    result = run_doit(ws, "//examples/seed_service:neo_service_enclave",
                      "//examples/seed_service:seed_app", cache=base / "cache")
    assert result.returncode == 0, result.output
    assert outcomes(ws)["//examples/seed_service:neo_service_enclave:cargo-build"] == "run"
    assert built_by(ws / SEED_LIB, RUSTUP_CARGO.parent / "rustc")
    assert not built_by(ws / SEED_LIB, DEBIAN_CARGO.parent / "rustc")
    run = subprocess.run([ws / SEED_APP, ws / SEED_LIB, "x"], capture_output=True, text=True,
                         check=True)
    assert json.loads(run.stdout.splitlines()[0])["tag"] == expected_tag("x")[1]
    # each toolchain kept its own target directory, in the action's private state directory
    seed_work = [d for d in (ws / "out/.occlum-rules/state").glob("cargo.*")
                 if (d / "src/Cargo.toml").read_text().find("neo_service_enclave") >= 0]
    assert len(seed_work) == 1
    assert len([t for t in seed_work[0].iterdir() if t.name.startswith("target-")]) == 2
