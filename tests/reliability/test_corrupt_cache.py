"""A damaged store is never trusted: bad blobs and action entries are reported, dropped and
rebuilt, and the outputs equal a clean build's.

Each round copies a warm store, damages a few random blobs or action entries (flip one bit,
truncate, delete, replace with junk), builds a fresh checkout against it, and then builds a
second fresh checkout to check the store healed: everything restores, nothing warns.
``OCCLUM_RULES_CORRUPT_ROUNDS`` (default 1 per kind of damage) sets the number of rounds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from tests.reliability.support import (
    build,
    check_store,
    diff,
    fresh_workspace,
    no_traceback,
    outputs,
    scale,
)
from tests.support.workspace import outcomes, report

ROUNDS = scale("OCCLUM_RULES_CORRUPT_ROUNDS", 1)
DAMAGE = ("flip", "truncate", "delete", "junk")


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    base = tmp_path_factory.mktemp("corrupt-ref")
    ws = fresh_workspace(base / "clean")
    cache = base / "cache"
    build(ws, cache)
    assert not check_store(cache)
    return {"cache": cache, "clean": outputs(ws)}


def damage(path: Path, how: str, rng: random.Random) -> None:
    """Change a store file so that its bytes are certainly different (or it is gone)."""
    os.chmod(path, 0o644)  # blobs are stored read-only
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
        return
    if how == "flip" and data:
        i = rng.randrange(len(data))
        data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
    elif how == "truncate" and data:
        data = data[:rng.randrange(len(data))]
    else:  # junk, or an empty file that cannot be flipped or truncated
        data = data + b"\x00junk" if how != "junk" else b"{\"outputs\": 7, junk"
    path.write_bytes(data)


def _entries(cache: Path, kind: str) -> list[Path]:
    return sorted(p for p in (cache / kind).glob("*/*") if not p.name.startswith("."))


def _users(cache: Path) -> dict[str, set[str]]:
    """blob digest -> labels of the actions whose cached outputs need it."""
    users: dict[str, set[str]] = {}
    for entry in _entries(cache, "ac"):
        manifest = json.loads(entry.read_bytes())
        for out in manifest["outputs"]:
            digests = [out["sha256"]] if out["type"] == "file" else [
                e["sha256"] for e in out.get("entries", []) if e["type"] == "file"]
            for d in digests:
                users.setdefault(d, set()).add(manifest["label"])
    return users


def _check_healed(tmp_path: Path, cache: Path, clean: dict, name: str) -> None:
    again = fresh_workspace(tmp_path / f"{name}-again")
    result = build(again, cache)
    assert outputs(again) == clean, diff(clean, outputs(again))
    assert "warning:" not in result.output, f"the store did not heal:\n{result.output}"
    assert report(again)["actions_run"] == 0, "a rebuilt result was not stored again"
    assert not check_store(cache), check_store(cache)


def test_damaged_blobs_are_reported_and_rebuilt(warm, tmp_path):
    rng = random.Random(2011)
    for r in range(ROUNDS * len(DAMAGE)):
        how = DAMAGE[r % len(DAMAGE)]
        cache = tmp_path / f"cache{r}"
        shutil.copytree(warm["cache"], cache)
        users = _users(cache)
        victims = rng.sample(_entries(cache, "cas"), 3)
        for blob in victims:
            damage(blob, how, rng)
        ws = fresh_workspace(tmp_path / f"ws{r}")
        result = build(ws, cache)
        assert no_traceback(result.output), result.output
        got = outputs(ws)
        assert got == warm["clean"], f"round {r} ({how}):\n{diff(warm['clean'], got)}"
        warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
        ran = {a.rsplit(":", 1)[0] for a, o in outcomes(ws).items() if o == "run"}
        for blob in victims:
            labels = users.get(blob.name, set())
            if not labels:
                continue  # a blob no action entry needs (none today) is simply never read
            assert labels & ran, f"round {r} ({how}): blob {blob.name[:12]} of {labels} was " \
                f"not rebuilt; ran: {sorted(ran)}"
            assert any(label in w for w in warnings for label in labels), \
                f"round {r} ({how}): no warning names {labels}:\n{result.output}"
        _check_healed(tmp_path, cache, warm["clean"], f"ws{r}")


def test_damaged_action_entries_are_reported_and_rebuilt(warm, tmp_path):
    rng = random.Random(2012)
    for r in range(ROUNDS * len(DAMAGE)):
        how = DAMAGE[r % len(DAMAGE)]
        cache = tmp_path / f"cache{r}"
        shutil.copytree(warm["cache"], cache)
        victims = rng.sample(_entries(cache, "ac"), 3)
        labels = {json.loads(v.read_bytes())["label"] for v in victims}
        for entry in victims:
            damage(entry, how, rng)
        ws = fresh_workspace(tmp_path / f"ws{r}")
        result = build(ws, cache)
        assert no_traceback(result.output), result.output
        got = outputs(ws)
        assert got == warm["clean"], f"round {r} ({how}):\n{diff(warm['clean'], got)}"
        ran = {a.rsplit(":", 1)[0] for a, o in outcomes(ws).items() if o == "run"}
        assert labels <= ran, f"round {r} ({how}): {labels - ran} did not re-run"
        if how != "delete":  # a deleted entry is an ordinary miss; damage must be reported
            for label in labels:
                assert any(line.startswith("warning:") and label in line
                           for line in result.output.splitlines()), \
                    f"round {r} ({how}): damage to {label}'s entry was not reported:\n{result.output}"
        _check_healed(tmp_path, cache, warm["clean"], f"ws{r}")


def test_every_single_bit_of_one_action_entry(warm, tmp_path):
    """A flip anywhere in an entry (paths, modes, digests, link targets) is never trusted:
    the result is either refused (and rebuilt) or still restores exactly the clean bytes."""
    cache = tmp_path / "cache"
    shutil.copytree(warm["cache"], cache)
    # the entry of the layout action: symlinks, copies, text files with modes
    entries = {json.loads(p.read_bytes())["kind"]: p for p in _entries(cache, "ac")}
    target = entries.get("instance.layout") or next(iter(entries.values()))
    original = target.read_bytes()
    rng = random.Random(2013)
    positions = sorted(rng.sample(range(len(original) * 8), min(scale(
        "OCCLUM_RULES_CORRUPT_BITS", 8), len(original) * 8)))
    # plus the bits a random sample rarely hits but that matter most: a file's mode (still
    # valid JSON, still a plausible mode) and a character of a link target
    for field in (b'"mode":', b'"target":"'):
        at = original.find(field)
        if at >= 0:
            positions.append((at + len(field) + 1) * 8)
    ws = fresh_workspace(tmp_path / "ws")
    build(ws, cache)
    for bit in positions:
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(data))
        shutil.rmtree(ws / "out")
        result = build(ws, cache)
        assert no_traceback(result.output), result.output
        got = outputs(ws)
        assert got == warm["clean"], f"bit {bit} ({chr(original[bit // 8])!r} at byte " \
            f"{bit // 8}):\n{diff(warm['clean'], got)}"
        target.write_bytes(original)


def test_damage_is_detected_by_the_checks(warm, tmp_path):
    """The store check used above does see a damaged blob and a dangling entry."""
    cache = tmp_path / "cache"
    shutil.copytree(warm["cache"], cache)
    rng = random.Random(1)
    damage(_entries(cache, "cas")[0], "flip", rng)
    assert check_store(cache)
    cache2 = tmp_path / "cache2"
    shutil.copytree(warm["cache"], cache2)
    damage(_entries(cache2, "cas")[0], "delete", rng)
    assert check_store(cache2)


def test_instance_from_cache_has_run_skeleton(warm, tmp_path):
    """run/ is made outside the layout action's outputs (it is never removed): a cache hit
    must still create it (found by this suite; fixed with the executor's ensure_dirs)."""
    ws = fresh_workspace(tmp_path / "ws")
    build(ws, warm["cache"])
    assert report(ws)["actions_run"] == 0
    inst = ws / "out/bin/examples/hello_c/instance"
    assert (inst / "run/mount/__ROOT").is_dir() and (inst / "run/initfs/__ROOT").is_dir()
