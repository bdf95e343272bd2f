"""ELF dependency discovery: our static emulation vs running ``ld.so --list``.

Picks ~50 dynamically linked ELF files from /usr/bin (sorted, deterministic), resolves each
one's libraries both ways and reports (a) how often the two agree exactly (name -> path) and
(b) the time ratio. Our side starts from a cold ELF cache in every run.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from occlum_rules.stages.bom import elf_deps  # noqa: E402

HOST_LD = "/lib64/ld-linux-x86-64.so.2"


def _pick(n: int) -> list[str]:
    out = []
    for name in sorted(os.listdir("/usr/bin")):
        path = os.path.join("/usr/bin", name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        info = elf_deps.read_elf(path)
        if info is None or info.interp != HOST_LD or not info.needed:
            continue
        out.append(path)
        if len(out) == n:
            break
    return out


def _real(path: str) -> dict[str, str] | None:
    proc = subprocess.run([HOST_LD, "--list", path], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        return None
    deps = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^\s*(\S+) => (\S+) ", line)
        if m and not m.group(1).startswith("/"):
            deps[m.group(1)] = m.group(2)
    return deps


def _ours(path: str) -> dict[str, str]:
    info = elf_deps.read_elf(path)
    emu = elf_deps.LoaderEmulator("glibc", None)
    found, _missing = emu.list_deps(path, path, info, HOST_LD, info.interp)
    return {r.name: r.path for r in found}


def run(quick: bool) -> list[dict]:
    if not os.path.exists(HOST_LD):
        return [{"scenario": "elf_deps", "metric": "agreement", "value": None, "unit": "ratio",
                 "goal": "1.0", "meets_goal": None, "note": "no glibc loader on this host"}]
    binaries = _pick(20 if quick else 50)
    repeats = 3 if quick else 5
    real_times, our_times = [], []
    real_res: dict[str, dict | None] = {}
    our_res: dict[str, dict] = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in binaries:
            real_res[b] = _real(b)
        real_times.append(time.perf_counter() - t0)
        elf_deps._ELF_CACHE.clear()
        t0 = time.perf_counter()
        for b in binaries:
            our_res[b] = _ours(b)
        our_times.append(time.perf_counter() - t0)
    compared = [b for b in binaries if real_res[b] is not None]
    agree = [b for b in compared if real_res[b] == our_res[b]]
    differ = [os.path.basename(b) for b in compared if b not in agree]
    agreement = len(agree) / len(compared) if compared else None
    real_med, our_med = statistics.median(real_times), statistics.median(our_times)
    return [
        {"scenario": "elf_deps", "metric": "agreement_with_ld_so_list", "value": agreement,
         "unit": "ratio", "goal": "1.0 (same name->path map as ld.so --list)",
         "meets_goal": agreement == 1.0 if agreement is not None else None,
         "note": f"{len(agree)}/{len(compared)} binaries from /usr/bin agree"
                 + (f"; differ: {', '.join(differ)}" if differ else "")},
        {"scenario": "elf_deps", "metric": "time_ratio_ours_over_ld_so", "value": our_med / real_med,
         "unit": "x", "goal": "< 1x (faster than ld.so --list on each binary)",
         "meets_goal": our_med < real_med,
         "note": f"median of {repeats}: ours {our_med * 1000:.1f} ms, ld.so --list {real_med * 1000:.1f} ms "
                 f"for {len(binaries)} binaries"},
    ]


if __name__ == "__main__":
    records = run("--quick" in sys.argv)
    for r in records:
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        print(f"{r['scenario']:<10} {r['metric']:<28} {value:>8} {r['unit']:<6} {r['note']}")
