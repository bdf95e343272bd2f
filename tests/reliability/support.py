"""What the reliability tests share: tree snapshots, killable builds, store checks.

A snapshot records what a user could observe of a tree (type, permission bits, bytes,
link targets) and nothing incidental (mtimes, inode numbers), so "byte-identical to a
clean build" is one dictionary comparison whose difference can be printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.support.workspace import REPO, copy_examples, run_doit

EXAMPLES = ["hello_c", "multi_c"]
# doit task of the signed instance; everything the examples build is a default target
INSTANCE_DIR = "out/bin/examples/hello_c/instance"


def scale(name: str, default: int) -> int:
    """A test-size knob from the environment (CI keeps defaults; soak runs raise them)."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every path under ``root`` → (kind, mode, sha256 or link target). Skips top-level names."""
    result: dict[str, tuple] = {}
    root = Path(root)
    if not root.exists():
        return result
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                result[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
    return result


def outputs(ws: Path) -> dict[str, tuple]:
    """The build's products: everything under out/ but the engine's state and the report."""
    return snapshot(ws / "out", skip=(".occlum-rules", "build-report.json"))


def diff(expected: dict, actual: dict, limit: int = 12) -> str:
    lines = []
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            lines.append(f"  {key}: expected {expected.get(key)} got {actual.get(key)}")
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def fresh_workspace(dest: Path, examples: list[str] | None = None) -> Path:
    return copy_examples(dest, examples or EXAMPLES)


def doit_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OCCLUM_RULES_CACHE"] = str(cache)
    env.pop("OCCLUM_RULES_RUN_ID", None)
    env.pop("OCCLUM_RULES_REMOTE_CACHE", None)
    env.pop("OCCLUM_RULES_DEBUG", None)
    return env


def start_build(ws: Path, cache: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """``doit build`` in its own process group, so a kill reaches the compilers it started.
    With ``log``, its output goes to that file (readable while it runs)."""
    out = open(log, "wb") if log is not None else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, "-m", "doit", *(args or ("build",))], cwd=ws,
                                env=doit_env(cache), stdout=out,
                                stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
                                start_new_session=True)
    finally:
        if log is not None:
            out.close()


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the build's whole process group after ``delay`` s; True if it was still running."""
    try:
        proc.wait(timeout=delay)
        alive = False
    except subprocess.TimeoutExpired:
        alive = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, by its id
        except ProcessLookupError:
            pass
    proc.communicate(timeout=60)
    return alive


def build(ws: Path, cache: Path, *args: str, timeout: float = 300):
    result = run_doit(ws, *(args or ("build",)), cache=cache, timeout=timeout)
    assert result.returncode == 0, f"build failed in {ws}:\n{result.output}"
    return result


def timed_build(ws: Path, cache: Path) -> float:
    started = time.monotonic()
    build(ws, cache)
    return time.monotonic() - started


def seeded_delays(seed: int, count: int, duration: float) -> list[float]:
    """Kill delays spread over a build: one per equal slice, jittered by a seeded RNG, so
    every part of the build (loading, compiling, packing, signing) is hit at least once."""
    rng = random.Random(seed)
    step = duration / count
    return [round(step * i + rng.uniform(0, step), 4) for i in range(count)]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def false_up_to_date(ws: Path) -> list[str]:
    """Actions whose recorded state would let the engine call them up to date (their
    outputs' size/mtime/mode stamps all match) while the bytes on disk differ from what the
    state records: exactly the "half-written output treated as done" failure."""
    problems: list[str] = []
    from occlum_rules.core.action_state import load_state_file, tree_entries_of
    from occlum_rules.core.outputs import recorded_stamps

    for f in sorted((ws / "out/.occlum-rules/actions").glob("*.state")):
        try:
            state = load_state_file(f)
            stamps = recorded_stamps(state)
            outs = state["manifest"]["outputs"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # an unreadable state only makes the action run again
        try:
            intact = all((st.st_size, st.st_mtime_ns, st.st_mode) == tuple(stamp)
                         for rel, stamp in stamps.items() for st in [os.lstat(ws / rel)])
        except OSError:
            intact = False
        if not intact:
            continue
        for out in outs:
            path = ws / out["path"]
            if out["type"] == "file":
                ok = _sha256(path) == out["sha256"]
            elif out["type"] == "symlink":
                ok = os.readlink(path) == out["target"]
            else:
                ok = all(_sha256(path / e["path"]) == e["sha256"] for e in tree_entries_of(out)
                         if e["type"] == "file")
            if not ok:
                problems.append(f"{out['path']} differs from its recorded state ({f.name})")
    return problems


def check_store(cache: Path) -> list[str]:
    """Every problem in a store: blobs whose bytes do not match their name, action entries
    that are not complete manifests or that name blobs the store does not have."""
    problems: list[str] = []
    cas = cache / "cas"
    have: set[str] = set()
    if cas.is_dir():
        for blob in sorted(cas.glob("*/*")):
            if blob.name.startswith("."):
                continue  # a temporary name a killed writer left; never read as a blob
            digest = hashlib.sha256(blob.read_bytes()).hexdigest()
            if digest != blob.name or blob.parent.name != digest[:2]:
                problems.append(f"blob {blob.name[:12]} holds bytes hashing to {digest[:12]}")
            have.add(blob.name)
    ac = cache / "ac"
    if ac.is_dir():
        for entry in sorted(ac.glob("*/*")):
            if entry.name.startswith("."):
                continue
            try:
                manifest = json.loads(entry.read_bytes())
                outs = manifest["outputs"]
                needed = [o["sha256"] for o in outs if o["type"] == "file"]
                needed += [e["sha256"] for o in outs for e in o.get("entries", [])
                           if e["type"] == "file"]
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"action entry {entry.name[:12]} is not a manifest: {exc!r}")
                continue
            missing = [d for d in needed if d not in have]
            if missing:
                problems.append(f"action entry {entry.name[:12]} needs {len(missing)} missing blobs")
    return problems


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


__all__ = ["REPO", "EXAMPLES", "INSTANCE_DIR", "scale", "snapshot", "outputs", "diff",
           "fresh_workspace", "start_build", "kill_after", "build", "timed_build",
           "seeded_delays", "check_store", "false_up_to_date", "no_traceback"]
