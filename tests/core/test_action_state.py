"""The engine owns every action's state: where it lives, how `cache stats` counts it and
that `doit clean` takes it away with the outputs (issue 16, item 1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.workspace import copy_examples, run_cli, run_doit

# What may stay under out/.occlum-rules/ after `doit clean`: nothing that belongs to one
# action. doit's own database and lock, the digest cache (file stamps -> sha256, shared by
# every action and keyed by path, like a journal of what was hashed), the toolchain probe
# and the state directories themselves (empty).
SHARED = {"doit.db", "lock", "digests.marshal", "digests.marshal.outputs", "digests.marshal.log",
          "digests.marshal.outputs.log", "toolchains.json",
          "state", "actions", "runs",
          "scratch"}


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    names = ["hello_c"] + (["hello_go"] if shutil.which("go") else [])
    ws = copy_examples(tmp / "ws", names)
    cache = tmp / "cache"
    result = run_doit(ws, "build", cache=cache)
    assert result.returncode == 0, result.output
    return ws, cache


def test_in_place_stages_keep_state_only_in_engine_given_directories(built):
    ws, _ = built
    engine = ws / "out" / ".occlum-rules"
    state = engine / "state"
    kinds = {d.name.rpartition("-")[0] for d in state.iterdir() if d.is_dir() and d.name != "shared"}
    # the SEFS packs, copy_bom's ELF facts and the package's segments each have their own
    assert {"sefs.pack", "copy_bom", "package"} <= kinds, kinds
    packs = [d for d in state.iterdir() if d.name.startswith("sefs.pack-")]
    assert len(packs) == 2 and all((d / "pack.state").is_file() for d in packs)
    # every state file there is in the one framing
    for d in state.iterdir():
        for f in d.rglob("*.state"):
            assert f.read_bytes().startswith(b"occlum-rules/"), f
    # nothing of a stage's state beside the engine's own files any more
    assert not (engine / "sefs").exists() and not (engine / "package").exists()
    assert not (engine / "elf-headers.marshal").exists()
    if shutil.which("go"):
        shared = [d.name for d in (state / "shared").iterdir()]
        assert len(shared) == 1 and shared[0].startswith("go.build-"), shared


def test_cache_stats_lists_state_bytes_per_kind(built):
    ws, cache = built
    result = run_cli("cache", "stats", cwd=ws, env={"OCCLUM_RULES_CACHE": str(cache)})
    assert result.returncode == 0, result.output
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines()}
    assert "action state" in lines
    for kind in ("sefs.pack", "copy_bom", "package", "action records"):
        assert kind in lines, result.stdout
        assert not lines[kind].rstrip().endswith(" 0 B"), lines[kind]


def test_clean_removes_every_actions_state(built):
    ws, cache = built
    engine = ws / "out" / ".occlum-rules"
    assert _files_under(engine / "state") and _files_under(engine / "actions")
    # what an older version left where stages chose their own paths goes too
    (engine / "sefs").mkdir()
    (engine / "sefs" / "0123-image.json").write_text("{}")
    (engine / "elf-headers.marshal").write_bytes(b"old")
    result = run_doit(ws, "clean", cache=cache)
    assert result.returncode == 0, result.output
    assert _files_under(engine / "state") == []
    assert _files_under(engine / "actions") == []
    left = {p.name for p in engine.iterdir()}
    assert left <= SHARED, left - SHARED
    # and the next build starts from nothing and works
    again = run_doit(ws, "build", cache=cache)
    assert again.returncode == 0, again.output
    assert os.path.isfile(ws / "out" / ".occlum-rules" / "doit.db")


def test_read_state_keeps_one_big_state_decoded_and_rereads_the_others(tmp_path, monkeypatch):
    """A full build must not hold every image's decoded state to its end (peak RSS, issue 18
    item 6); an evicted state is decoded again, with the same content."""
    from occlum_rules.core import action_state
    from occlum_rules.core.build_env import BuildEnv

    monkeypatch.setattr(action_state, "_STATES", {})
    env = BuildEnv(root=str(tmp_path), out=str(tmp_path / "out"),
                   state_dir=str(tmp_path / "state"), cache_dir=str(tmp_path / "cache"),
                   run_id="t", source_date_epoch=0)
    (tmp_path / "state" / "actions").mkdir(parents=True)
    states = {}
    for name in ("small", "big1", "big2"):
        files = 10 if name == "small" else 40_000
        states[name] = {"key": name, "stamps": {f"out/{name}/{i:06d}": (i, i, 0o100644)
                                                for i in range(files)}}
        action_state.write_action_state(action_state.state_path(env, name), states[name])
    assert action_state.state_path(env, "big1").stat().st_size > action_state._BIG_STATE
    assert action_state.state_path(env, "small").stat().st_size < action_state._BIG_STATE

    small = action_state.read_state(env, "small")
    first = action_state.read_state(env, "big1")
    assert action_state.read_state(env, "big1") is first  # kept while it is the last big one
    assert _decoded(action_state.read_state(env, "big2")) == states["big2"]
    assert set(action_state._STATES) == {str(action_state.state_path(env, n))
                                         for n in ("small", "big2")}
    assert action_state.read_state(env, "small") is small
    again = action_state.read_state(env, "big1")
    assert again is not first and _decoded(again) == _decoded(first) == states["big1"]


def _decoded(state: dict | None) -> dict:
    """A record as written: the stamps are kept encoded until a check walks."""
    from occlum_rules.core.outputs import recorded_stamps

    assert state is not None
    return {**state, "stamps": recorded_stamps(state)}
