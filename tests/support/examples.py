"""Which of the repository's examples this machine can build: the README's quick start
installs what all of them need, but a test or benchmark run without Go, Debian's
redis-server or Debian's Rust crates still covers the rest."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.support.workspace import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEBIAN_CARGO = Path("/usr/bin/cargo")
DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")
SEED_TOML = REPO / "examples/seed_service/enclave/Cargo.toml"
# the registry's directories are <crate>-<version>; the seed has no lock, any version will do
SEED_CRATES = list(tomllib.loads(SEED_TOML.read_text())["dependencies"])
MISSING_CRATES = [c for c in SEED_CRATES
                  if not any(DEBIAN_REGISTRY.glob(f"{c}-[0-9]*/Cargo.toml"))]

# the examples every machine that runs the suite can build (a C compiler, rustc, Python)
ALWAYS = ["hello_c", "multi_c", "hello_rust", "enclave_lib", "python_host"]


def buildable_examples() -> list[str]:
    return ALWAYS + \
        (["hello_go"] if shutil.which("go") else []) + \
        (["redis_host"] if Path("/usr/bin/redis-server").is_file() else []) + \
        (["seed_service"] if DEBIAN_CARGO.is_file() and not MISSING_CRATES else [])
