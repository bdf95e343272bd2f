"""The stat-keyed digest cache: right digests, and output paths kept in their own file."""

from __future__ import annotations

import hashlib
import os

from occlum_rules.core.digests import DigestCache


def test_digests_are_remembered_per_shard_and_reloaded(tmp_path):
    src = tmp_path / "src" / "a.c"
    out = tmp_path / "out" / "bin" / "a.o"
    for path, data in ((src, b"int x;"), (out, b"\x7fELF")):
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    store = tmp_path / "out" / ".occlum-rules" / "digests.marshal"
    cache = DigestCache(store, split_prefix=os.path.join(str(tmp_path / "out"), ""))
    assert cache.digest(src) == hashlib.sha256(b"int x;").hexdigest()
    assert cache.digest(out) == hashlib.sha256(b"\x7fELF").hexdigest()
    cache.save()
    assert store.exists() and store.with_name("digests.marshal.outputs").exists()

    again = DigestCache(store, split_prefix=os.path.join(str(tmp_path / "out"), ""))
    assert again.digest(src) == hashlib.sha256(b"int x;").hexdigest()
    assert again._outputs.entries is None  # a source lookup never decodes the outputs' file
    out.write_bytes(b"\x7fELF changed")
    assert again.digest(out) == hashlib.sha256(b"\x7fELF changed").hexdigest()


def test_a_changed_file_is_hashed_again(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"one")
    cache = DigestCache(tmp_path / "d.marshal")
    first = cache.digest(f)
    f.write_bytes(b"two, longer")
    assert cache.digest(f) != first == hashlib.sha256(b"one").hexdigest()


def test_two_spellings_of_one_file_share_one_entry(tmp_path):
    """copy_bom reaches a shared source as ``app01/../shared/x`` and ``app02/../shared/x``:
    one entry, hashed once; a changed file is still hashed again under any spelling."""
    (tmp_path / "app01").mkdir()
    (tmp_path / "app02").mkdir()
    shared = tmp_path / "shared" / "x"
    shared.parent.mkdir()
    shared.write_bytes(b"one")
    store = tmp_path / "digests.marshal"
    cache = DigestCache(store)
    first = cache.digest(tmp_path / "app01" / ".." / "shared" / "x")
    cache.save()
    assert first == hashlib.sha256(b"one").hexdigest()
    assert list(DigestCache(store)._main.load()) == [str(shared)]
    st = os.stat(shared)
    assert cache.known(tmp_path / "app02" / ".." / "shared" / "x", st) == first
    shared.write_bytes(b"two")
    assert cache.digest(tmp_path / "app02" / ".." / "shared" / "x") == hashlib.sha256(b"two").hexdigest()


def test_entries_of_the_old_layout_are_misses_not_errors(tmp_path):
    """A digests file written before entries were packed bytes (stamp tuple, hex digest) is
    read as a miss: the file is hashed again and the entry rewritten in the new layout."""
    import marshal

    from occlum_rules.core.digests import stat_stamp

    f = tmp_path / "a.bin"
    f.write_bytes(b"new content")
    wrong = "0" * 64  # what the old entry claims: must not be believed in the new layout
    store = tmp_path / "d.marshal"
    store.write_bytes(marshal.dumps({str(f): (stat_stamp(os.stat(f)), wrong)}))
    cache = DigestCache(store)
    right = hashlib.sha256(b"new content").hexdigest()
    assert cache.digest(f) == right
    cache.save()
    again = DigestCache(store)
    assert again.known(f, os.stat(f)) == right
    entry = marshal.loads(store.read_bytes())[str(f)]
    assert type(entry) is bytes and entry.endswith(bytes.fromhex(right))


def test_encoded_stamps_decode_to_the_dict_they_stand_for():
    import marshal

    from occlum_rules.core.outputs import StampBlob

    blob, plain = StampBlob(), {}
    for path, stamp in [("out/a", (1, 2**62, 0o100644)), ("out/\udcff/é", (0, -1, 0)),
                        ("out/a", (5, 5, 5)), ("", (2**31, 2**31 - 1, 0o40755))]:
        blob[path] = stamp
        plain[path] = stamp
    assert marshal.loads(blob.encoded()) == plain
    assert marshal.loads(StampBlob().encoded()) == {}
