"""Benchmark: packaging a big instance vs raw zlib on the same bytes at the same level.

A synthetic instance with the ``occlum build`` layout holds a large build/mount/__ROOT
(half pseudo-random blocks like an encrypted image, half repetitive ELF-ish/text data), so
deflate does real work. We time ``write_package`` (walk, tar headers, sha256 of every member
and of the output, deflate of independent segments on one thread per CPU) from scratch (no
previous package to re-use) against one ``zlib.compressobj(level, wbits=31)`` over the very
tar stream the package holds, in memory, and against the gzip CLI. Goal: package throughput
>= 90 % of raw zlib's; with more than one CPU the package can beat a single zlib stream.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

GOAL = ">= 90% of raw zlib throughput (same level, same bytes)"
LEVEL = 6


def make_instance(root: Path, total_mib: int) -> Path:
    """Deterministic instance tree: same bytes every run on every machine."""
    rng = random.Random(20240101)
    text = b"".join(f"{i:08x} \x7fELF .text .data libocclum_{i % 97} mov rax, rbx\n".encode()
                    for i in range(4096))
    for rel, data in {"Occlum.json": b"{}\n", ".__occlum_status": b"built\n", ".sgx_mode": b"HW\n",
                      "build/.Occlum_sys.json.protected": bytes(4096),
                      "build/bin/occlum-run": text[:20000],
                      "build/lib/libocclum-libos.signed.so": text * 8,
                      "build/lib/libocclum-pal.so.0.31.0": text[:30000],
                      "build/mount/.ROOT_MAC": b"00-" * 15 + b"00",
                      "build/initfs/.ROOT_MAC": b"00-" * 15 + b"00",
                      "build/initfs/__ROOT/metadata": bytes(4096),
                      "initfs/bin/init": text[:9000]}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink("libocclum-pal.so.0.31.0", root / "build/lib/libocclum-pal.so.0")
    os.symlink("libocclum-pal.so.0", root / "build/lib/libocclum-pal.so")
    image = root / "build/mount/__ROOT"
    image.mkdir(parents=True)
    remaining = total_mib << 20
    index = 0
    while remaining > 0:
        size = min(remaining, rng.choice([4096, 65536, 1 << 20, 4 << 20]))
        if index % 2:
            data = rng.randbytes(size)
        else:
            data = (text * (size // len(text) + 1))[:size]
        (image / f"{index:032x}").write_bytes(data)
        remaining -= size
        index += 1
    return root


def run(quick: bool) -> list[dict]:
    from occlum_rules.stages.package import select_members
    from occlum_rules.stages.package_stream import write_package

    total = 32 if quick else 128
    runs = 3
    with tempfile.TemporaryDirectory(prefix="bench-package-") as d:
        tmp = Path(d)
        inst = make_instance(tmp / "inst", total)
        out = tmp / "p.tar.gz"
        result = write_package(select_members(inst, "HW"), "app", out, mtime=1704067200,
                               level=LEVEL)  # warm-up; also gives the tar stream to compare
        tar_bytes = gzip.decompress(out.read_bytes())
        view = memoryview(tar_bytes)
        tar_file = tmp / "p.tar"
        tar_file.write_bytes(tar_bytes)
        gzip_cli = shutil.which("gzip")
        pkg_times, raw_times, pkg_cpu, raw_cpu, cli_times = [], [], [], [], []
        for _ in range(runs):  # interleaved, so load changes hit both sides alike
            t0, c0 = time.perf_counter(), time.process_time()
            result = write_package(select_members(inst, "HW"), "app", out, mtime=1704067200,
                                   level=LEVEL)
            pkg_times.append(time.perf_counter() - t0)
            pkg_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            comp = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
            size = 0
            for off in range(0, len(view), 1 << 20):
                size += len(comp.compress(view[off:off + (1 << 20)]))
            size += len(comp.flush())
            raw_times.append(time.perf_counter() - t0)
            raw_cpu.append(time.process_time() - c0)
            if gzip_cli:
                t0 = time.perf_counter()
                with open(tar_file, "rb") as src, open(tmp / "cli.gz", "wb") as dst:
                    subprocess.run([gzip_cli, f"-{LEVEL}", "-n", "-c"], stdin=src, stdout=dst,
                                   check=True)
                cli_times.append(time.perf_counter() - t0)
        mib = len(tar_bytes) / (1 << 20)
        pkg, raw = statistics.median(pkg_times), statistics.median(raw_times)
        # median of per-pair ratios: each pair ran back to back, under the same load
        ratio = statistics.median(r / p for p, r in zip(pkg_times, raw_times))
        cpu_ratio = statistics.median(r / p for p, r in zip(pkg_cpu, raw_cpu))
        scenario = f"package {mib:.0f} MiB instance (gzip level {LEVEL})"
        records = [
            {"scenario": scenario, "metric": "package throughput (median)",
             "value": round(mib / pkg, 1), "unit": "MiB/s", "goal": GOAL,
             "meets_goal": ratio >= 0.9,
             "note": f"{runs} runs; {pkg:.2f} s; {result.size / (1 << 20):.1f} MiB out"},
            {"scenario": scenario, "metric": "raw zlib throughput (median)",
             "value": round(mib / raw, 1), "unit": "MiB/s", "goal": "baseline",
             "meets_goal": None, "note": f"{runs} runs; {raw:.2f} s; {size / (1 << 20):.1f} MiB out"},
            {"scenario": scenario, "metric": "package / raw zlib throughput",
             "value": round(100 * ratio, 1), "unit": "%", "goal": GOAL,
             "meets_goal": ratio >= 0.9,
             "note": f"median of {runs} back-to-back pairs; CPU-time ratio "
                     f"{100 * cpu_ratio:.0f}% (segments deflate on {os.cpu_count()} threads); "
                     f"zlib {zlib.ZLIB_RUNTIME_VERSION}"},
        ]
        if cli_times:
            cli = statistics.median(cli_times)
            cli_ratio = statistics.median(c / p for p, c in zip(pkg_times, cli_times))
            records.append({
                "scenario": scenario, "metric": "package / gzip -6 CLI throughput",
                "value": round(100 * cli_ratio, 1), "unit": "%", "goal": GOAL,
                "meets_goal": cli_ratio >= 0.9,
                "note": f"gzip -6 -n on the same tar file: median {cli:.2f} s "
                        f"({mib / cli:.1f} MiB/s)"})
        return records


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import harness  # bench/ is on sys.path when a module runs as a script

    harness.run_as_script(run, __doc__)
