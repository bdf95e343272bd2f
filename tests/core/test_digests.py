"""The stat-keyed digest cache: right digests, and output paths kept in their own file."""

from __future__ import annotations

import hashlib
import itertools
import os

from occlum_rules.core.digests import DigestCache, file_stamp, file_stamp_fields, normal_path


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
    assert store.with_name("digests.marshal.log").exists()
    assert store.with_name("digests.marshal.outputs.log").exists()

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
    entry = again._main.load()[str(f)]
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


def _files(tmp_path, n: int, prefix: str = "f") -> list:
    out = []
    for i in range(n):
        f = tmp_path / f"{prefix}{i}"
        f.write_bytes(f"{prefix} {i}".encode())
        out.append(f)
    return out


def test_a_save_appends_what_was_learnt_and_leaves_the_base_alone(tmp_path):
    """An incremental build learns a few digests per action: a save appends those to the
    journal instead of rewriting the whole shard."""
    store = tmp_path / "d.marshal"
    files = _files(tmp_path, 50)
    cache = DigestCache(store)
    for f in files:
        cache.digest(f)
    cache.save()
    cache._main._fold()  # a base as a big build leaves it
    base = store.read_bytes()
    assert not store.with_name("d.marshal.log").exists()

    later = DigestCache(store)
    assert later.digest(files[0]) == hashlib.sha256(b"f 0").hexdigest()
    later.save()  # nothing learnt: nothing written
    assert not store.with_name("d.marshal.log").exists()
    files[1].write_bytes(b"changed")
    later.digest(files[1])
    later.save()
    log = store.with_name("d.marshal.log").read_bytes()
    assert store.read_bytes() == base and 0 < len(log) < len(base) / 10
    third = DigestCache(store)
    st = os.stat(files[1])
    assert third.known(files[1], st) == hashlib.sha256(b"changed").hexdigest()
    assert len(third._main.load()) == 50


def test_a_torn_journal_keeps_its_whole_frames_and_the_next_save_folds_it(tmp_path):
    store = tmp_path / "d.marshal"
    first, second = _files(tmp_path, 2)
    cache = DigestCache(store)
    cache.digest(first)
    cache.save()
    cache.digest(second)
    cache.save()
    log = store.with_name("d.marshal.log")
    whole = log.read_bytes()
    log.write_bytes(whole[:-3])  # a build killed while it appended the second frame

    again = DigestCache(store)
    assert again.known(first, os.stat(first)) is not None
    assert again.known(second, os.stat(second)) is None  # lost: costs a re-hash, no more
    again.digest(second)
    again.save()  # never appends behind a torn frame
    assert not log.exists() and store.exists()
    fresh = DigestCache(store)
    assert fresh.known(second, os.stat(second)) == hashlib.sha256(b"f 1").hexdigest()


def test_a_journal_bigger_than_its_base_is_folded(tmp_path, monkeypatch):
    from occlum_rules.core import digests

    monkeypatch.setattr(digests, "_FOLD_AT", 200)
    store = tmp_path / "d.marshal"
    log = store.with_name("d.marshal.log")
    cache = DigestCache(store)
    folds = 0
    for f in _files(tmp_path, 30):
        cache.digest(f)
        cache.save()
        folds += not log.exists()
    assert 0 < folds < 15  # folded now and then, not at every save
    assert len(DigestCache(store)._main.load()) == 30


def test_two_builds_appending_to_one_journal_keep_each_others_entries(tmp_path):
    """doit -n 2 runs actions in two processes, each with its own cache of the same files."""
    store = tmp_path / "d.marshal"
    ours, theirs = _files(tmp_path, 20, "a"), _files(tmp_path, 20, "b")
    a, b = DigestCache(store), DigestCache(store)
    for x, y in zip(ours, theirs):
        a.digest(x)
        b.digest(y)
        a.save()
        b.save()
    a._main._fold()  # a fold sees the other process's appends and keeps them
    merged = DigestCache(store)
    for f in ours + theirs:
        assert merged.known(f, os.stat(f)) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_normal_path_is_normpath() -> None:
    parts = ["", "/", "//", "a", ".", "..", ".hidden", "..x", "x.", "b/", "/./", "/../"]
    for combo in itertools.product(parts, repeat=4):
        path = "".join(combo)
        if path:
            assert normal_path(path) == os.path.normpath(path), path
    located = type("Located", (str,), {})("/a/b")  # what a BOM's parser hands on
    assert type(normal_path(located)) is str and normal_path(located) == "/a/b"


def test_a_stamp_taken_earlier_finds_the_digest_of_the_bytes_it_was_taken_of(tmp_path):
    """copy_bom's planning walk keeps each source's stat as a file_stamp and the copy asks
    the cache with it: the answer must be the digest of the file as it was then, and none
    once the file has changed."""
    f = tmp_path / "f"
    f.write_bytes(b"one")
    cache = DigestCache(tmp_path / "cache")
    stamp = file_stamp(os.stat(f))
    assert cache.known_at(str(f), stamp) is None  # never hashed: the caller must look
    assert cache.digest(str(f)) == hashlib.sha256(b"one").hexdigest()
    assert cache.known_at(str(f), stamp) == hashlib.sha256(b"one").hexdigest()
    assert file_stamp_fields(stamp)[2] == 3  # the size
    f.write_bytes(b"two!")
    later = file_stamp(os.stat(f))
    assert cache.known_at(str(f), later) is None
    assert cache.known_at(str(f), stamp) == hashlib.sha256(b"one").hexdigest()  # of then
