"""Benchmark 10 and 11: how cost and the store grow with the image (issue 18, items 6 and 7).

10. Cost growth. The synthetic image of scenario 1 (same file-size mix: 40 % in four large
    binaries, the hot 1 MiB file, log-normal small files at ~20k files per GiB, one in three
    text-like) is built at 256 MiB, 1 GiB and 4 GiB (quick: 32, 64 and 128 MiB), each from an
    empty ``out/`` and an empty store, then once more after rewriting the 1 MiB hot file (as
    scenario 2 does). Per size: full-build seconds and seconds per GiB, incremental seconds,
    and the peak RSS of the build. Goals: seconds per GiB of the largest size at most 20 %
    above the smallest's (cost linear in the image), and peak RSS below 300 MiB at every size
    (streaming, no whole-image buffers: Occlum issue #1242 is an OOM on big images).
11. Store growth. Across that incremental build, the bytes the local store
    (``OCCLUM_RULES_CACHE``: ``cas/`` blobs and ``ac/`` entries) grew by, next to the bytes of
    the outputs whose content is new (the package included): a content-addressed store must
    not take a second copy of an unchanged blob.

Peak RSS. Each ``doit build`` runs in a fresh interpreter that writes its own ``VmHWM``
(the high-water mark of its resident set, kept by the kernel per address space and so exact)
to a file as it exits; a sampler reads ``VmRSS`` and ``VmHWM`` of every process in the
build's tree every 0.1 s, for the children (compilers of the stand-in LibOS, ...) and for the
largest sum of a moment, which catches concurrent children (it can miss a peak shorter than
its period). The row reports the largest of these. Not ``os.wait4``'s ``ru_maxrss``: a child
inherits the high-water mark of the process it was forked from, so inside the whole suite
every build "peaked" at the bench runner's own 556 MiB (Dec 7 2026).

Disk. A size needs its sources, ``out/`` (the image copy, the SEFS image, the instance, the
package), the action state under ``out/`` and the store (a copy of every output, and a second
package after the incremental build). The module measures that at each size and extrapolates
to the next per byte of image; a size is skipped (``not available:``) when the free space of
the work dir's file system is below that estimate plus 2 GiB. Measured: 8.1x the image at
every size, so the 4 GiB case needs ~33 GiB (Dec 6 2026).

Time: quick 40 s to 1.7 min (load average 1.4 to 4.4); full 10.5 to 15 min on 2 shared
cores (Dec 6 2026: 904 s while the load average rose from 1.8 to 5.7, the 4 GiB full build
432 s; 635 s while it fell from 4.2 to 0.4, that build 225 s). One run per size: a second 4 GiB build would add 4 to 7 min, so
these numbers are single runs, not medians, and the s/GiB growth follows the machine's load
as much as the image (the two runs above: +72 % and -46 %); each row notes the load.

Where a peak comes from: ``python bench/growth.py --stage-rss MIB[:FILES]`` builds one image
a doit task at a time and reports each step's peak; ``bench/rss_where.py`` shows where in a
step the RSS rises.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h  # noqa: E402
import workloads as wl  # noqa: E402

S10 = "10 cost growth"
S11 = "11 store growth"
GIB = 2**30
RSS_GOAL_MIB = 300
GROWTH_GOAL = 0.20
DISK_MARGIN = 2 * GIB
# Before any size was measured: bytes of disk per byte of image (sources, image copy, SEFS
# image, package x2 in out/ and the store, the store's copy of the image and SEFS outputs).
DISK_PER_BYTE_PRIOR = 7.0
SAMPLE_PERIOD = 0.1
# Stages whose work grows with the image (the rest is start-up, LibOS, config, signing).
IMAGE_STAGES = ("copy_bom", "SEFS pack (image)", "package")


def _sizes(quick: bool) -> list[int]:
    if quick:
        return [32 << 20, 64 << 20, 128 << 20]
    return [256 << 20, GIB, 4 * GIB]


def _label(total: int) -> str:
    return f"{total / GIB:g} GiB" if total >= GIB else f"{total >> 20} MiB"


# ----------------------------------------------------------------------------- peak RSS


def _proc_tree_rss(root: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, largest VmHWM of one process) in bytes, the first two summed over
    ``root`` and its descendants, from one pass over /proc. RssAnon is the part no file backs
    (heap, buffers); the rest of VmRSS is mapped files (the interpreter, libraries, and any
    file a stage maps, e.g. the store's mmap)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        ppid = kb = anon = hwm = 0
        for line in status.splitlines():
            if line.startswith(b"PPid:"):
                ppid = int(line.split()[1])
            elif line.startswith(b"VmRSS:"):
                kb = int(line.split()[1])
            elif line.startswith(b"RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = (kb * 1024, anon * 1024, hwm * 1024)
    total = total_anon = top = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        kb, anon, hwm = rss.get(pid, (0, 0, 0))
        total += kb
        total_anon += anon
        top = max(top, hwm)
        stack += children.get(pid, [])
    return total, total_anon, top


@dataclass
class MeasuredRun:
    """A doit run with its wall time, exit status, report and peak memory."""

    returncode: int
    seconds: float
    report: dict | None
    maxrss: int  # bytes: the largest VmHWM of one process of the tree (doit's own, exact)
    tree_peak: int  # bytes: largest sampled sum of VmRSS over the process tree
    anon_peak: int  # bytes: largest sampled sum of RssAnon over the process tree
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def peak(self) -> int:
        return max(self.maxrss, self.tree_peak)

    def failure(self) -> str:
        lines = [ln.strip() for ln in self.output.splitlines() if ln.strip()]
        return f"doit exit {self.returncode}: " + " | ".join(ln[:200] for ln in lines[-3:])


def run_doit_measured(ws: Path, *args: str, cache: Path) -> MeasuredRun:
    """``python -m doit <args>`` like :func:`harness.run_doit` (sync first, timed from outside),
    in an interpreter that reports its own VmHWM at exit, with a /proc sampler beside it."""
    report_path = ws / "out" / "build-report.json"
    report_path.unlink(missing_ok=True)
    log = ws.parent / f".doit-{os.getpid()}.log"
    hwm_file = ws.parent / f".doit-{os.getpid()}.vmhwm"
    hwm_file.unlink(missing_ok=True)
    os.sync()
    peak = [0, 0, 0]
    done = threading.Event()
    with open(log, "wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _REPORT_VMHWM, *args], cwd=ws,
                                env=h.doit_env(cache, {"BENCH_VMHWM_FILE": str(hwm_file)}),
                                stdout=out, stderr=subprocess.STDOUT)

        def sample() -> None:
            while not done.is_set():
                try:
                    rss, anon, hwm = _proc_tree_rss(proc.pid)
                    peak[0], peak[1], peak[2] = max(peak[0], rss), max(peak[1], anon), max(peak[2], hwm)
                except OSError:
                    pass
                done.wait(SAMPLE_PERIOD)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # reaped here for its status only: its ru_maxrss would count the high-water mark
        # the child inherited from this process (see the module doc)
        _pid, status, _usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen.wait
    output = log.read_text(errors="replace")
    log.unlink()
    report = None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        pass
    try:
        own = int(hwm_file.read_text()) * 1024
        hwm_file.unlink()
    except (OSError, ValueError):
        own = 0
    return MeasuredRun(proc.returncode, seconds, report, max(own, peak[2]), peak[0], peak[1],
                       output)


# ``python -m doit <args>`` that writes its VmHWM (kB) to $BENCH_VMHWM_FILE as it exits
_REPORT_VMHWM = """
import atexit, os, runpy, sys
def _report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(os.environ["BENCH_VMHWM_FILE"], "w") as f:
                f.write(line.split()[1])
