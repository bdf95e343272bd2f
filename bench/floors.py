"""Floors of the build's stages (issue 18, item 1), measured in the same run, on the same bytes
and on the same file system as the build of scenario 1.

A stage's figure only means something next to what the machine needs for the same bytes at
the least: so after the full builds, on the workspace they left behind (sources, ``out/``),
in the build's own work dir (never /dev/shm), we time

* copy_bom: a kernel copy (``os.copy_file_range``) of every source file of the image into a
  fresh directory (on btrfs/xfs the kernel may share extents, a reflink; the note says which
  file system this is);
* SEFS pack: read + write + AES-GCM GMAC over 4 KiB nodes of the image bytes (the pack's own
  call, :func:`sefs_pack.gmac_nodes`);
* package: deflate of the instance's package members by the package's deflate implementation
  (zlib-ng unless OCCLUM_RULES_DEFLATE says otherwise) at the package's level, in independent
  segments on one thread per CPU (as ``occlum_rules/stages/package_stream.py`` does), plus
  sha256 and write of the compressed bytes;
* store: sha256 of every file the build left in ``out/`` (every output the build hashes).

The page cache is warm for every floor (the build just read or wrote these files), as it is
for the stages it is compared with; ``os.sync()`` before each keeps earlier writeback out.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h  # noqa: E402

from occlum_rules.toolchains.deflate import package_deflater  # noqa: E402

DEFLATER = package_deflater()  # the package's own deflate implementation

CHUNK = 8 << 20  # read size of the copy and GMAC floors: big enough to stream, 4 KiB aligned
SEGMENT = 4 << 20  # the package's deflate segment (package_stream.SEGMENT)
REFLINK_FS = {"btrfs", "xfs", "bcachefs", "ocfs2", "zfs"}


@dataclass
class Floor:
    """One floor: seconds (median), bytes it covers, what it did (for the note)."""

    name: str
    seconds: float
    nbytes: int
    what: str


def regular_files(root: Path) -> list[Path]:
    """Regular files under ``root`` (symlinks not followed), sorted for a stable order."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path)
    return sorted(out)


def fs_type(path: Path) -> str:
    """File system type of the mount holding ``path`` (longest mount point of /proc/mounts)."""
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = fields[1].replace("\\040", " ")
        if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, kind = mnt, fields[2]
    return kind


def _median_of(runs: int, fn) -> float:
    """Median seconds of ``runs`` calls, each after a sync (no charge for older writeback)."""
    times = []
    for _ in range(runs):
        os.sync()
        times.append(h.timed(fn))
    return h.median(times)


