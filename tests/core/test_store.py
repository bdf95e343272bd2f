"""The local store: blobs go in by kernel copy when their digest is known, hashed otherwise."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

from occlum_rules.core.digests import DigestCache
from occlum_rules.core.store import CorruptBlob, LocalStore, _copy_kernel


def test_known_digest_is_copied_and_unknown_one_is_checked(tmp_path):
    f = tmp_path / "out.bin"
    f.write_bytes(b"output bytes" * 1000)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    cache = DigestCache(tmp_path / "d.marshal")
    assert cache.digest(f) == digest
    store = LocalStore(tmp_path / "store")
    assert store.put_file(f, digest, known=lambda st: cache.known(f, st) == digest)
    assert store.cas_path(digest).read_bytes() == f.read_bytes()
    wrong = "0" * 64  # a digest nobody vouches for is checked while copying
    with pytest.raises(CorruptBlob, match="changed while it was being stored"):
        store.put_file(f, wrong, known=lambda st: cache.known(f, st) == wrong)
    assert not store.cas_path(wrong).exists()


@pytest.mark.parametrize("how", ["hash-then-write", "hash-beside", "linked"])
def test_restore_refuses_a_damaged_blob_and_removes_it(tmp_path, monkeypatch, how):
    """Whichever way a blob is restored it is verified: copied and hashed before it is
    written, copied and (a very big one, here lowered to 1 MiB) hashed on a thread beside
    its write, or linked (its mode is the one wanted) and hashed where it lies."""
    from occlum_rules.core import store as store_module

    monkeypatch.setattr(store_module, "HASH_BESIDE_FROM", 1 << 20 if how == "hash-beside" else 1 << 40)
    f = tmp_path / "out.bin"
    f.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: the mapped path
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    store = LocalStore(tmp_path / "store")
    store.put_file(f, digest)
    store.restore(digest, tmp_path / "copy", 0o640)
    assert (tmp_path / "copy").read_bytes() == f.read_bytes()
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o640
    blob = store.cas_path(digest)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[12345] ^= 1
    blob.write_bytes(bytes(data))
    mode = 0o644 if how == "linked" else 0o600
    with pytest.raises(CorruptBlob):
        store.restore(digest, tmp_path / "again", mode)
    assert not blob.exists() and not (tmp_path / "again").exists()
    assert store.corrupt_found == 1


def test_a_blob_with_the_wanted_mode_is_restored_as_a_link(tmp_path):
    """No bytes written and no inode allocated; a blob of another mode is copied, and the
    blob keeps its own mode."""
    f = tmp_path / "out.bin"
    f.write_bytes(b"restored" * 5000)
    f.chmod(0o755)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    cache = DigestCache(tmp_path / "d.marshal")
    assert cache.digest(f) == digest
    store = LocalStore(tmp_path / "store")
    store.put_file(f, digest, known=lambda st: cache.known(f, st) == digest)
    blob = store.cas_path(digest)
    store.restore(digest, tmp_path / "linked", 0o755)
    assert (tmp_path / "linked").stat().st_ino == blob.stat().st_ino
    store.restore(digest, tmp_path / "copied", 0o644)
    copied = (tmp_path / "copied").stat()
    assert copied.st_ino != blob.stat().st_ino and copied.st_nlink == 1
    assert copied.st_mode & 0o777 == 0o644 and blob.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "copied").read_bytes() == (tmp_path / "linked").read_bytes() == f.read_bytes()


def test_a_store_on_another_file_system_is_restored_by_copy(tmp_path):
    """/dev/shm is a file system of its own here: no link can cross to the disk."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a file system other than the test's directory")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        store = LocalStore(Path(other) / "store")
        digest = store.put_bytes(b"elsewhere" * 100)
        store.cas_path(digest).chmod(0o644)
        store.restore(digest, tmp_path / "here", 0o644)
        here = (tmp_path / "here").stat()
        assert here.st_nlink == 1 and here.st_mode & 0o777 == 0o644
        assert (tmp_path / "here").read_bytes() == b"elsewhere" * 100