atexit.register(_report)
sys.argv[0] = "doit"
runpy.run_module("doit", run_name="__main__", alter_sys=True)
"""


# ----------------------------------------------------------------------------- disk, store


def disk_bytes(root: Path) -> int:
    """Allocated bytes (st_blocks) of every file under ``root`` (what the disk pays)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _files(root: Path, skip: str = "") -> dict[str, os.stat_result]:
    """Regular files under ``root`` by relative path (``skip``: a top-level name left out)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if skip and Path(dirpath) == root and skip in dirs:
            dirs.remove(skip)
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                out[os.path.relpath(path, root)] = st
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class StoreSnapshot:
    blobs: dict[str, int]  # digest -> size
    ac_bytes: int
    ac_entries: int
    outputs: dict[str, os.stat_result] = field(default_factory=dict)


def snapshot(cache: Path, out: Path) -> StoreSnapshot:
    blobs = {p.name: p.stat().st_size for p in (cache / "cas").glob("*/*")
             if not p.name.startswith(".")}
    ac = [p for p in (cache / "ac").glob("*/*") if not p.name.startswith(".")]
    return StoreSnapshot(blobs, sum(p.stat().st_size for p in ac), len(ac),
                         _files(out, skip=".occlum-rules"))


@dataclass
class StoreGrowth:
    cas_bytes: int  # bytes of the blobs that appeared
    cas_blobs: int
    ac_bytes: int
    ac_entries: int
    changed_bytes: int  # outputs whose content is not in the store before (unique digests)
    changed_files: int
    package_bytes: int  # the new package (part of changed_bytes)
    stray_bytes: int  # new blobs that are no output of this build (would be a second copy)
    stray_blobs: int
    biggest: list[tuple[str, int]] = field(default_factory=list)  # changed outputs, by size


def store_growth(before: StoreSnapshot, after: StoreSnapshot, out: Path) -> StoreGrowth:
    """What the store gained across one build, next to what changed in ``out/``.

    An output changed when its stat stamp moved and its content digest was not in the store
    before (a file rewritten with the bytes it had, or with bytes some other output already
    had, brings no new content). Only those files are hashed."""
    new_blobs = {d: s for d, s in after.blobs.items() if d not in before.blobs}
    changed: dict[str, int] = {}
    names: list[tuple[str, int]] = []
    package = 0
    for rel, st in after.outputs.items():
        old = before.outputs.get(rel)
        if old is not None and _stamp(old) == _stamp(st):
            continue
        digest = _sha256(out / rel)
        if digest in before.blobs:
            continue
        changed[digest] = st.st_size
        names.append((rel, st.st_size))
        if rel.endswith(".tar.gz"):
            package += st.st_size
    stray = {d: s for d, s in new_blobs.items() if d not in changed}
    return StoreGrowth(sum(new_blobs.values()), len(new_blobs), after.ac_bytes - before.ac_bytes,
                       after.ac_entries - before.ac_entries, sum(changed.values()), len(changed),
                       package, sum(stray.values()), len(stray),
                       sorted(names, key=lambda n: -n[1])[:8])


# ----------------------------------------------------------------------------- one size


@dataclass
class SizeResult:
    total: int
    files: int
    nbytes: int
    gen_seconds: float
    full: MeasuredRun
    inc: MeasuredRun | None = None
    growth: StoreGrowth | None = None
    disk: int = 0  # bytes allocated under the work dir after the incremental build
    image_stage_seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after the size


def build_size(base: Path, total: int, pool: bytes) -> SizeResult:
    """Generate, build from nothing, rewrite the hot file, build again; measure all of it."""
    ws = wl.new_workspace(base / "ws")
    pkg = ws / "big"
    pkg.mkdir()
    files = wl.files_for(total)
    t = time.perf_counter()
    stats = wl.make_synthetic_tree(pkg, total, files, text_pool=pool)
    gen = time.perf_counter() - t
    (pkg / "image.yaml").write_text(wl.synthetic_bom([]))
    (pkg / "BUILD.py").write_text(wl.instance_build("image.yaml",
                                                    package=wl.package_rule_available()))
    cache = base / "cache"
    load_before = os.getloadavg()[0]
    full = run_doit_measured(ws, "build", cache=cache)
    result = SizeResult(total, stats.files, stats.bytes, gen, full)
    result.load = (load_before, os.getloadavg()[0])
    if not full.ok:
        return result
    result.stages = h.stage_seconds(full.report)
    result.image_stage_seconds = sum(result.stages[s] for s in IMAGE_STAGES)
    time.sleep(2.5)  # the rewrite must not share a timestamp with what the build recorded
    before = snapshot(cache, ws / "out")
    (pkg / wl.HOT_FILE).write_bytes(random.Random(2024).randbytes(wl.MIB))
    result.inc = run_doit_measured(ws, "build", cache=cache)
    if result.inc.ok:
        result.growth = store_growth(before, snapshot(cache, ws / "out"), ws / "out")
    result.disk = disk_bytes(base)
    return result


# ----------------------------------------------------------------------------- records


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def _size_records(r: SizeResult) -> list[dict]:
    lab = _label(r.total)
    what = (f"{r.nbytes / 1e6:.0f} MB in {r.files} files (generated in {r.gen_seconds:.0f} s), "
            f"{disk_note(r)}; load average {r.load[0]:.1f} before the build, {r.load[1]:.1f} "
            "after")
    if not r.full.ok:
        return [h.rec(S10, f"{lab}: full build", None, "s", "informational", None,
                      f"build failed: {r.full.failure()}")]
    gib = r.nbytes / GIB
    rep = r.full.report or {}
    top = sorted(r.stages.items(), key=lambda kv: -kv[1])[:4]
    out = [
        h.rec(S10, f"{lab}: full build (empty out/ and store)", round(r.full.seconds, 2), "s",
              "informational", None,
              f"{what}; {rep.get('actions_run', 0)} actions; one run; stages: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in top)),
        h.rec(S10, f"{lab}: full build per GiB", round(r.full.seconds / gib, 2), "s/GiB",
              "informational", None,
              f"image-size stages ({' + '.join(IMAGE_STAGES)}) alone "
              f"{r.image_stage_seconds / gib:.2f} s/GiB"),
    ]
    if r.inc is None or not r.inc.ok:
        out.append(h.rec(S10, f"{lab}: incremental (1 MiB changed)", None, "s", "informational",
                         None, "incremental build failed: "
                         + (r.inc.failure() if r.inc else "not run")))
    else:
        irep = r.inc.report or {}
        istages = sorted(h.stage_seconds(irep).items(), key=lambda kv: -kv[1])[:3]
        out.append(h.rec(S10, f"{lab}: incremental (1 MiB changed)", round(r.inc.seconds, 2), "s",
                         "informational", None,
                         f"{r.inc.seconds / r.full.seconds:.1%} of the full build; "
                         f"{irep.get('actions_run', 0)} actions re-ran; biggest stages: "
                         + ", ".join(f"{k} {v:.2f}s" for k, v in istages)))
    runs = [("full", r.full)] + ([("incremental", r.inc)] if r.inc and r.inc.ok else [])
    peak = max(m.peak for _, m in runs)
    where = ("" if peak < RSS_GOAL_MIB * 2**20 else
             f"; where it peaks: python bench/growth.py --stage-rss {r.total >> 20}, then "
             "bench/rss_where.py on the step that peaks")
    out.append(h.rec(S10, f"{lab}: peak RSS of the build", _mib(peak), "MiB",
                     f"< {RSS_GOAL_MIB} MiB", peak < RSS_GOAL_MIB * 2**20,
                     "; ".join(f"{n}: VmHWM {_mib(m.maxrss)} MiB (largest single "
                               f"process of the build's tree), sampled tree sum "
                               f"{_mib(m.tree_peak)} MiB of which anonymous (not file-backed) "
                               f"{_mib(m.anon_peak)} MiB" for n, m in runs) + where))
    return out


def disk_note(r: SizeResult) -> str:
    return (f"{r.disk / GIB:.1f} GiB of disk after the incremental build "
            f"({r.disk / max(r.nbytes, 1):.1f}x the image)") if r.disk else "disk not measured"


def _growth_records(r: SizeResult) -> list[dict]:
    lab = _label(r.total)
    g = r.growth
    goal = "<= bytes of changed outputs (new package included)"
    if g is None:
        return [h.unavailable(S11, f"{lab}: store growth per incremental build", "MB", goal,
                              "the full or the incremental build failed")]
    ok = g.cas_bytes <= g.changed_bytes and g.stray_blobs == 0
    return [
        h.rec(S11, f"{lab}: store growth per incremental build (cas blobs)",
              round(g.cas_bytes / 1e6, 2), "MB", goal, ok,
              f"{g.cas_blobs} new blobs; outputs with new content: {g.changed_files} files, "
              f"{g.changed_bytes / 1e6:.2f} MB, of which the package {g.package_bytes / 1e6:.2f} MB "
              f"(the rest {(g.changed_bytes - g.package_bytes) / 1e6:.2f} MB); biggest: "
              + ", ".join(f"{Path(n).name} {b / 1e6:.2f}" for n, b in g.biggest)
              + f" MB; new blobs that are no output of the build: {g.stray_blobs} "
              f"({g.stray_bytes / 1e6:.2f} MB)"),
        h.rec(S11, f"{lab}: store growth per incremental build (ac entries)",
              round(g.ac_bytes / 1e6, 3), "MB", "informational", None,
              f"{g.ac_entries} new action entries (output manifests: metadata, not blobs; a "
              "directory output lists every file's digest, so the copy_bom entry grows with the "
              "file count)"),
    ]


def _summary(results: list[SizeResult], skipped: list[tuple[int, str]]) -> list[dict]:
    ok = [r for r in results if r.full.ok]
    out: list[dict] = []
    goal = f"<= {GROWTH_GOAL:.0%}"
    if len(ok) >= 2:
        small, large = ok[0], ok[-1]
        per = [r.full.seconds / (r.nbytes / GIB) for r in ok]
        growth = per[-1] / per[0] - 1
        img = [r.image_stage_seconds / (r.nbytes / GIB) for r in ok]
        span = f"{_label(small.total)} -> {_label(large.total)}"
        incomplete = (f"; largest size measured is {_label(large.total)} (skipped: "
                      + ", ".join(_label(t) for t, _ in skipped) + ")") if skipped else ""
        out.append(h.rec(S10, f"full build s/GiB growth, {span}", round(growth * 100, 1), "%",
                         goal, growth <= GROWTH_GOAL if not skipped else None,
                         "s/GiB per size: " + ", ".join(
                             f"{_label(r.total)} {p:.2f}" for r, p in zip(ok, per))
                         + "; load average before/after each full build: " + ", ".join(
                             f"{r.load[0]:.1f}/{r.load[1]:.1f}" for r in ok)
                         + " (one run per size: on a shared machine a load change between "
                           "sizes moves this figure more than the image does); fixed costs "
                           "(interpreter start, BUILD loading, stand-in LibOS, config, signing) "
                           "weigh most on the smallest size" + incomplete))
        out.append(h.rec(S10, f"image-size stages s/GiB growth, {span}",
                         round((img[-1] / img[0] - 1) * 100, 1), "%", "informational", None,
                         f"{' + '.join(IMAGE_STAGES)} from the build reports: " + ", ".join(
                             f"{_label(r.total)} {p:.2f}" for r, p in zip(ok, img))
                         + "; s/GiB by stage: " + "; ".join(
                             f"{st} " + ", ".join(f"{r.stages[st] / (r.nbytes / GIB):.1f}"
                                                  for r in ok) for st in IMAGE_STAGES)))
        incs = [r for r in ok if r.inc and r.inc.ok]
        if len(incs) >= 2:
            out.append(h.rec(S10, f"incremental seconds, {span}",
                             round(incs[-1].inc.seconds / incs[0].inc.seconds, 2)  # type: ignore[union-attr]
                             if incs[0].inc else None, "x", "informational", None,
                             "incremental after one 1 MiB change: " + ", ".join(
                                 f"{_label(r.total)} {r.inc.seconds:.1f} s"  # type: ignore[union-attr]
                                 for r in incs)))
    else:
        out.append(h.unavailable(S10, "full build s/GiB growth", "%", goal,
                                 "fewer than two sizes built"))
    peaks = [max([r.full.peak] + ([r.inc.peak] if r.inc and r.inc.ok else [])) for r in ok]
    if peaks:
        worst = max(peaks)
        out.append(h.rec(S10, "max peak RSS over all sizes", _mib(worst), "MiB",
                         f"< {RSS_GOAL_MIB} MiB", worst < RSS_GOAL_MIB * 2**20,
                         ", ".join(f"{_label(r.total)} {_mib(p)} MiB" for r, p in zip(ok, peaks))))
    for total, reason in skipped:
        out.append(h.unavailable(S10, f"{_label(total)}: full build (empty out/ and store)", "s",
                                 "informational", reason))
    return out


def disk_needed(total: int, measured: list[SizeResult]) -> tuple[int, str]:
    """Bytes of disk a size needs: per byte of image as measured at the largest size so far
    (the prior before any), and how that was estimated (for the note)."""
    done = [r for r in measured if r.disk]
    if done:
        last = done[-1]
        per = last.disk / last.nbytes
        how = f"{per:.2f} x the image, as measured at {_label(last.total)}"
    else:
        per = DISK_PER_BYTE_PRIOR
        how = f"{per:.1f} x the image (prior estimate, nothing measured yet)"
    return int(total * per), how


def run(quick: bool) -> list[dict]:
    pool = wl.text_pool()
    results: list[SizeResult] = []
    skipped: list[tuple[int, str]] = []
    notes: list[str] = []
    for total in _sizes(quick):
        base = h.workdir("growth")
        try:
            need, how = disk_needed(total, results)
            free = shutil.disk_usage(base).free
            notes.append(f"{_label(total)}: needs ~{need / GIB:.1f} GiB ({how}); "
                         f"{free / GIB:.1f} GiB free")
            if free < need + DISK_MARGIN:
                skipped.append((total, f"needs ~{need / GIB:.1f} GiB of disk ({how}) plus a "
                                       f"{DISK_MARGIN / GIB:.0f} GiB margin; only "
                                       f"{free / GIB:.1f} GiB free in {base.parent}"))
                continue
            print(f"   growth: {_label(total)} ({wl.files_for(total)} files)", file=sys.stderr,
                  flush=True)
            results.append(build_size(base, total, pool))
        finally:
            h.rmtree(base)
    records: list[dict] = []
    for r in results:
        records += _size_records(r)
    records += _summary(results, skipped)
    records.append(h.rec(S10, "disk needed per size", round(max(
        [r.disk for r in results] or [0]) / GIB, 2), "GiB", "informational", None,
        "; ".join(notes) + "; measured: " + ", ".join(
            f"{_label(r.total)} {disk_note(r)}" for r in results)))
    for r in results:
        records += _growth_records(r)
    return records


STEPS = [("copy_bom", "//big:image:image"), ("SEFS pack (image)", "//big:instance:pack-image"),
         ("rest of the instance", "//big:instance"), ("package", "//big:package:package"),
         ("null build (doit start, BUILD loading, analysis)", "build")]


def stage_rss(total: int, files: int) -> list[dict]:
    """Where a build's peak RSS is reached: the image built one doit task at a time, each step
    its own ``doit`` process measured like a full build (what ran before is up to date, so a
    step's peak is that task's plus doit's own start-up, which the last step shows alone).
    Not part of the suite: ``python bench/growth.py --stage-rss MIB[:FILES]``."""
    base = h.workdir("growth-rss")
    records: list[dict] = []
    try:
        ws = wl.new_workspace(base / "ws")
        pkg = ws / "big"
        pkg.mkdir()
        stats = wl.make_synthetic_tree(pkg, total, files, text_pool=wl.text_pool())
        (pkg / "image.yaml").write_text(wl.synthetic_bom([]))
        (pkg / "BUILD.py").write_text(wl.instance_build("image.yaml", package=True))
        scen = f"10 peak RSS by step ({stats.bytes / 1e6:.0f} MB, {stats.files} files)"
        for name, target in STEPS:
            m = run_doit_measured(ws, target, cache=base / "cache")
            records.append(h.rec(scen, f"{name}: peak RSS", _mib(m.peak) if m.ok else None, "MiB",
                                 "informational", None,
                                 f"doit {target}: {m.seconds:.1f} s; VmHWM {_mib(m.maxrss)} "
                                 f"MiB, tree sum {_mib(m.tree_peak)} MiB, anonymous "
                                 f"{_mib(m.anon_peak)} MiB" if m.ok else m.failure()))
    finally:
        h.rmtree(base)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32/64/128 MiB instead of 256 MiB/1/4 GiB")
    ap.add_argument("--stage-rss", metavar="MIB[:FILES]",
                    help="instead: peak RSS of each build step for one image (files default: "
                         "scenario 1's mix)")
    args = ap.parse_args()
    if args.stage_rss:
        mib, _, files = args.stage_rss.partition(":")
        total = int(mib) << 20
        h.print_table(stage_rss(total, int(files) if files else wl.files_for(total)))
    else:
        h.print_table(run(args.quick))


if __name__ == "__main__":
    main()
