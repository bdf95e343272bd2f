"""Download the crates a Cargo.lock names, once, into a directory source.

Why it works this way:
- This is the only Rust action allowed to use the network. Its inputs are the manifest, the
  lock file and the crate's own cargo configuration (where a mirror may be set), not the
  sources: editing code never re-downloads, and a changed lock file always does.
- Its output depends on the lock file alone: every crate is checked against the sha256 the
  lock file pins, whatever cargo or mirror downloaded it. So the action key holds no cargo
  fingerprint, and the result is shared through the cache by every machine and toolchain.
- cargo fetch downloads; we unpack. ``cargo vendor`` would do both, but when a ``[source]``
  setting points at a directory source it deletes crates from that directory (seen with
  cargo 1.65 and 1.95 on Debian's /usr/share/cargo/registry, even with --no-delete), and a
  build tool must never touch the machine's registry. Unpacking a .crate (a tar.gz of
  ``name-version/``) and writing the ``.cargo-checksum.json`` cargo checks is a few lines.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

from occlum_rules.errors import UserError

_KEY = re.compile(r'^([A-Za-z_-]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*$')
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# cargo's own configuration files in $CARGO_HOME: settings (mirrors, proxies, net options),
# never credentials.
_USER_CONFIG = ("config.toml", "config")


def lock_packages(text: str) -> list[dict[str, str]]:
    """The ``[[package]]`` entries of a Cargo.lock: their string fields (name, version,
    source, checksum). A few lines instead of a TOML parser, which Python 3.10 lacks; the
    lock format writes each of these as ``key = "value"`` on its own line."""
    packages: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line == "[[package]]":
            current = {}
            packages.append(current)
        elif line.startswith("["):
            current = None
        elif current is not None:
            match = _KEY.match(line)
            if match:
                current[match.group(1)] = match.group(2)
    return packages


def checksum_json(files: dict[str, str], package: str) -> bytes:
    """``.cargo-checksum.json`` of a directory source entry: cargo re-hashes every listed
    file before it builds the crate, and compares ``package`` with the lock file."""
    return json.dumps({"files": dict(sorted(files.items())), "package": package},
                      sort_keys=True, separators=(",", ":")).encode()


def unpack_crate(data: bytes, name: str, version: str, dest: Path) -> dict[str, str]:
    """Unpack a .crate into ``dest``; return {relative path: sha256} of its files.

    Only regular files and directories under ``name-version/`` are accepted (what
    ``cargo package`` writes); modes are normalised to 0644/0755 so the tree is the same
    bytes and modes wherever it is unpacked."""
    prefix = f"{name}-{version}/"
    files: dict[str, str] = {}
    dest.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                path = member.name
                if member.isdir() and path.rstrip("/") + "/" == prefix:
                    continue
                if not path.startswith(prefix):
                    raise UserError(f"{name} {version}: .crate entry {path!r} is outside "
                                    f"{prefix}")
                rel = path[len(prefix):].rstrip("/")
                parts = rel.split("/")
                if not rel or any(part in ("", ".", "..") for part in parts):
                    raise UserError(f"{name} {version}: unsafe .crate entry {path!r}")
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise UserError(f"{name} {version}: .crate entry {path!r} is not a "
                                    "regular file")
                target.parent.mkdir(parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise UserError(f"{name} {version}: cannot read .crate entry {path!r}")
                body = extracted.read()
                target.write_bytes(body)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
                files[rel] = hashlib.sha256(body).hexdigest()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{name} {version}: cannot unpack the .crate: {exc}") from None
    return files


def downloaded_crates(home: Path) -> dict[str, list[Path]]:
    """Every .crate cargo keeps under CARGO_HOME, by file name (one per registry used)."""
    found: dict[str, list[Path]] = {}
    cache = home / "registry" / "cache"
    if cache.is_dir():
        for registry in sorted(cache.iterdir()):
            if registry.is_dir():
                for crate in sorted(registry.glob("*.crate")):
                    found.setdefault(crate.name, []).append(crate)
    return found


def private_home(work: Path) -> Path:
    """A CARGO_HOME of this action's own (downloads are kept between runs), carrying the
    user's cargo settings so a configured mirror or proxy still applies."""
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    user_home = Path(os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo"))
    for name in _USER_CONFIG:
        src, dest = user_home / name, home / name
        if src.is_file():
            shutil.copyfile(src, dest)
        elif dest.exists():
            dest.unlink()
    return home