def test_kernel_copy_falls_back_where_the_kernel_refuses(tmp_path):
    """A pipe refuses copy_file_range and sendfile (EINVAL): the bytes still arrive whole,
    through the userspace copy, with nothing of the failed attempts left in the target."""
    data = bytes(range(256)) * 64
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    with open(tmp_path / "blob", "wb") as out:
        _copy_kernel(r, out.fileno(), len(data))
    os.close(r)
    assert (tmp_path / "blob").read_bytes() == data


def test_kernel_copy_of_a_regular_file_is_exact(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * 2**20 + 17))
    with open(src, "rb") as fin, open(tmp_path / "dst", "wb") as out:
        _copy_kernel(fin.fileno(), out.fileno(), src.stat().st_size)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_a_vouched_output_is_stored_as_a_link_and_its_digest_stays_known(tmp_path):
    f = tmp_path / "out.bin"
    f.write_bytes(b"linked" * 4096)
    cache = DigestCache(tmp_path / "d.marshal")
    digest = cache.digest(f)
    store = LocalStore(tmp_path / "store")
    assert store.put_file(f, digest, known=lambda st: cache.known(f, st) == digest,
                          linked=lambda st: cache.remember(f, digest, st))
    assert os.path.samefile(store.cas_path(digest), f)
    # the link moved the file's ctime; the cache was re-keyed, so no second read
    assert cache.known(f, os.stat(f)) == digest


def test_an_unvouched_file_is_copied_not_linked(tmp_path):
    """The copy keeps the output's mode, so a restore of that output can still link it."""
    f = tmp_path / "out.bin"
    f.write_bytes(b"copied" * 4096)
    f.chmod(0o750)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    store = LocalStore(tmp_path / "store")
    assert store.put_file(f, digest)
    assert not os.path.samefile(store.cas_path(digest), f)
    assert store.cas_path(digest).stat().st_mode & 0o777 == 0o750
    assert store.cas_path(digest).read_bytes() == f.read_bytes()


def test_an_entry_is_checked_against_the_bytes_it_was_written_as(tmp_path):
    store = LocalStore(tmp_path)
    manifest = {"outputs": [{"path": "out/a", "type": "file", "sha256": "0" * 64}],
                "label": "//a:a", "dynamic": [["src/ä.h", "1" * 64]]}
    checksum = store.put_action("k1", manifest)
    assert store.entry_checksum_of("k1") == checksum
    assert store.get_action("k1") == {**manifest, "checksum": checksum}
    raw = bytearray(store.ac_path("k1").read_bytes())
    for at in (len(raw) // 2, len(raw) - 3):  # in a path, near the end
        damaged = bytearray(raw)
        damaged[at] ^= 0x01
        store.ac_path("k1").write_bytes(damaged)
        assert store.get_action("k1") is None and not store.ac_path("k1").exists()
    assert store.corrupt_found == 2
    assert store.entry_checksum_of("k1") is None


def test_an_entry_laid_out_otherwise_is_checked_by_its_content(tmp_path):
    """A key sorting before "checksum" puts the field inside: checked by encoding it again."""
    store = LocalStore(tmp_path)
    checksum = store.put_action("k2", {"a": 1, "outputs": []})
    assert store.ac_path("k2").read_bytes().startswith(b'{"a":1,"checksum":')
    assert store.entry_checksum_of("k2") is None  # not read from the head: not there
    assert store.get_action("k2") == {"a": 1, "checksum": checksum, "outputs": []}


def test_a_restored_file_has_the_times_of_the_output_its_blob_was_linked_from(tmp_path):
    """An in-place stage that recorded (size, mtime) of its outputs (the SEFS pack) finds
    the same bytes restored from the store as what it left."""
    f = tmp_path / "out.bin"
    f.write_bytes(b"packed" * 1000)
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    cache = DigestCache(tmp_path / "d.marshal")
    assert cache.digest(f) == digest
    store = LocalStore(tmp_path / "store")
    assert store.put_file(f, digest, known=lambda st: cache.known(f, st) == digest)
    assert store.cas_path(digest).stat().st_ino == f.stat().st_ino  # linked, not copied
    f.unlink()
    store.restore(digest, tmp_path / "back.bin", 0o644)
    assert (tmp_path / "back.bin").stat().st_mtime_ns == 1_600_000_000_123_456_789
