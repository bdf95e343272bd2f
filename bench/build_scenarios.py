"""Benchmark: whole builds through ``doit build`` on generated workspaces.

Scenarios (issue 11), all measured in one run so the ratios compare like with like:
  1. full build of the synthetic image (~1 GiB / ~20k files; quick ~100 MB / 2k) from an
     empty output directory and an empty cache, with seconds per stage from
     out/build-report.json; the same for the host-Python image (interpreter + stdlib);
     Then the floors of its stages on the same bytes and disk (bench/floors.py, issue 18):
     each stage's ratio to its floor, and the full build's ratio to the sum of the floors;
  2. incremental: rewrite one 1 MiB file of the synthetic image, rebuild; ratio to (1), and
     to the floor of writing + hashing the new package once (bench/floors.py);
  5. fresh clone + warm local store: the workspace sources copied to a new directory, built
     with the store (1) and (2) filled; actions run (must be 0) and wall time next to
     ``shutil.copy`` of the very blobs the build restored.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import floors  # noqa: E402
import harness as h  # noqa: E402
import workloads as wl  # noqa: E402

S1 = "1 full build"
S1P = "1 full build (host Python)"
S2 = "2 incremental (1 MiB changed)"
S5 = "5 fresh clone + warm store"
S1F = "1 full build: floors"


def _sizes(quick: bool) -> dict:
    if quick:
        return {"total": 100 * 10**6, "files": 2000, "elves": 10, "runs": 2, "inc_runs": 2,
                "clone_runs": 2}
    return {"total": 2**30, "files": 20000, "elves": 40, "runs": 3, "inc_runs": 3, "clone_runs": 1}


def _stage_medians(reports: list[dict]) -> dict[str, float]:
    """Median seconds per stage group over the full builds (floors are compared with these)."""
    per_run = [h.stage_seconds(r) for r in reports]
    return {name: h.median([s[name] for s in per_run]) for name, _ in h.STAGE_GROUPS}


def _stage_records(scenario: str, reports: list[dict], total_med: float) -> list[dict]:
    out = []
    for name, med in _stage_medians(reports).items():
        if name == "package" and not med:
            continue
        out.append(h.rec(scenario, f"stage: {name}", round(med, 3), "s", "informational", None,
                         f"{med / total_med:.0%} of the build's wall time; "
                         "as journaled by the executor (run + output digests + store)"))
    return out


@dataclass
class FullBuilds:
    """What the full builds of one workspace left: records, the last (warm) cache, the median
    wall time and the median seconds per stage (None when a build failed)."""

    records: list[dict]
    cache: Path | None = None
    median: float | None = None
    stages: dict[str, float] | None = None


def _full_builds(scenario: str, ws: Path, base: Path, runs: int, what: str,
                 nbytes: int, paired_sources: list[Path] | None = None) -> FullBuilds:
    """``runs`` builds from nothing, each with an empty out/ and an empty cache.

    ``paired_sources``: also time copy_bom's floor (a kernel copy of these files) just
    before each build, after the same removal of the last build's outputs: creating 20k
    files on this machine's disk costs 0.1 to 3 s per 5000 from one minute to the next (Dec
    7 2026), so a floor taken minutes away from the build says little about it."""
    records: list[dict] = []
    times, reports, paired = [], [], []
    cache = None
    for i in range(runs):
        h.rmtree(ws / "out")
        if cache is not None:
            h.rmtree(cache)
        cache = base / f"cache-{scenario[:1]}-{i}"
        if paired_sources:
            paired.append(floors.copy_floor(paired_sources, base / "paired-floor", 1).seconds)
        r = h.run_doit(ws, "build", cache=cache)
        if not r.ok:
            records.append(h.rec(scenario, "wall time (doit build)", None, "s", "informational",
                                 None, f"build failed: {r.failure()}"))
            return FullBuilds(records)
        times.append(r.seconds)
        reports.append(r.report or {})
    med = h.median(times)
    actions = reports[-1].get("actions_run", 0)
    records.append(h.rec(scenario, "wall time (doit build, empty out/ and cache)", round(med, 3), "s",
                         "informational", None,
                         f"median of {runs}: {', '.join(f'{t:.1f}' for t in times)} s; {what}; "
                         f"{actions} actions; {nbytes / med / 1e6:.0f} MB/s of image"))
    records += _stage_records(scenario, reports, med)
    if paired:
        stage = [h.stage_seconds(r)["copy_bom"] for r in reports]
        ratios = [s_ / f for s_, f in zip(stage, paired) if f]
        records.append(h.rec(
            S1F, "stage copy_bom / its floor taken just before the same build",
            round(h.median(ratios), 2) if ratios else None, "x", "informational", None,
            "median of the per-build ratios; copy_bom "
            + ", ".join(f"{s_:.1f}" for s_ in stage) + " s vs its floor "
            + ", ".join(f"{f:.1f}" for f in paired) + " s (os.copy_file_range of the same "
            "files into a fresh directory, after the same removal of the last build and a sync)"))
    return FullBuilds(records, cache, med, _stage_medians(reports))


def _floors(ws: Path, base: Path, elves: list[str], full: FullBuilds, quick: bool) -> list[dict]:
    """Floors of each stage on the bytes and the disk the last full build used (issue 18):
    the workspace is reused, so the 1 GiB image is generated once."""
    if full.median is None or not full.stages:
        return []
    sources = floors.regular_files(ws / "big" / "data") + [Path(e) for e in elves]
    runs = 2 if quick else 1
    measured = floors.measure(sources, sources, ws / "out", base / "floors", level=6, runs=runs)
    return floors.records(S1F, measured, full.stages, full.median, runs)


def _rewrite_hot(path: Path, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(wl.MIB))


def _incremental(ws: Path, cache: Path, full_med: float, runs: int, profile: bool,
                 scratch: Path) -> list[dict]:
    hot = ws / "big" / wl.HOT_FILE
    rng = random.Random(2024)
    time.sleep(2.5)  # nothing counts as "changed in the same instant as it was recorded"
    records: list[dict] = []
    # (a) what the issue asks: `doit build`, package included when the rule exists;
    # (b) the same change built only up to the signed instance, to show the package's share.
    for what, args in (("doit build", ("build",)), ("doit //big:instance", ("//big:instance",))):
        times, reports = [], []
        # the second variant is informational: one run keeps the suite short
        for _ in range(runs if args == ("build",) else 1):
            _rewrite_hot(hot, rng)
            r = h.run_doit(ws, *args, cache=cache)
            if not r.ok:
                main = args == ("build",)
                records.append(h.rec(S2, f"{what}: wall time vs full build", None, "%",
                                     "<= 1% of (1)" if main else "informational",
                                     False if main else None, f"incremental build failed: {r.failure()}"))
                break
            times.append(r.seconds)
            reports.append(r.report or {})
        else:
            med = h.median(times)
            ratio = med / full_med
            stages = h.stage_seconds(reports[-1])
            top = sorted(stages.items(), key=lambda kv: -kv[1])[:3]
            inner = h.median([float(r.get("seconds", 0)) for r in reports])
            ran = reports[-1].get("actions_run", 0)
            note = (f"median {med:.2f} s of {len(times)} (doit's own count {inner:.2f} s, the rest is "
                    f"process start + BUILD loading) vs full {full_med:.1f} s; {ran} actions re-ran; "
                    "biggest stages in the last of them: " + ", ".join(f"{k} {v:.2f}s" for k, v in top))
            goal = "<= 1% of (1)" if args == ("build",) else "informational"
            records.append(h.rec(S2, f"{what}: wall time vs full build", round(ratio * 100, 3), "%",
                                 goal, (ratio <= 0.01) if args == ("build",) else None, note))
            if args == ("build",):
                records += _against_package_rewrite(ws, med, scratch)
            if profile and ratio > 0.01:
                records[-1]["note"] += "; " + h.profile_doit(
                    ws, *args, cache=cache, prepare=lambda: _rewrite_hot(hot, rng))
    # leave everything (package included) built, so the store holds the current state
    h.run_doit(ws, "build", cache=cache)
    return records


def _blobs_of(cache: Path, report: dict) -> list[Path]:
    from occlum_rules.core.store import LocalStore, manifest_blobs

    store = LocalStore(cache)
    blobs: set[str] = set()
    for a in report.get("actions", []):
        if a.get("outcome") not in ("cache_hit_local", "cache_hit_remote"):
            continue
        manifest = store.get_action(a["action_key"])
        if manifest:
            blobs.update(manifest_blobs(manifest))
    return [store.cas_path(d) for d in sorted(blobs)]


def _fresh_clone(ws: Path, base: Path, cache: Path, runs: int, profile: bool) -> list[dict]:
    clone = base / "clone"
    times, reports = [], []
    for _ in range(runs):
        h.rmtree(clone)
        wl.clone_sources(ws, clone)
        r = h.run_doit(clone, "build", cache=cache)
        if not r.ok:
            return [h.rec(S5, "actions run", None, "actions", "0", False,
                          f"clone build failed: {r.failure()}")]
        times.append(r.seconds)
        reports.append(r.report or {})
    med = h.median(times)
    last = reports[-1]
    ran = int(last.get("actions_run", 0))
    hits = int(last.get("cache_hits_local", 0))
    blobs = _blobs_of(cache, last)
    nbytes = sum(b.stat().st_size for b in blobs)
    dest = base / "copy-out"

    def copy_blobs() -> None:
        h.rmtree(dest)
        dest.mkdir()
        for b in blobs:
            shutil.copy(b, dest / b.name)

    copy_med = h.median([h.timed(copy_blobs) for _ in range(runs)])
    h.rmtree(dest)
    ratio = med / copy_med if copy_med else None
    records = [
        h.rec(S5, "actions run", ran, "actions", "0", ran == 0,
              f"{hits} local cache hits, {last.get('up_to_date', 0)} up to date"),
        h.rec(S5, "wall time vs shutil.copy of the restored blobs",
              round(ratio, 3) if ratio else None, "x", "<= 1.5x",
              (ratio <= 1.5) if ratio else None,
              f"clone build median {med:.2f} s (doit's own count "
              f"{h.median([float(r.get('seconds', 0)) for r in reports]):.2f} s); copying "
              f"{len(blobs)} blobs / {nbytes / 1e6:.0f} MB takes {copy_med:.2f} s"),
    ]
    if profile and ratio and ratio > 1.5:
        records[1]["note"] += "; " + h.profile_doit(
            clone, "build", cache=cache,
            prepare=lambda: (h.rmtree(clone), wl.clone_sources(ws, clone)))
    h.rmtree(clone)
    return records


def _against_package_rewrite(ws: Path, incremental: float, scratch: Path) -> list[dict]:
    """Issue 18, item 4's second goal: the incremental build with its package is at most 1.5x
    what writing and hashing the new package once costs on this disk."""
    packages = sorted((ws / "out").rglob("*.tar.gz"))
    metric = "doit build: wall time vs writing + hashing the new package once"
    if not packages:
        return [h.unavailable(S2, metric, "x", "<= 1.5x", "the build made no package")]
    floor = floors.rewrite_floor(packages[0], scratch, runs=2)
    ratio = incremental / floor.seconds
    return [h.rec(S2, metric, round(ratio, 3), "x", "<= 1.5x", ratio <= 1.5,
                  f"incremental median {incremental:.2f} s vs {floor.seconds:.2f} s: {floor.what}, "
                  f"{floor.nbytes / floor.seconds / 1e6:.0f} MB/s; median of 2")]


def synthetic(quick: bool, profile: bool = False) -> list[dict]:
    size = _sizes(quick)
    base = h.workdir("build")
    records: list[dict] = []
    try:
        ws = wl.new_workspace(base / "ws")
        pkg = ws / "big"
        pkg.mkdir()
        elves = wl.pick_host_elves(size["elves"])
        stats = wl.make_synthetic_tree(pkg, size["total"], size["files"])
        (pkg / "image.yaml").write_text(wl.synthetic_bom(elves))
        with_package = wl.package_rule_available()
        (pkg / "BUILD.py").write_text(wl.instance_build("image.yaml", package=with_package))
        what = (f"{stats.bytes / 1e6:.0f} MB in {stats.files} generated files + {len(elves)} host "
                f"ELF files with their libraries" + ("" if with_package else
                                                     "; no occlum_package rule, so no package stage"))
        paired = floors.regular_files(pkg / "data") + [Path(e) for e in elves]
        full = _full_builds(S1, ws, base, size["runs"], what, stats.bytes, paired)
        records += full.records
        cache, full_med = full.cache, full.median
        if cache is None or full_med is None:
            reason = "the full build (1) failed"
            records.append(h.unavailable(S2, "wall time vs full build", "%", "<= 1% of (1)", reason))
            records.append(h.unavailable(S5, "actions run", "actions", "0", reason))
            return records
        records += _floors(ws, base, elves, full, quick)
        records += _incremental(ws, cache, full_med, size["inc_runs"], profile, base / "rewrite")
        records += _fresh_clone(ws, base, cache, size["clone_runs"], profile)
    finally:
        h.rmtree(base)
    return records


def python_image(quick: bool) -> list[dict]:
    bom = wl.python_bom()
    if bom is None:
        return [h.unavailable(S1P, "wall time (doit build)", "s", "informational",
                              "no host Python standard library found")]
    base = h.workdir("python")
    try:
        ws = wl.new_workspace(base / "ws")
        pkg = ws / "python"
        pkg.mkdir()
        (pkg / "python.yaml").write_text(bom)
        (pkg / "BUILD.py").write_text(wl.instance_build("python.yaml"))
        interp, lib = wl.python_stdlib_dir()
        nbytes = sum(p.stat().st_size for p in Path(lib).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts
                     and not {"site-packages", "dist-packages"} & set(p.parts))
        full = _full_builds(S1P, ws, base, 2,
                            f"{interp} + {lib} (no __pycache__)", nbytes)
        records, cache, med = full.records, full.cache, full.median
        if med is not None and cache is not None:
            r = h.run_doit(ws, "build", cache=cache)
            if r.ok:
                records.append(h.rec(S1P, "null build after it (nothing changed)", round(r.seconds, 3),
                                     "s", "informational", None,
                                     f"{r.count('actions_run')} actions run"))
        return records
    finally:
        h.rmtree(base)


def run(quick: bool, profile: bool = False) -> list[dict]:
    return synthetic(quick, profile) + python_image(quick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~100 MB / 2k files instead of ~1 GiB / 20k")
    ap.add_argument("--profile", action="store_true", help="cProfile a run that misses a goal")
    args = ap.parse_args()
    h.print_table(run(args.quick, args.profile))


if __name__ == "__main__":
    main()
