"""The one atomic writer: whole files or none, exact modes, no temporary left behind."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from occlum_rules.atomic_write import (
    AtomicFile,
    detach,
    publish,
    remove_leftovers,
    replace_with_hardlink,
    replace_with_symlink,
    write_atomic,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_parts_written_in_order_and_parents_created(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    write_atomic(target, b"one ", bytearray(b"two "), memoryview(b"three"))
    assert target.read_bytes() == b"one two three"
    assert os.listdir(target.parent) == ["out.bin"]


def test_default_mode_is_what_open_gives(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    write_atomic(tmp_path / "atomic", b"x")
    assert _mode(tmp_path / "atomic") == _mode(plain) == 0o666 & ~_umask()


def test_exact_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "tool", b"#!/bin/sh\n", mode=0o755)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "tool") == 0o755


def test_secret_is_never_readable_by_others(tmp_path):
    """The temporary file is created 0600, not chmod-ed afterwards."""
    seen = []
    with AtomicFile(tmp_path / "key", mode=0o600) as f:
        seen.append(_mode(f.tmp))
        f.write(b"secret")
    assert seen == [0o600]
    assert _mode(tmp_path / "key") == 0o600


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), AtomicFile(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out"]

    with pytest.raises(TypeError):  # the second part is not bytes-like
        write_atomic(target, b"new", 5)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out"]


def test_staged_files_are_renamed_only_on_commit(tmp_path):
    a, b = AtomicFile(tmp_path / "a"), AtomicFile(tmp_path / "b")
    a.write(b"A")
    b.write(b"B")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    a.commit()
    b.discard()
    assert (tmp_path / "a").read_bytes() == b"A"
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_streaming_through_the_descriptor(tmp_path):
    with AtomicFile(tmp_path / "big") as f:
        assert f.fd is not None
        os.writev(f.fd, [b"x" * 10, b"y" * 5])
    assert (tmp_path / "big").read_bytes() == b"x" * 10 + b"y" * 5


def test_durable_write(tmp_path):
    write_atomic(tmp_path / "state", b"payload", durable=True)
    assert (tmp_path / "state").read_bytes() == b"payload"


def test_parallel_writers_of_one_file_never_collide(tmp_path):
    """Threads of one process used to share the pid-only temporary name."""
    target = tmp_path / "shared"
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for _ in range(50):
                write_atomic(target, bytes([i]) * 4096)
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = target.read_bytes()
    assert len(data) == 4096 and len(set(data)) == 1
    assert os.listdir(tmp_path) == ["shared"]


def test_publish_and_symlink(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tool").write_bytes(b"elf")
    publish(work / "tool", tmp_path / "tool", mode=0o755)
    assert _mode(tmp_path / "tool") == 0o755 and not (work / "tool").exists()
    (tmp_path / "link").write_bytes(b"a file first")
    replace_with_symlink("tool", tmp_path / "link")
    assert os.readlink(tmp_path / "link") == "tool"
    assert sorted(os.listdir(tmp_path)) == ["link", "tool", "work"]


def test_a_sole_writer_replaces_what_a_killed_run_left(tmp_path):
    target = tmp_path / "pkg.tar.gz"
    (tmp_path / ".pkg.tar.gz.tmp").write_bytes(b"half of a package from a killed build")
    with AtomicFile(target, sole_writer=True) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert os.listdir(tmp_path) == ["pkg.tar.gz"]
    (tmp_path / ".pkg.tar.gz.tmp").write_bytes(b"another leftover")
    write_atomic(target, b"again", sole_writer=True)
    assert target.read_bytes() == b"again"
    assert os.listdir(tmp_path) == ["pkg.tar.gz"]


def test_remove_leftovers_takes_only_the_temporaries_of_that_path(tmp_path):
    target = tmp_path / "pkg.json"
    writer = AtomicFile(target)  # left open: as a killed run leaves it
    os.write(writer.fd, b"half")
    sole = AtomicFile(target, sole_writer=True)
    others = [".pkg.json.bak", ".pkg.jsonx.1.2.tmp", ".other.json.1.2.tmp", "pkg.json.1.2.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    gone = remove_leftovers(target)
    assert gone == sorted(os.path.basename(p) for p in (writer.tmp, sole.tmp))
    assert sorted(os.listdir(tmp_path)) == sorted(others)
    assert remove_leftovers(tmp_path / "missing-dir" / "x") == []
    for f in (writer, sole):
        os.close(f.fd)


def test_detach_gives_a_linked_file_its_own_inode_and_keeps_the_other_name(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"shared bytes")
    a.chmod(0o640)
    os.utime(a, ns=(1, 2_000_000_000))
    os.link(a, tmp_path / "b")
    detach(a)
    assert not os.path.samefile(a, tmp_path / "b")
    assert a.read_bytes() == b"shared bytes" and _mode(a) == 0o640
    assert os.stat(a).st_mtime_ns == 2_000_000_000
    with open(a, "r+b") as f:  # an in-place write now leaves the other name alone
        f.write(b"S")
    assert (tmp_path / "b").read_bytes() == b"shared bytes"
    ino = os.stat(a).st_ino
    detach(a)  # a file with one name stays where it is
    assert os.stat(a).st_ino == ino
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_replace_with_hardlink_is_atomic_and_refuses_what_cannot_link(tmp_path):
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    replace_with_hardlink(tmp_path / "src", tmp_path / "dst")
    assert os.path.samefile(tmp_path / "src", tmp_path / "dst")
    with pytest.raises(OSError):
        replace_with_hardlink(tmp_path / "missing", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_detach_copies_in_user_space_where_the_kernel_refuses(tmp_path, monkeypatch):
    """Where neither copy_file_range nor sendfile works, detach still gives the file its
    own whole copy, with the times it had (its stamp must not move)."""
    from occlum_rules import atomic_write

    monkeypatch.setattr(atomic_write, "kernel_copy", lambda fd_in, fd_out, size: False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(300_000))
    os.link(a, b)
    os.utime(a, ns=(1_000_000_000, 2_000_000_000))
    detach(a)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_ino != b.stat().st_ino
    assert a.stat().st_mtime_ns == 2_000_000_000
