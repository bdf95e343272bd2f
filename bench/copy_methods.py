"""How copy_bom should copy (issue 18, item 2): its own copy against the kernel's, on one
thread and on every CPU, on the same files, alternated, in one run.

copy_bom copies each new image file in user space: read a chunk, sha256 it, write it
(``stages/bom/apply._write_file``), so the digest it records is of exactly the bytes it
wrote; this bench chose how many threads do that (``apply.copy_threads``). The candidates:

* ``kernel copy + sha256 of the copy``: ``copy_file_range`` (``occlum_rules.file_copy``),
  then the new file hashed through a mapping (one memory copy less; the digest is still of
  the bytes written);
* ``kernel copy alone``: no sha256 at all (scenario 1's copy floor; not an option for the
  stage, which must know each file's digest);

each on one thread and on one per CPU (files in batches of 64, so the pool's overhead is
not per file). Targets: the disk the work dir is on (as a build's ``out/``), and /dev/shm
when there is one (memory: no disk behind it, so what is left is CPU).

    python bench/copy_methods.py [--quick] [--rounds N] [--output FILE]

Not a scenario of ``run.py`` (a full-size run takes ~4 min): the evidence behind the
README's account of item 2. Prints a table; ``--output`` writes the records as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h  # noqa: E402
import workloads as wl  # noqa: E402

from occlum_rules.file_copy import kernel_copy  # noqa: E402
from occlum_rules.stages.bom.apply import _write_file  # noqa: E402

SCENARIO = "copy methods"
BATCH = 64
MAP_FROM = 64 << 10  # smaller copies are hashed from one pread


def _kernel_copy(src: str, dst: str) -> int:
    with open(src, "rb", buffering=0) as fin:
        fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fin.fileno()).st_size
            if not kernel_copy(fin.fileno(), fd, size):
                raise OSError(f"the kernel refused to copy {src}")
            return fd
        except BaseException:
            os.close(fd)
            raise


def copy_bom_copy(src: str, dst_dir: str, name: str) -> None:
    _write_file(src, dst_dir, name, 0o644, new=True)


def kernel_then_hash(src: str, dst_dir: str, name: str) -> None:
    """What the stage would do instead: its mode and times too, as ``_write_file`` sets."""
    fd = _kernel_copy(src, os.path.join(dst_dir, name))
    try:
        st = os.stat(src)
        os.fchmod(fd, 0o644)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        size = st.st_size
        digest = hashlib.sha256()
        if size >= MAP_FROM:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                digest.update(mm)
        elif size:
            digest.update(os.pread(fd, size, 0))
        digest.hexdigest()
    finally:
        os.close(fd)


def kernel_only(src: str, dst_dir: str, name: str) -> None:
    os.close(_kernel_copy(src, os.path.join(dst_dir, name)))


METHODS: dict[str, Callable[[str, str, str], None]] = {
    "copy_bom's copy (read + sha256 + write)": copy_bom_copy,
    "kernel copy + sha256 of the copy": kernel_then_hash,
    "kernel copy alone (no sha256)": kernel_only,
}


def _plan(src: Path, dst: Path) -> list[tuple[str, str, str]]:
    """(source, destination directory, name) of every file, directories in walk order."""
    jobs = []
    for dirpath, _dirs, files in os.walk(src):
        target = dst / Path(dirpath).relative_to(src)
        jobs += [(os.path.join(dirpath, f), str(target), f) for f in sorted(files)]
    return jobs


def copy_all(method: Callable[[str, str, str], None], jobs: list[tuple[str, str, str]],
             threads: int) -> None:
    """Every file, directories made on the way (as copy_bom makes them, on one thread)."""
    made: set[str] = set()

    def batch_of(batch: list[tuple[str, str, str]]) -> None:
        for job in batch:
            method(*job)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending, batch = [], []
        for job in jobs:
            if job[1] not in made:
                os.makedirs(job[1], exist_ok=True)
                made.add(job[1])
            if threads == 1:
                method(*job)
                continue
            batch.append(job)
            if len(batch) >= BATCH:
                pending.append(pool.submit(batch_of, batch))
                batch = []
        if batch:
            pending.append(pool.submit(batch_of, batch))
        for done in pending:
            done.result()


def measure(src: Path, dst_root: Path, rounds: int, threads: list[int], methods: list[str]
            ) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(method, threads) -> [(seconds, CPU seconds)] over ``rounds`` alternated rounds; each
    copy starts on an empty directory after a sync, and is removed after it."""
    dst = dst_root / "copy"
    jobs = _plan(src, dst)
    variants = [(m, t) for m in methods for t in threads]
    times: dict[tuple[str, int], list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(rounds):
        for method, count in variants if r % 2 == 0 else reversed(variants):
            h.rmtree(dst)
            dst.mkdir(parents=True)
            os.sync()
            cpu = os.times()
            t = time.perf_counter()
            copy_all(METHODS[method], jobs, count)
            seconds = time.perf_counter() - t
            after = os.times()
            times[(method, count)].append(
                (seconds, after.user - cpu.user + after.system - cpu.system))
            h.rmtree(dst)
    return times


def records(where: str, times: dict[tuple[str, int], list[tuple[float, float]]], nbytes: int,
            files: int) -> list[dict]:
    base = statistics.median(s for s, _ in next(iter(times.values())))
    out = []
    for (method, threads), runs in times.items():
        med = statistics.median(s for s, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        out.append(h.rec(f"{SCENARIO}: {where}", f"{method}, {threads} thread{'s' * (threads > 1)}",
                         round(med, 3), "s", "informational", None,
                         f"{med / base:.2f}x the first row; CPU {cpu:.2f} s; "
                         f"{nbytes / med / 1e6:.0f} MB/s; {files} files; median of {len(runs)}: "
                         + ", ".join(f"{s:.2f}" for s, _ in runs)))
    return out


def run(quick: bool, rounds: int, threads: list[int] | None = None,
        methods: list[str] | None = None) -> list[dict]:
    threads = threads or sorted({1, os.cpu_count() or 1})
    methods = methods or list(METHODS)
    size = (100 << 20, 2000) if quick else (1 << 30, wl.FILES_PER_GIB)
    base = h.workdir("copy")
    out: list[dict] = []
    try:
        src = base / "src"
        stats = wl.make_synthetic_tree(src, *size)
        targets = [(f"work dir disk ({base.parent})", base / "dst")]
        if Path("/dev/shm").is_dir():
            targets.append(("/dev/shm (memory)",
                            Path(tempfile.mkdtemp(prefix="occlum-bench-copy-", dir="/dev/shm"))))
        for where, dst_root in targets:
            try:
                out += records(where, measure(src, dst_root, rounds, threads, methods),
                               stats.bytes, stats.files)
            except OSError as exc:
                out.append(h.unavailable(f"{SCENARIO}: {where}", "copy", "s", "informational",
                                         str(exc)))
            finally:
                h.rmtree(dst_root)
    finally:
        h.rmtree(base)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~100 MB in 2k files instead of 1 GiB in 20k")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds (median)")
    ap.add_argument("--threads", default="",
                    help="comma-separated thread counts (default: 1 and one per CPU)")
    ap.add_argument("--methods", default="",
                    help="comma-separated method numbers, 1-3 in the table's order (default: all)")
    ap.add_argument("--output", type=Path, help="also write the records to this JSON file")
    args = ap.parse_args()
    names = list(METHODS)
    found = run(args.quick, args.rounds, [int(t) for t in args.threads.split(",") if t],
                [names[int(m) - 1] for m in args.methods.split(",") if m])
    h.print_table(found)
    if args.output:
        args.output.write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
