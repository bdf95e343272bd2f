"""Shared helpers for the secure-FS tests: random trees, directory comparison."""

from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path

NAMES = ["a", "b", "lib", "bin", "etc", "Zed", "zz", "é", "mixed Case", "x.so", "y.txt", "0", "_"]


def counter_bytes(tag: bytes, n: int) -> bytes:
    """The vector README's generator: SHA256(tag || u64le(i)) concatenated."""
    out = b"".join(hashlib.sha256(tag + struct.pack("<Q", i)).digest() for i in range(n // 32 + 1))
    return out[:n]


def random_content(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 100, 3071, 3072, 3073, 5000, 9000, rng.randrange(0, 30000)])
    return rng.randbytes(size)


def make_random_tree(root: Path, rng: random.Random, *, files: int = 25, big: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root]
    for _ in range(files):
        parent = rng.choice(dirs)
        name = rng.choice(NAMES) + str(rng.randrange(100))
        path = parent / name
        if path.exists() or path.is_symlink():
            continue
        r = rng.random()
        if r < 0.2:
            path.mkdir()
            path.chmod(rng.choice([0o755, 0o700, 0o750]))
            dirs.append(path)
        elif r < 0.3:
            path.symlink_to(rng.choice(["a", "/abs/t", "../x/y", "é"]))
        else:
            path.write_bytes(random_content(rng))
            path.chmod(rng.choice([0o644, 0o600, 0o755, 0o444]))
    if big:  # two MHT groups (>96 data nodes)
        (root / "big.bin").write_bytes(rng.randbytes(96 * 4096 + 3072 + 5000))


def same_dir_bytes(a: Path, b: Path) -> bool:
    la, lb = sorted(os.listdir(a)), sorted(os.listdir(b))
    if la != lb:
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in la)


def listing_of(root: Path) -> list[tuple]:
    """(path, type, mode, size, sha256/target) of a real tree, in SEFS order."""
    out = []

    def walk(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d), key=lambda n: n.encode()):
            p = d / name
            r = f"{rel}/{name}" if rel else name
            st = p.lstat()
            if p.is_symlink():
                out.append((r, "symlink", 0o777, len(os.fsencode(os.readlink(p))), os.readlink(p)))
            elif p.is_dir():
                out.append((r, "dir", st.st_mode & 0o777, 0, None))
                walk(p, r)
            elif p.is_file():
                out.append((r, "file", st.st_mode & 0o777, st.st_size,
                            hashlib.sha256(p.read_bytes()).hexdigest()))

    walk(root, "")
    return out


def listing_of_entries(entries) -> list[tuple]:
    return [
        (e.path, e.type, e.mode, e.size, e.sha256 if e.type == "file" else e.target if e.type == "symlink" else None)
        for e in entries
    ]
