"""Deterministic inputs for the benchmark suite: synthetic images, a host-Python image, and
generated doit workspaces around them.

Everything is seeded (``random.Random(seed)``) and made from local files only, so two runs
on the same machine build byte-identical trees. The shapes follow what the issue asks for:

* synthetic image: ~1 GiB in ~20k files (quick: ~100 MB / 2k) -- a few large random
  binaries (~40 % of the bytes), many small text-like and binary files (compressible and
  not), real ELF executables from the host whose libraries copy_bom must discover, and one
  file of exactly 1 MiB (``data/hot/change_me.bin``) that the incremental scenario rewrites;
* host-runtime image: the host's ``/usr/bin/python3`` and its whole standard library
  (``/usr/lib/python3.X`` minus ``__pycache__``) through a BOM, the way Occlum's Python demo
  copies an interpreter and its prefix;
* small images (many tiny files) for the null-build and parallelism scenarios.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
HOST_LD = "/lib64/ld-linux-x86-64.so.2"
HOT_FILE = "data/hot/change_me.bin"  # relative to the image package directory
SOURCE_DATE_EPOCH = 1704067200

_WORDS = ("enclave sgx occlum libos image mount sefs config sign measure attest quote "
          "report key node tree hash digest file block page heap stack thread process "
          "signal socket pipe epoll futex mmap brk clone exec wait exit").split()


@dataclass
class TreeStats:
    files: int
    bytes: int
    elf: list[str]  # host paths of the ELF files the BOM copies (with autodep)


# ----------------------------------------------------------------------------- content


def _text_blob(rng: random.Random, size: int) -> bytes:
    """Text-like, compressible bytes (a log/config file), deterministic for the rng."""
    out = bytearray()
    while len(out) < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        out += f"{rng.randint(0, 99999):05d} {line}\n".encode()
    return bytes(out[:size])


def _binary_blob(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def pick_host_elves(count: int) -> list[str]:
    """Dynamically linked executables from /usr/bin whose libraries all resolve.

    Sorted by name and filtered with the project's own loader emulation, so the list is the
    same on every run of one machine and copy_bom's dependency discovery cannot fail on them.
    """
    sys.path.insert(0, str(REPO))
    from occlum_rules.stages.bom import elf_deps

    picked: list[str] = []
    for name in sorted(os.listdir("/usr/bin")):
        path = os.path.join("/usr/bin", name)
        if (not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]*", name) or os.path.islink(path)
                or not os.path.isfile(path) or os.path.getsize(path) > 4 * MIB):
            continue
        try:
            info = elf_deps.read_elf(path)
        except Exception:  # noqa: BLE001 - anything unreadable is simply not picked
            continue
        if info is None or info.interp != HOST_LD or not info.needed:
            continue
        try:
            emu = elf_deps.LoaderEmulator("glibc", None)
            _found, missing = emu.list_deps(path, path, info, HOST_LD, info.interp)
        except Exception:  # noqa: BLE001
            continue
        if missing:
            continue
        picked.append(path)
        if len(picked) == count:
            break
    return picked


def make_synthetic_tree(root: Path, total: int, files: int, seed: int = 11,
                        text_pool: bytes | None = None) -> TreeStats:
    """Write the synthetic image's source tree under ``root`` (a fresh directory).

    Budget: 4 large binaries take ~40 % of ``total``; the hot 1 MiB file; the rest is spread
    over ``files`` small/medium files (log-normal sizes, 1 in 3 text-like) in directories of
    ~50 files, two levels deep.

    ``text_pool`` (see :func:`text_pool`): text-like files are slices of it at seeded offsets
    instead of freshly generated lines. Generating lines runs at ~7 MB/s, which would make a
    4 GiB tree take minutes to write; slices compress the same way (deflate only sees a 32 KiB
    window). Scenarios that pass no pool get exactly the bytes they always had.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    count = 0
    big_total = int(total * 0.4)
    big_sizes = [big_total // 2, big_total // 4, big_total // 8, big_total - big_total // 2
                 - big_total // 4 - big_total // 8]
    (root / "data" / "blobs").mkdir(parents=True)
    for i, size in enumerate(big_sizes):
        with open(root / "data" / "blobs" / f"model{i}.bin", "wb") as f:
            left = size
            while left:
                step = min(left, 16 * MIB)
                f.write(_binary_blob(rng, step))
                left -= step
        written += size
        count += 1
    hot = root / HOT_FILE
    hot.parent.mkdir(parents=True)
    hot.write_bytes(_binary_blob(rng, MIB))
    written += MIB
    count += 1
    small_n = max(1, files - count)
    avg = max(64, (total - written) // small_n)
    ndirs = max(1, small_n // 50)
    for i in range(small_n):
        d = root / "data" / "tree" / f"g{i % ndirs % 20:02d}" / f"d{i % ndirs:04d}"
        if i < ndirs:
            d.mkdir(parents=True, exist_ok=True)
        size = min(int(rng.lognormvariate(0, 1.2) * avg * 0.5), 32 * avg)
        text = rng.random() < 1 / 3
        if text and text_pool is not None:
            start = rng.randrange(max(1, len(text_pool) - size))
            data = text_pool[start:start + size]
        else:
            data = _text_blob(rng, size) if text else _binary_blob(rng, size)
        (d / (f"f{i:05d}.txt" if text else f"f{i:05d}.bin")).write_bytes(data)
        written += len(data)
        count += 1
    return TreeStats(files=count, bytes=written, elf=[])


def text_pool(size: int = 8 * MIB, seed: int = 12) -> bytes:
    """Text-like bytes to slice text files from (``make_synthetic_tree(text_pool=...)``)."""
    return _text_blob(random.Random(seed), size)


FILES_PER_GIB = 20000  # scenario 1's mix: ~1 GiB in ~20k files


def files_for(total: int) -> int:
    """How many files an image of ``total`` bytes has at scenario 1's mix (same mean size)."""
    return max(50, round(total / 2**30 * FILES_PER_GIB))


def make_tiny_tree(root: Path, files: int, seed: int = 5) -> int:
    """Many tiny files (64-512 bytes), for scenarios about file counts rather than bytes."""
    rng = random.Random(seed)
    ndirs = max(1, files // 50)
    total = 0
    for i in range(files):
        d = root / f"g{i % ndirs % 20:02d}" / f"d{i % ndirs:04d}"
        if i < ndirs:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(64, 512)
        (d / f"t{i:05d}").write_bytes(_text_blob(rng, size))
        total += size
    return total


def make_sized_tree(root: Path, total: int, files: int, seed: int) -> int:
    """``files`` random files summing to about ``total`` bytes (CPU-heavy to pack)."""
    rng = random.Random(seed)
    ndirs = max(1, files // 50)
    avg = total // files
    written = 0
    for i in range(files):
        d = root / f"d{i % ndirs:03d}"
        d.mkdir(parents=True, exist_ok=True)
        size = min(int(rng.expovariate(1 / avg)), 8 * avg)
        (d / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))
        written += size
    return written


# ----------------------------------------------------------------------------- BOMs


BASE_DIRS = ["bin", "lib", "lib64", "root", "host", "tmp", "dev", "proc", "etc"]


def _base_target() -> str:
    return ("  - target: /\n    mkdirs:\n" + "".join(f"      - {d}\n" for d in BASE_DIRS)
            + "  - target: /etc\n    createlinks:\n      - src: /proc/self/mounts\n"
              "        linkname: mtab\n")


def synthetic_bom(elves: list[str]) -> str:
    """BOM of the synthetic image: the data tree plus host ELF files (libraries discovered)."""
    text = "# generated by bench/workloads.py\ntargets:\n" + _base_target()
    text += "  - target: /opt/app\n    copy:\n      - dirs:\n          - data\n"
    if elves:
        text += "  - target: /bin\n    copy:\n      - files:\n"
        text += "".join(f"          - {p}\n" for p in elves)
    return text


def dir_bom(rel_dir: str) -> str:
    """BOM copying one directory (relative to the BOM) into /opt/app."""
    return ("# generated by bench/workloads.py\ntargets:\n" + _base_target()
            + f"  - target: /opt/app\n    copy:\n      - dirs:\n          - {rel_dir}\n")


def python_stdlib_dir() -> tuple[str, str] | None:
    """(interpreter, stdlib dir) of the host's system Python, like Occlum's Python demo uses."""
    for interp in ("/usr/bin/python3",):
        if not os.path.exists(interp):
            continue
        real = os.path.realpath(interp)
        name = os.path.basename(real)  # python3.11
        lib = f"/usr/lib/{name}"
        if os.path.isdir(lib):
            return interp, lib
    # fall back to the interpreter running the benchmark
    lib = sysconfig.get_paths()["stdlib"]
    return (sys.executable, lib) if os.path.isdir(lib) else None


def python_bom() -> str | None:
    found = python_stdlib_dir()
    if found is None:
        return None
    interp, lib = found
    parent = os.path.dirname(lib)
    return (
        "# generated by bench/workloads.py: the host interpreter and its whole standard library\n"
        "excludes:\n  - __pycache__\n  - site-packages\n  - dist-packages\n"
        "targets:\n  - target: /\n    mkdirs:\n"
        + "".join(f"      - {d}\n" for d in ["bin", "dev", "etc", "lib", "lib64", "proc", "root", "tmp"])
        + f"  - target: /usr/bin\n    copy:\n      - files:\n          - {interp}\n"
        + "    createlinks:\n      - src: python3\n        linkname: python\n"
        + f"  - target: {parent}\n    copy:\n      - dirs:\n          - {lib}\n"
    )


# ----------------------------------------------------------------------------- workspaces


WORKSPACE_YAML = f"""# generated by bench/workloads.py
name: occlum-rules-bench
build_file: BUILD.py
output_dir: out
source_date_epoch: {SOURCE_DATE_EPOCH}
sgx_mode: HW
edmm: false
stages: python
toolchains:
  cc: [gcc]
"""


def instance_build(bom_file: str, package: bool = False) -> str:
    text = (f'occlum_bom(\n    name = "image",\n    src = "{bom_file}",\n)\n\n'
            'occlum_instance(\n    name = "instance",\n    bom = ":image",\n'
            '    entry_points = ["/bin"],\n    resource_limits = {"user_space_size": "256MB"},\n'
            '    metadata = {"debuggable": False},\n)\n')
    if package:
        text += '\nocclum_package(\n    name = "package",\n    instance = ":instance",\n)\n'
    return text


def new_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "WORKSPACE.yaml").write_text(WORKSPACE_YAML)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    return root


def package_rule_available() -> bool:
    sys.path.insert(0, str(REPO))
    try:
        from occlum_rules.rules import all_rules
    except ImportError:
        return False
    try:
        rules = all_rules()
    except Exception:  # noqa: BLE001
        return False
    names = rules.keys() if isinstance(rules, dict) else [getattr(r, "name", r) for r in rules]
    return "occlum_package" in names


def clone_sources(src: Path, dest: Path, output_dir: str = "out") -> None:
    """A fresh checkout: everything except the output directory (hard links are not used, the
    clone owns its bytes as a git clone would)."""
    shutil.copytree(src, dest, ignore=lambda d, names: [output_dir] if Path(d) == src else [],
                    symlinks=True)
