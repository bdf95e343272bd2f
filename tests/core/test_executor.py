"""The executor on its own (no doit): restore of a damaged cache entry, the action record
written last, output stamps, and the private state directory a stage gets."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from occlum_rules.core.action import Action, StageContext
from occlum_rules.core.action_state import (
    load_state_file,
    private_state_dir,
    read_state,
    shared_state_dir,
    state_path,
)
from occlum_rules.core.build_env import BuildEnv
from occlum_rules.core.digests import tree_entries
from occlum_rules.core.executor import execute, is_up_to_date
from occlum_rules.core.outputs import CHECK_DESCRIBED, StampBlob, output_stamps, recorded_stamps
from occlum_rules.core.store import LocalStore
from occlum_rules.errors import UserError

# --------------------------------------------------------------------------- stage functions
# (what an action's ``func`` names; module-level so the executor can import them by name)


def write_greeting(ctx: StageContext) -> None:
    """Writes its output from a parameter; fails when the workspace holds FAIL."""
    if (ctx.root / "FAIL").exists():
        raise UserError(f"{ctx.label}: asked to fail")
    out = ctx.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(ctx.params["text"] + (ctx.root / "in.txt").read_text())


def write_tree(ctx: StageContext) -> None:
    tree = ctx.outputs[0]
    (tree / "sub").mkdir(parents=True, exist_ok=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text(ctx.params["text"])


def write_and_describe_tree(ctx: StageContext) -> None:
    """Writes a tree and hands the engine its description; ``params["lie"]`` leaves a file
    out of it (what a stage bug would do)."""
    write_tree(ctx)
    tree = ctx.outputs[0]
    entries = tree_entries(tree, ctx.digests)
    stamps = StampBlob()
    for entry in entries:
        if entry["path"] != ctx.params.get("lie"):
            st = os.lstat(tree / entry["path"])
            stamps[str(tree / entry["path"])[ctx.stamp_cut:]] = (st.st_size, st.st_mtime_ns,
                                                                 st.st_mode)
    ctx.describe_tree(tree, entries, stamps.encoded())


def copy_discovered(ctx: StageContext) -> None:
    """Copies a file it finds on its own (a discovered input, not a declared one)."""
    source = ctx.root / "found.txt"
    ctx.add_inputs([source])
    ctx.outputs[0].parent.mkdir(parents=True, exist_ok=True)
    ctx.outputs[0].write_bytes(source.read_bytes())


def copy_discovered_then_see_it_edited(ctx: StageContext) -> None:
    """Copies a discovered input and says what it read; the file is then edited before
    the stage ends (an editor saving while a build runs)."""
    source = ctx.root / "found.txt"
    ctx.add_inputs([source])
    data = source.read_bytes()
    ctx.inputs_read({str(source): hashlib.sha256(data).hexdigest()})
    ctx.outputs[0].parent.mkdir(parents=True, exist_ok=True)
    ctx.outputs[0].write_bytes(data)
    source.write_bytes(data + b"edited meanwhile\n")


def count_runs(ctx: StageContext) -> None:
    """An in-place stage that remembers how often it ran, in its private state directory."""
    assert ctx.state_dir.is_dir()
    runs = ctx.state_dir / "runs"
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    ctx.outputs[0].parent.mkdir(parents=True, exist_ok=True)
    ctx.outputs[0].write_text(f"{ctx.params['text']} {n}\n")
    (ctx.root / "state_dirs.txt").write_text(f"{ctx.state_dir}\n{ctx.shared_state_dir}\n")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def env(tmp_path: Path) -> BuildEnv:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "in.txt").write_text("world\n")
    return BuildEnv(root=str(root), out=str(root / "out"), state_dir=str(root / "out/.occlum-rules"),
                    cache_dir=str(tmp_path / "cache"), run_id="r1", source_date_epoch=0)


def action(func: str, output: str = "out/greeting.txt", kind: str = "file", **extra) -> Action:
    params = extra.pop("params", {"text": "hello "})
    return Action(id=f"//t:{func}", label="//t:t", name=func, kind="test.stage",
                  inputs=["in.txt"], outputs=[output], output_types=[kind],
                  func=f"tests.core.test_executor:{func}", params=params, **extra)


# --------------------------------------------------------------------------- tests


def test_run_then_up_to_date_then_restore(env: BuildEnv) -> None:
    a = action("write_greeting")
    out = Path(env.root) / "out/greeting.txt"
    assert execute(a, env) == "run"
    assert out.read_text() == "hello world\n"
    assert is_up_to_date(a, env) and execute(a, env) == "up_to_date"
    out.unlink()
    assert not is_up_to_date(a, env)
    assert execute(a, env) == "cache_hit_local" and out.read_text() == "hello world\n"


def test_a_corrupted_cache_blob_is_refused_removed_and_rebuilt(env: BuildEnv) -> None:
    a = action("write_tree", output="out/tree", kind="dir")
    assert execute(a, env) == "run"
    tree = Path(env.root) / "out/tree"
    store = LocalStore(Path(env.cache_dir))
    blobs = list(store.iter_blobs())
    assert len(blobs) == 2
    victim = next(b for b in blobs if b.read_bytes() == b"alpha\n")
    victim.chmod(0o644)
    victim.write_bytes(b"alphA\n")  # one flipped byte, same length
    shutil.rmtree(tree)
    state_path(env, a.id).unlink()
    assert execute(a, env) == "run"  # the restore failed part-way: the stage ran instead
    assert (tree / "a.txt").read_text() == "alpha\n"
    scratch = Path(env.state_dir) / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())  # the half restore is gone
    # the damaged blob was replaced by the fresh bytes, so the next restore works
    assert victim.read_bytes() == b"alpha\n"
    shutil.rmtree(tree)
    state_path(env, a.id).unlink()
    assert execute(a, env) == "cache_hit_local"
    assert (tree / "sub" / "b.txt").read_text() == "hello "


def test_a_corrupted_cache_entry_is_removed_and_rebuilt(env: BuildEnv) -> None:
    a = action("write_greeting")
    execute(a, env)
    key = read_state(env, a.id)["key"]
    store = LocalStore(Path(env.cache_dir))
    entry = store.ac_path(key)
    entry.write_bytes(entry.read_bytes().replace(b'"mode":420', b'"mode":493'))
    (Path(env.root) / "out/greeting.txt").unlink()
    state_path(env, a.id).unlink()
    assert execute(a, env) == "run"
    assert (Path(env.root) / "out/greeting.txt").read_text() == "hello world\n"
    assert store.get_action(key) is not None  # stored again, intact


def test_the_action_record_is_removed_before_outputs_change_and_written_last(env: BuildEnv) -> None:
    a = action("write_greeting", cacheable=False)
    assert execute(a, env) == "run"
    record = state_path(env, a.id)
    out = Path(env.root) / "out/greeting.txt"
    assert record.stat().st_mtime_ns >= out.stat().st_mtime_ns
    assert load_state_file(record)["key"]
    # an input change whose run fails leaves no record claiming the old outputs are current
    (Path(env.root) / "in.txt").write_text("moon\n")
    (Path(env.root) / "FAIL").write_text("")
    with pytest.raises(UserError):
        execute(a, env)
    assert not record.exists()
    assert not is_up_to_date(a, env)
    (Path(env.root) / "FAIL").unlink()
    assert execute(a, env) == "run" and out.read_text() == "hello moon\n"


@pytest.mark.parametrize("change", ["content", "mode", "extra file"])
def test_output_stamps_notice_any_touch(env: BuildEnv, change: str) -> None:
    a = action("write_tree", output="out/tree", kind="dir", cacheable=False)
    execute(a, env)
    assert is_up_to_date(a, env)
    tree = Path(env.root) / "out/tree"
    if change == "content":
        (tree / "a.txt").write_text("ALPHA\n")  # same size
    elif change == "mode":
        os.chmod(tree / "a.txt", 0o600)
    else:
        (tree / "sub" / "c.txt").write_text("")
    assert not is_up_to_date(a, env)
    assert execute(a, env) == "run"
    assert (tree / "a.txt").read_text() == "alpha\n" and is_up_to_date(a, env)


def test_an_in_place_stage_keeps_state_in_its_private_directory(env: BuildEnv) -> None:
    a = action("count_runs", in_place=True, cacheable=False, toolchains=["tool-a"])
    b = action("count_runs", in_place=True, cacheable=False, toolchains=["tool-b"])
    b.id = "//t:other"
    execute(a, env)
    root = Path(env.root)
    private, shared = (Path(p) for p in (root / "state_dirs.txt").read_text().split())
    assert private == private_state_dir(env, a) and shared == shared_state_dir(env, a)
    assert private.parent == Path(env.state_dir) / "state"
    assert shared.parent == Path(env.state_dir) / "state" / "shared"
    execute(b, env)
    assert private_state_dir(env, b) != private  # per action
    assert shared_state_dir(env, b) != shared    # per toolchain fingerprint
    a.params = {"text": "again"}
    execute(a, env)
    assert (root / "out/greeting.txt").read_text() == "again 2\n"  # it found its own state


def test_an_in_place_run_removes_what_a_killed_writer_left_beside_its_outputs(env: BuildEnv) -> None:
    """A build killed inside write_atomic leaves ``.<name>.<pid>.<n>.tmp`` next to an
    in-place output; the next run of that action clears it, and nothing else."""
    out = Path(env.root) / "out" / "pkg"
    out.mkdir(parents=True)
    left = [".greeting.txt.4242.7.tmp", ".greeting.txt.tmp"]
    kept = [".greeting.txt.bak", ".other.txt.4242.7.tmp", "greeting.txt.4242.7.tmp"]
    for name in left + kept:
        (out / name).write_text("half")
    execute(action("count_runs", "out/pkg/greeting.txt", in_place=True, cacheable=False), env)
    assert sorted(os.listdir(out)) == sorted(kept + ["greeting.txt"])


@pytest.mark.parametrize("in_place", [False, True])
def test_a_run_records_the_stamps_a_fresh_walk_would_see(env: BuildEnv, in_place: bool) -> None:
    """The stamps of a run come from the walk that described its outputs (one walk, not
    two): they must be exactly what the next up-to-date check computes."""
    tree = action("write_tree", "out/tree", kind="dir", in_place=in_place)
    assert execute(tree, env) == "run"
    state = read_state(env, tree.id)
    assert state is not None and recorded_stamps(state) == output_stamps(tree, env)
    assert "out/tree/sub/b.txt" in recorded_stamps(state)
    greeting = action("write_greeting")
    assert execute(greeting, env) == "run"
    state = read_state(env, greeting.id)
    assert state is not None and recorded_stamps(state) == output_stamps(greeting, env)
    assert execute(tree, env) == execute(greeting, env) == "up_to_date"


def test_an_in_place_stage_describes_its_own_tree(env: BuildEnv, monkeypatch) -> None:
    """The engine takes the description as it is (no walk), and records what a walk says."""
    tree = action("write_and_describe_tree", "out/tree", kind="dir", in_place=True,
                  params={"text": "b\n"})
    monkeypatch.setenv(CHECK_DESCRIBED, "0")
    assert execute(tree, env) == "run"
    state = read_state(env, tree.id)
    assert state is not None and recorded_stamps(state) == output_stamps(tree, env)
    assert execute(tree, env) == "up_to_date"
    lying = action("write_and_describe_tree", "out/tree2", kind="dir", in_place=True,
                   params={"text": "b\n", "lie": "sub/b.txt"})
    assert execute(lying, env) == "run"  # taken on trust: so stages are checked in the tests
    assert "out/tree2/sub/b.txt" not in recorded_stamps(read_state(env, lying.id))


def test_the_check_fails_a_stage_whose_description_is_not_its_tree(env: BuildEnv,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv(CHECK_DESCRIBED, "1")
    lying = action("write_and_describe_tree", "out/tree", kind="dir", in_place=True,
                   params={"text": "b\n", "lie": "sub/b.txt"})
    with pytest.raises(UserError, match="internal error.*stamps differ at out/tree/sub/b.txt"):
        execute(lying, env)
    assert read_state(env, lying.id) is None  # nothing recorded: the next build runs it again


def test_only_an_in_place_stage_may_describe_a_tree(env: BuildEnv) -> None:
    tree = action("write_and_describe_tree", "out/tree", kind="dir", params={"text": "b\n"})
    with pytest.raises(ValueError, match="only an in-place action describes its trees"):
        execute(tree, env)


def test_the_entry_the_last_run_left_is_not_read_again_once_its_sources_changed(
        env: BuildEnv, monkeypatch) -> None:
    """Same key, other discovered inputs: the entry under the key is the last run's, which
    cannot apply; only its checksum is read. Any other entry there is read and used."""
    found = Path(env.root) / "found.txt"
    copy = action("copy_discovered")
    store = LocalStore(Path(env.cache_dir))
    read: list[str] = []
    get_action = LocalStore.get_action
    monkeypatch.setattr(LocalStore, "get_action",
                        lambda self, key: read.append(key) or get_action(self, key))
    builds = iter(range(100))

    def build(text: str) -> str:
        """One build (its own run: discovered inputs are checked afresh) after an edit."""
        found.write_text(text)
        read.clear()
        return execute(copy, dataclasses.replace(env, run_id=f"build-{next(builds)}"))

    assert build("one\n") == "run"
    key = read_state(env, copy.id)["key"]
    one = store.ac_path(key).read_bytes()
    assert build("two\n") == "run" and read == []
    assert build("two\n") == "up_to_date"
    assert build("one\n") == "run" and read == []  # the entry under the key: the "two" run's
    assert (Path(env.root) / "out/greeting.txt").read_text() == "one\n"
    assert build("two\n") == "run"
    store.ac_path(key).write_bytes(one)  # another checkout stored its "one" result meanwhile
    assert build("one\n") == "cache_hit_local" and read == [key]


def test_an_input_edited_while_its_action_ran_is_built_again(env: BuildEnv) -> None:
    """The record holds the digest of what the stage read, not of the file after it: the
    edit made meanwhile is not taken as built."""
    found = Path(env.root) / "found.txt"
    found.write_text("one\n")
    a = action("copy_discovered_then_see_it_edited")
    out = Path(env.root) / "out/greeting.txt"
    assert execute(a, env) == "run" and out.read_text() == "one\n"
    again = dataclasses.replace(env, run_id="r2")
    assert not is_up_to_date(a, again)
    found.write_text("two\n")
    assert execute(a, dataclasses.replace(env, run_id="r3")) == "run"
    assert out.read_text() == "two\n"


def test_a_version_1_record_still_reads_and_a_version_2_record_keeps_blobs(env: BuildEnv) -> None:
    """Record version 2 keeps stamps and discovered inputs as marshal blobs; a record an
    older occlum-rules wrote (plain values) is still up to date, not re-run."""
    import marshal

    from occlum_rules import state_file
    from occlum_rules.core.action_state import ACTION_STATE_KIND, recorded_dynamic

    a = action("write_tree", output="out/tree", kind="dir", cacheable=False)
    assert execute(a, env) == "run"
    path = state_path(env, a.id)
    raw = marshal.loads(state_file.read_state(path, ACTION_STATE_KIND, 2))
    assert isinstance(raw["stamps"], bytes) and raw["dynamic"] == {}
    old = dict(raw, stamps=marshal.loads(raw["stamps"]), dynamic=[])
    state_file.write_state(path, ACTION_STATE_KIND, 1, marshal.dumps(old, 4))
    state = load_state_file(path)
    assert state is not None and recorded_stamps(state) == output_stamps(a, env)
    assert recorded_dynamic(state) == []
    assert is_up_to_date(a, env) and execute(a, env) == "up_to_date"
    os.chmod(Path(env.root) / "out/tree/a.txt", 0o600)
    assert not is_up_to_date(a, env)


def test_recorded_discovered_inputs_are_checked_once_per_run_and_group(env: BuildEnv) -> None:
    from occlum_rules.core.dynamic import pack_dynamic, unpack_dynamic
    from occlum_rules.core.keys import dynamic_digests, dynamic_unchanged

    root = Path(env.root)
    (root / "shared").mkdir()
    for name in ("a", "b"):
        (root / "shared" / name).write_text(name)
    pairs = dynamic_digests(["in.txt", "shared/a", "shared/b"], env)
    packed = pack_dynamic(pairs)
    assert set(packed) == {"", "shared"} and sorted(unpack_dynamic(packed)) == sorted(pairs)
    # another image's list: the same shared group, byte for byte, built from other objects
    assert pack_dynamic([[p, d] for p, d in marshal_copy(pairs)])["shared"] == packed["shared"]
    assert dynamic_unchanged(packed, env)
    (root / "shared" / "b").write_text("B")
    assert dynamic_unchanged(packed, env)  # one run sees the host as it was when it started
    env.run_id = "r2"
    assert not dynamic_unchanged(packed, env)
    assert not dynamic_unchanged(unpack_dynamic(packed), env)
    assert dynamic_unchanged({"": packed[""]}, env)  # the unchanged group alone


def marshal_copy(value: list) -> list:
    import marshal

    return marshal.loads(marshal.dumps(value))


def test_discovered_inputs_in_a_shape_this_version_does_not_know_are_not_trusted(env: BuildEnv) -> None:
    from occlum_rules.core.keys import dynamic_unchanged

    assert not dynamic_unchanged(b"\x00\x01", env)  # type: ignore[arg-type]
    assert not dynamic_unchanged([["in.txt"]], env)
    assert dynamic_unchanged(None, env) and dynamic_unchanged([], env)




@pytest.mark.parametrize("change", ["removed file", "removed and added", "none"])
def test_the_walk_compares_paths_as_it_meets_them(env: BuildEnv, change: str) -> None:
    """The up-to-date check compares each path with the record as the walk finds it; a
    missing path (even with another added, so the count is equal) is still a change."""
    a = action("write_tree", output="out/tree", kind="dir", cacheable=False)
    execute(a, env)
    tree = Path(env.root) / "out/tree"
    if change != "none":
        (tree / "sub" / "b.txt").unlink()
    if change == "removed and added":
        (tree / "sub" / "c.txt").write_text("hello ")
    assert is_up_to_date(a, env) == (change == "none")


def test_overlapping_outputs_are_compared_as_whole_sets(env: BuildEnv) -> None:
    a = Action(id="//t:nested", label="//t:t", name="nested", kind="test.stage",
               inputs=["in.txt"], outputs=["out/tree", "out/tree/a.txt"],
               output_types=["dir", "file"], func="tests.core.test_executor:write_tree",
               params={"text": "x"}, cacheable=False, in_place=True)
    execute(a, env)
    state = read_state(env, a.id)
    assert state is not None and recorded_stamps(state) == output_stamps(a, env)
    assert is_up_to_date(a, env)
    (Path(env.root) / "out/tree/sub/b.txt").unlink()
    assert not is_up_to_date(a, env)


def test_an_action_entry_is_encoded_once_as_the_whole_record_would_be() -> None:
    import hashlib
    import json

    from occlum_rules.core.store import entry_bytes, entry_checksum

    for manifest in ({"outputs": [{"path": "a", "digest": "x"}], "label": "//x", "kind": "k",
                      "dynamic": []},
                     {"a": 1, "outputs": []}, {}, {"checksum": "stale", "z": "é"}):
        record = {k: v for k, v in manifest.items() if k != "checksum"}
        record["checksum"] = entry_checksum(manifest)
        expected = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        assert entry_bytes(manifest) == expected
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        assert record["checksum"] == hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_blobs_the_last_run_stored_are_not_looked_for_again(env: BuildEnv, monkeypatch) -> None:
    """An in-place stage leaves most of its files as they were: their blobs went to the
    store with the last run, and looking for each again was a stat per file."""
    a = action("write_tree", output="out/tree", kind="dir", in_place=True)
    assert execute(a, env) == "run"
    looked_for: list[str] = []
    real_put = LocalStore.put_file

    def put_file(self, src, digest, *args, **kwargs):
        looked_for.append(digest)
        return real_put(self, src, digest, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "put_file", put_file)
    a.params = {"text": "two"}
    assert execute(a, env) == "run"
    assert looked_for == [_sha("two")]  # a.txt ("alpha\n") is the last run's blob
    store = LocalStore(Path(env.cache_dir))
    assert store.has_blob(_sha("alpha\n")) and store.has_blob(_sha("two"))


@pytest.mark.parametrize("how", ["gc", "verify", "clear"])
def test_blobs_are_looked_for_again_once_anything_may_have_removed_them(env: BuildEnv,
                                                                         how: str) -> None:
    from occlum_rules.core.store import gc, verify

    a = action("write_tree", output="out/tree", kind="dir", in_place=True)
    assert execute(a, env) == "run"
    store = LocalStore(Path(env.cache_dir))
    if how == "gc":
        gc(store, 0)  # every entry and blob
    elif how == "verify":  # a blob verify finds corrupt is removed
        blob = store.cas_path(_sha("alpha\n"))
        blob.chmod(0o644)
        blob.write_text("rot\n")
        assert verify(store).corrupt_blobs == [_sha("alpha\n")]
    else:
        store.clear()
    assert not store.has_blob(_sha("alpha\n"))
    a.params = {"text": "two"}
    assert execute(a, env) == "run"
    assert store.has_blob(_sha("alpha\n")) and store.has_blob(_sha("two"))