def _copy_one(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        done = 0
        while done < size:
            sent = os.copy_file_range(fin.fileno(), fout.fileno(), size - done)
            if sent == 0:
                break
            done += sent


def copy_floor(files: list[Path], scratch: Path, runs: int) -> Floor:
    """copy_bom's floor: every source file copied by the kernel into a fresh directory."""
    def copy_all() -> None:
        h.rmtree(scratch)
        scratch.mkdir(parents=True)
        for i, src in enumerate(files):
            _copy_one(src, scratch / f"{i:06d}")

    seconds = _median_of(runs, copy_all)
    h.rmtree(scratch)
    kind = fs_type(scratch.parent)
    how = ("copy_file_range may share extents (reflink) on this file system" if kind in REFLINK_FS
           else "no reflink on this file system: a real data copy")
    return Floor("copy_bom", seconds, sum(f.stat().st_size for f in files),
                 f"os.copy_file_range of {len(files)} source files on {kind} ({how})")


def sefs_floor(files: list[Path], scratch: Path, runs: int) -> Floor:
    """SEFS pack's floor: read, GMAC every 4 KiB node, write the bytes out."""
    from sefs_pack import gmac_nodes

    def pack_all() -> None:
        h.rmtree(scratch)
        scratch.mkdir(parents=True)
        for i, src in enumerate(files):
            with open(src, "rb") as fin, open(scratch / f"{i:06d}", "wb") as fout:
                while chunk := fin.read(CHUNK):
                    gmac_nodes(chunk)
                    fout.write(chunk)

    seconds = _median_of(runs, pack_all)
    h.rmtree(scratch)
    return Floor("SEFS pack (image)", seconds, sum(f.stat().st_size for f in files),
                 f"read + AES-GCM GMAC per 4 KiB node + write of {len(files)} image files")


def _deflate(data: bytes, level: int) -> bytes:
    return DEFLATER.segment(data, level)


def _segments(files: list[Path]):
    """The members' bytes in pieces of SEGMENT bytes, small members grouped (as the package
    does, so a small file is not a compressor of its own); tar headers are left out."""
    group = bytearray()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(SEGMENT - len(group)):
                group += chunk
                if len(group) >= SEGMENT:
                    yield bytes(group)
                    group.clear()
    if group:
        yield bytes(group)


def package_floor(files: list[Path], out: Path, level: int, runs: int, origin: str) -> Floor:
    """package's floor: segments deflated on one thread per CPU, sha256 + write in order."""
    workers = os.cpu_count() or 1

    def deflate_all() -> None:
        digest = hashlib.sha256()
        pending: deque = deque()
        with ThreadPoolExecutor(workers) as pool, open(out, "wb") as f:
            for seg in _segments(files):
                pending.append(pool.submit(_deflate, seg, level))
                while len(pending) > 2 * workers:
                    data = pending.popleft().result()
                    digest.update(data)
                    f.write(data)
            while pending:
                data = pending.popleft().result()
                digest.update(data)
                f.write(data)

    seconds = _median_of(runs, deflate_all)
    compressed = out.stat().st_size
    out.unlink()
    nbytes = sum(f.stat().st_size for f in files)
    return Floor("package", seconds, nbytes,
                 f"{DEFLATER.identity} level {level} on {workers} threads over "
                 f"{SEGMENT >> 20} MiB segments + sha256 + write of {len(files)} package members "
                 f"({origin}; {compressed / 1e6:.0f} MB out)")


def store_floor(files: list[Path], runs: int) -> Floor:
    """The store's floor: sha256 of every output file (what the build hashes)."""
    def hash_all() -> None:
        for path in files:
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")

    seconds = _median_of(runs, hash_all)
    return Floor("store", seconds, sum(f.stat().st_size for f in files),
                 f"sha256 of {len(files)} files under out/")


def rewrite_floor(package: Path, scratch: Path, runs: int) -> Floor:
    """The floor of an incremental build that ends in a new package (issue 18, item 4):
    writing the package's bytes once, hashing them on the way (its sha256 is in the manifest).
    The bytes come from the page cache, as the reused segments of the old package do."""
    def write_and_hash() -> None:
        digest = hashlib.sha256()
        with open(package, "rb") as fin, open(scratch, "wb") as fout:
            while chunk := fin.read(CHUNK):
                digest.update(chunk)
                fout.write(chunk)

    seconds = _median_of(runs, write_and_hash)
    scratch.unlink(missing_ok=True)
    size = package.stat().st_size
    return Floor("package rewrite", seconds, size,
                 f"write + sha256 of the {size / 1e6:.0f} MB package {package.name}")


def instance_dir(out: Path) -> Path | None:
    """The built instance under ``out/`` (the directory holding ``.sgx_mode``)."""
    found = sorted(p.parent for p in out.rglob(".sgx_mode") if (p.parent / "build").is_dir())
    return found[0] if found else None


def package_members(out: Path) -> tuple[list[Path], str]:
    """Content files the package stage deflates, and how they were found (for the note)."""
    from occlum_rules.stages.package import select_members

    inst = instance_dir(out)
    if inst is None:
        return [], "no instance directory under out/"
    mode = (inst / ".sgx_mode").read_text().strip() or "HW"
    members = [Path(m.content_path) for m in select_members(inst, mode) if m.kind == "file"]
    return members, f"members of {inst.relative_to(out)}"


def measure(sources: list[Path], image_files: list[Path], out: Path, scratch: Path,
            level: int, runs: int) -> list[Floor]:
    """All four floors on the workspace a full build left behind."""
    floors = [copy_floor(sources, scratch / "copy", runs),
              sefs_floor(image_files, scratch / "sefs", runs)]
    members, origin = package_members(out)
    if members:
        floors.append(package_floor(members, scratch / "floor.gz", level, runs, origin))
    floors.append(store_floor(regular_files(out), runs))
    h.rmtree(scratch)
    return floors


STORE_COPY = ("its journaled seconds include storing its outputs (core/store.py): a hard "
              "link per output file (no data copied; a kernel copy only when the store is on "
              "another file system), which no floor row covers")
STAGE_NOTES = {"copy_bom": STORE_COPY + " (every copied image file)",
               "SEFS pack (image)": STORE_COPY + " (the packed image)",
               "package": STORE_COPY + " (the .tar.gz)"}


def records(scenario: str, floors: list[Floor], stages: dict[str, float], full_seconds: float,
            runs: int) -> list[dict]:
    """One row per floor, one ratio per stage, and the full build's ratio to the floors' sum."""
    out = []
    for f in floors:
        out.append(h.rec(scenario, f"floor: {f.name}", round(f.seconds, 3), "s", "informational",
                         None, f"{f.what}; {f.nbytes / 1e6:.0f} MB, "
                         f"{f.nbytes / max(f.seconds, 1e-9) / 1e6:.0f} MB/s; median of {runs}"))
    goals = {"copy_bom": 1.5, "SEFS pack (image)": 1 / 0.9, "package": 1 / 0.9}
    for f in floors:
        if f.name not in stages:
            continue
        ratio = stages[f.name] / f.seconds if f.seconds else None
        goal = goals.get(f.name)
        out.append(h.rec(scenario, f"stage {f.name} / its floor",
                         round(ratio, 2) if ratio else None, "x",
                         f"<= {goal:.2f}x" if goal else "informational",
                         (ratio <= goal) if ratio and goal else None,
                         f"stage {stages[f.name]:.2f} s (median, from the build report) vs floor "
                         f"{f.seconds:.2f} s; {STAGE_NOTES.get(f.name, '')}"))
    total = sum(f.seconds for f in floors)
    ratio = full_seconds / total if total else None
    out.append(h.rec(scenario, "full build / sum of the floors", round(ratio, 2) if ratio else None,
                     "x", "<= 2x", (ratio <= 2) if ratio else None,
                     f"build {full_seconds:.2f} s (median wall time) vs "
                     + " + ".join(f"{f.name} {f.seconds:.2f}" for f in floors)
                     + f" = {total:.2f} s; the store copies every output into the CAS (kernel "
                     "copy, part of each stage's seconds) and that copy has no floor row here"))
    return out
