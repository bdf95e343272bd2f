"""The digests of the files an action discovered, as they are now: the cache's where its
stamp still holds, the rest hashed a batch at a time on a few threads, answered in order."""

from __future__ import annotations

import hashlib
import os
import threading

from occlum_rules.core import keys
from occlum_rules.core.digests import DigestCache
from occlum_rules.core.keys import _HASH_BATCH, current_digests


def _tree(root, count):
    paths = []
    for i in range(count):
        p = root / f"d{i % 7}" / f"f{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(i * 37 % 5000))
        paths.append(str(p))
    return paths


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _pools_made(monkeypatch):
    made = []
    real = keys.ThreadPoolExecutor

    def counted(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(keys, "ThreadPoolExecutor", counted)
    return made


def test_every_file_is_answered_in_order_and_the_cache_learns_the_new_ones(tmp_path):
    paths = _tree(tmp_path, 5 * _HASH_BATCH + 3)  # several batches, and a short last one
    paths.insert(17, str(tmp_path / "missing"))
    cache = DigestCache(tmp_path / "digests")
    expected = [None if p.endswith("missing") else _sha(p) for p in paths]
    assert list(current_digests(cache, paths)) == expected
    assert [cache.known(p) for p in paths if not p.endswith("missing")] == \
        [d for d in expected if d is not None]
    assert not [t for t in threading.enumerate() if t.name.startswith("hash")]


def test_files_the_cache_vouches_for_start_no_thread(tmp_path, monkeypatch):
    paths = _tree(tmp_path, 2 * _HASH_BATCH)
    cache = DigestCache(tmp_path / "digests")
    for p in paths:
        cache.digest(p)
    made = _pools_made(monkeypatch)
    assert list(current_digests(cache, paths)) == [_sha(p) for p in paths]
    assert made == []


def test_a_file_changed_since_it_was_cached_is_hashed_again(tmp_path, monkeypatch):
    paths = _tree(tmp_path, 3 * _HASH_BATCH)
    cache = DigestCache(tmp_path / "digests")
    list(current_digests(cache, paths))
    changed = paths[2 * _HASH_BATCH + 1]
    with open(changed, "ab") as f:
        f.write(b"more")
    made = _pools_made(monkeypatch)
    assert list(current_digests(cache, paths)) == [_sha(p) for p in paths]
    assert len(made) == 1  # from the changed file on


def test_stopping_early_stops_the_hashing(tmp_path):
    paths = _tree(tmp_path, 3 * keys._BATCHES_AHEAD * _HASH_BATCH)
    cache = DigestCache(tmp_path / "digests")
    found = current_digests(cache, paths)
    assert next(found) == _sha(paths[0])
    found.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("hash")]
    learned = sum(cache.known(p) is not None for p in paths)
    assert learned < len(paths)  # the batches after the first few were never hashed
