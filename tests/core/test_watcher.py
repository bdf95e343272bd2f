"""The watcher daemon (a real process on real inotify) and the build's use of it: a changed
output tree is noticed with and without it, and any doubt falls back to the stamps walk."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from occlum_rules.core.action import Action, StageContext
from occlum_rules.core.build_env import BuildEnv
from occlum_rules.core.executor import execute, is_up_to_date
from occlum_rules.core.watch_client import arm, status, vouched
from tests.core.test_executor import action, write_tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

SERVE = ("import sys; from pathlib import Path; from occlum_rules.core.watcher import serve; "
         "sys.exit(serve(Path(sys.argv[1]), Path(sys.argv[2]), "
         "ready=lambda: print('ready', flush=True)))")


class Daemon:
    """``occlum-rules watch`` of one workspace, as a child process; ``ready`` is its own
    word that it listens (no sleeping)."""

    def __init__(self, env: BuildEnv):
        os.makedirs(env.state_dir, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, env.state_dir, env.out],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture
def env(tmp_path: Path) -> BuildEnv:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "in.txt").write_text("world\n")
    return BuildEnv(root=str(root), out=str(root / "out"), state_dir=str(root / "out/.occlum-rules"),
                    cache_dir=str(tmp_path / "cache"), run_id="r1", source_date_epoch=0)


@pytest.fixture
def daemon(env: BuildEnv) -> Iterator[Daemon]:
    d = Daemon(env)
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0
    assert not os.path.exists(os.path.join(env.state_dir, "watch.sock"))


def write_tree_and_file(ctx: StageContext) -> None:
    """An image-like stage: a tree and a file beside it (as copy_bom's image and manifest)."""
    write_tree(ctx)
    ctx.outputs[1].write_text("beside the tree\n")


def tree_and_file_action() -> Action:
    a = action("write_tree_and_file", output="out/tree", kind="dir")
    return dataclasses.replace(a, func="tests.core.test_watcher:write_tree_and_file",
                               outputs=["out/tree", "out/beside.txt"],
                               output_types=["dir", "file"])


def tree_action(**extra: object) -> Action:
    return action("write_tree", output="out/tree", kind="dir", **extra)


def change_tree(tree: Path, how: str) -> None:
    if how == "modify":
        (tree / "sub" / "b.txt").write_text("HELLO ")  # same size as the original
    elif how == "delete":
        (tree / "sub" / "b.txt").unlink()
    elif how == "replace":
        (tree / "new.txt").write_text("hello ")  # same bytes, another file
        os.replace(tree / "new.txt", tree / "sub" / "b.txt")
    elif how == "mode":
        os.chmod(tree / "a.txt", 0o600)
    elif how == "add":
        (tree / "sub" / "c.txt").write_text("")
    elif how == "replace root":
        os.rename(tree, str(tree) + ".old")
        os.rename(str(tree) + ".old", str(tree) + ".gone")
        (tree / "sub").mkdir(parents=True)
        (tree / "a.txt").write_text("alpha\n")
        (tree / "sub" / "b.txt").write_text("hello ")  # equal content, another tree


CHANGES = ["modify", "delete", "replace", "mode", "add", "replace root"]


@pytest.mark.parametrize("how", CHANGES)
def test_a_change_is_noticed_without_the_watcher(env: BuildEnv, how: str) -> None:
    a = tree_action()
    assert execute(a, env) == "run" and is_up_to_date(a, env)
    assert not vouched(env, a)
    change_tree(Path(env.root) / "out/tree", how)
    assert not is_up_to_date(a, env)
    assert execute(a, env) != "up_to_date"
    assert (Path(env.root) / "out/tree/sub/b.txt").read_text() == "hello "
    assert is_up_to_date(a, env)


@pytest.mark.parametrize("how", CHANGES)
def test_a_change_is_noticed_with_the_watcher(env: BuildEnv, daemon: Daemon, how: str) -> None:
    a = tree_action()
    assert execute(a, env) == "run"
    assert vouched(env, a), "the run armed the tree before its stamps (after storing it)"
    assert is_up_to_date(a, env) and vouched(env, a)
    change_tree(Path(env.root) / "out/tree", how)
    assert not vouched(env, a)  # no sleep: the daemon answers only after the marker event
    assert not is_up_to_date(a, env)
    assert execute(a, env) != "up_to_date"
    assert (Path(env.root) / "out/tree/sub/b.txt").read_text() == "hello "
    assert is_up_to_date(a, env) and vouched(env, a)


@pytest.mark.parametrize("how", ["modify", "delete", "mode"])
def test_a_changed_output_file_beside_a_vouched_tree_is_noticed(env: BuildEnv, daemon: Daemon,
                                                                 how: str) -> None:
    """The daemon watches trees only; the files beside them are checked against the stamps
    the voucher copied from the record."""
    a = tree_and_file_action()
    assert execute(a, env) == "run"
    assert is_up_to_date(a, env) and vouched(env, a)
    beside = Path(env.root) / "out/beside.txt"
    if how == "modify":
        beside.write_text("BESIDE the tree\n")  # same size
        os.utime(beside, ns=(0, beside.stat().st_mtime_ns + 1))
    elif how == "delete":
        beside.unlink()
    else:
        os.chmod(beside, 0o600)
    assert not vouched(env, a) and not is_up_to_date(a, env)
    assert execute(a, env) != "up_to_date"
    assert beside.read_text() == "beside the tree\n"
    assert is_up_to_date(a, env) and vouched(env, a)


def test_many_changes_in_a_row_are_all_noticed(env: BuildEnv, daemon: Daemon) -> None:
    """The handshake, not timing, orders the daemon's answer after the change."""
    a = tree_action(cacheable=False)
    execute(a, env)
    b_txt = Path(env.root) / "out/tree/sub/b.txt"
    for i in range(30):
        assert is_up_to_date(a, env) and vouched(env, a)
        b_txt.write_text(f"{i:05d}!")
        assert not is_up_to_date(a, env), f"change {i} missed"
        assert execute(a, env) == "run"


def test_a_cache_hit_and_a_walked_check_arm_the_tree(env: BuildEnv, daemon: Daemon) -> None:
    a = tree_action()
    execute(a, env)
    os.chmod(Path(env.root) / "out/tree/a.txt", 0o600)
    assert execute(a, env) == "cache_hit_local" and vouched(env, a)
    # a record made without a watcher: the first check walks and arms, the next is vouched
    other = Path(env.state_dir) / "actions"
    for side in other.glob("*.watch"):
        side.unlink()
    assert not vouched(env, a)
    assert is_up_to_date(a, env) and vouched(env, a)


def test_a_killed_watcher_falls_back_to_the_walk(env: BuildEnv, daemon: Daemon) -> None:
    a = tree_action()
    execute(a, env)
    assert vouched(env, a)
    daemon.kill()  # its socket stays behind, nobody answers
    (Path(env.root) / "out/tree/a.txt").write_text("ALPHA\n")
    assert not vouched(env, a) and not is_up_to_date(a, env)
    execute(a, env)
    assert is_up_to_date(a, env)
    # a change while no watcher ran, then a new watcher: it knows nothing of the old tokens
    (Path(env.root) / "out/tree/a.txt").write_text("ALPHA\n")
    fresh = Daemon(env)
    try:
        assert not vouched(env, a) and not is_up_to_date(a, env)
        assert execute(a, env) != "up_to_date" and vouched(env, a)
    finally:
        assert fresh.stop() == 0


def test_a_watcher_killed_between_the_runs_arm_and_its_record(env: BuildEnv, daemon: Daemon) -> None:
    """Armed, then the daemon dies before the next check: the record's tokens are void."""
    a = tree_action(cacheable=False)
    execute(a, env)
    daemon.kill()
    replacement = Daemon(env)
    try:
        (Path(env.root) / "out/tree/sub/b.txt").write_text("HELLO ")
        assert not vouched(env, a) and not is_up_to_date(a, env)
    finally:
        assert replacement.stop() == 0


def test_an_overflowed_queue_vouches_for_nothing(env: BuildEnv, daemon: Daemon) -> None:
    a = tree_action(cacheable=False)
    b = action("write_tree", output="out/other", kind="dir", cacheable=False)
    b.id = "//t:other"
    execute(a, env)
    execute(b, env)
    assert vouched(env, a) and vouched(env, b)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    os.waitpid(daemon.proc.pid, os.WUNTRACED)  # it reads nothing until SIGCONT
    files = [Path(env.root) / "out/other/a.txt", Path(env.root) / "out/other/sub/b.txt"]
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for i in range(limit + 10):  # alternating, so the kernel cannot merge them
        os.utime(files[i % 2], ns=(i, i))
    os.kill(daemon.proc.pid, signal.SIGCONT)
    assert not vouched(env, a), "events were lost: the untouched tree is in doubt too"
    found = status(env.state_dir)
    assert found is not None and found["overflows"] >= 1
    assert is_up_to_date(a, env) and not is_up_to_date(b, env)


def test_the_watcher_arms_only_its_own_workspace(env: BuildEnv, daemon: Daemon,
                                                  tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-ws"
    (elsewhere / "out/tree").mkdir(parents=True)
    foreign = BuildEnv(root=str(elsewhere), out=str(elsewhere / "out"), state_dir=env.state_dir,
                       cache_dir=env.cache_dir, run_id="r1", source_date_epoch=0)
    assert arm(foreign, tree_action()) is None
    assert arm(env, tree_action()) is None  # out/tree does not exist yet
    (Path(env.root) / "out/tree").mkdir(parents=True)
    assert arm(env, tree_action()) is not None


def test_a_second_watcher_for_the_same_workspace_refuses(env: BuildEnv, daemon: Daemon) -> None:
    second = subprocess.run([sys.executable, "-c", SERVE, env.state_dir, env.out],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already serves" in second.stderr
    assert status(env.state_dir) is not None


def test_a_watcher_whose_out_directory_is_removed_stops(env: BuildEnv) -> None:
    d = Daemon(env)
    import shutil

    shutil.rmtree(env.out, ignore_errors=True)  # the daemon removes its socket meanwhile
    assert d.proc.wait(timeout=60) == 0
    shutil.rmtree(env.out, ignore_errors=True)
    assert not os.path.exists(env.out)


def test_watch_command_end_to_end(tmp_path: Path) -> None:
    """``occlum-rules watch`` beside real ``doit build``s of an example: the null build is
    vouched for, and an image file changed in place is still rebuilt."""
    from tests.support.workspace import copy_examples, report, run_cli, run_doit

    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    cache = tmp_path / "cache"
    none = run_cli("watch", "--status", cwd=ws)
    assert none.returncode == 1 and none.stderr.strip().startswith("no watcher serves")
    assert "Traceback" not in none.stderr
    (ws / "out/.occlum-rules").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "occlum_rules", "watch"], cwd=ws,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "watching" in proc.stdout.readline()
        assert run_doit(ws, "build", cache=cache).returncode == 0
        assert run_doit(ws, "build", cache=cache).returncode == 0
        assert report(ws)["actions_run"] == 0
        found = run_cli("watch", "--status", cwd=ws)
        assert found.returncode == 0 and '"clean": ' in found.stdout
        assert int(found.stdout.split('"clean": ')[1].split(",")[0]) >= 1
        images = [p for p in (ws / "out/bin").rglob("image") if p.is_dir()]
        victim = next(p for p in images[0].rglob("*") if p.is_file() and not p.is_symlink())
        original = victim.read_bytes()
        victim.write_bytes(b"X" + original[1:])
        assert run_doit(ws, "build", cache=cache).returncode == 0
        assert report(ws)["actions_run"] + report(ws)["cache_hits_local"] >= 1
        assert victim.read_bytes() == original
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
