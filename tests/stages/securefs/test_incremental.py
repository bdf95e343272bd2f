"""Incremental pack == full pack of the new tree, on random edit sequences."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from occlum_rules.stages.securefs.sefs import pack_image, verify_image

from .helpers import listing_of, make_random_tree, random_content, same_dir_bytes


def _entries(root: Path):
    files, dirs, links = [], [], []
    for dp, dn, fn in os.walk(root):
        for n in dn:
            (links if os.path.islink(os.path.join(dp, n)) else dirs).append(Path(dp, n))
        for n in fn:
            (links if os.path.islink(os.path.join(dp, n)) else files).append(Path(dp, n))
    return sorted(files), sorted(dirs), sorted(links)


def random_edit(root: Path, rng: random.Random) -> str:
    files, dirs, links = _entries(root)
    kind = rng.choice(["add", "add_dup", "modify", "delete", "rename", "chmod", "retarget", "mkdir", "rmdir"])
    parent = rng.choice([root, *dirs])
    new_name = parent / (rng.choice(["!", "0", "A", "m", "zz", "é"]) + str(rng.randrange(1000)))
    if kind == "add" and not new_name.exists():
        new_name.write_bytes(random_content(rng))
    elif kind == "add_dup" and files and not new_name.exists():
        shutil.copyfile(rng.choice(files), new_name)  # same content under another name
    elif kind == "modify" and files:
        f = rng.choice(files)
        data = bytearray(f.read_bytes())
        if data and rng.random() < 0.5:
            data[rng.randrange(len(data))] ^= 0x55  # same size, same second
        else:
            data += b"more"
        f.write_bytes(bytes(data))
    elif kind == "delete" and files:
        rng.choice(files).unlink()
    elif kind == "rename" and (files or dirs) and not new_name.exists():
        victim = rng.choice(files + dirs)
        if not str(new_name).startswith(str(victim) + "/"):
            victim.rename(new_name)
    elif kind == "chmod" and files:
        rng.choice(files).chmod(rng.choice([0o600, 0o644, 0o755, 0o400]))
    elif kind == "retarget" and links:
        link = rng.choice(links)
        link.unlink()
        link.symlink_to(rng.choice(["a", "b/c", "/abs", "é" * 3]))
    elif kind == "mkdir" and not new_name.exists():
        new_name.mkdir()
    elif kind == "rmdir" and dirs:
        shutil.rmtree(rng.choice(dirs))
    return kind


def manifest_of(src: Path) -> list[dict]:
    out = []
    for p, t, mode, size, extra in listing_of(src):
        item = {"path": p, "type": t, "mode": mode, "size": size}
        if t == "file":
            item["sha256"] = extra
        elif t == "symlink":
            item["target"] = extra
        out.append(item)
    random.Random(len(out)).shuffle(out)  # order of a manifest does not matter
    return out


@pytest.mark.parametrize("seed,use_manifest", [(0, False), (1, False), (2, True), (3, True), (4, False)])
def test_incremental_equals_full_on_random_edits(tmp_path, seed, use_manifest, monkeypatch):
    from occlum_rules.stages.securefs import incremental

    renamed = []
    real_rename = incremental.rename_protected
    monkeypatch.setattr(
        incremental, "rename_protected", lambda p, n: renamed.append(n) or real_rename(p, n)
    )
    rng = random.Random(seed)
    src = tmp_path / "src"
    make_random_tree(src, rng, files=30, big=seed == 0)
    inc_root = tmp_path / "inc" / "__ROOT"
    state = tmp_path / "inc" / "state.json"
    mf = manifest_of if use_manifest else (lambda _src: None)
    first = pack_image(src, inc_root, state_path=state, manifest=mf(src))
    assert not first.incremental and state.exists()
    reused_total = 0
    for step in range(12):
        kinds = [random_edit(src, rng) for _ in range(rng.randrange(1, 4))]
        inc = pack_image(src, inc_root, state_path=state, manifest=mf(src))
        full_root = tmp_path / f"full{step}" / "__ROOT"
        full = pack_image(src, full_root)
        assert inc.incremental, inc.reason
        assert inc.mac_text == full.mac_text, kinds
        assert same_dir_bytes(inc_root, full_root), kinds
        reused_total += inc.reused
        shutil.rmtree(full_root.parent)
    assert reused_total > 0 and renamed  # id shifts were served by renaming old files
    assert [(e.path, e.type) for e in verify_image(inc_root)] == [(p, t) for p, t, *_ in listing_of(src)]


def test_one_changed_file_rewrites_one_inode(tmp_path):
    src = tmp_path / "src"
    make_random_tree(src, random.Random(9), files=30)
    (src / "zzz_last").write_bytes(b"x" * 10000)
    state = tmp_path / "state.json"
    pack_image(src, tmp_path / "img", state_path=state)
    (src / "zzz_last").write_bytes(b"y" * 10000)
    res = pack_image(src, tmp_path / "img", state_path=state)
    assert res.incremental and res.rewritten == 1 and res.reused == res.inodes - 1
    # renaming the first entry shifts every id: file data is reused (node 0 rewritten);
    # only directories, whose entries hold the shifted ids, get new content
    first = sorted(os.listdir(src), key=lambda n: n.encode())[0]
    os.rename(src / first, src / "~moved")
    res = pack_image(src, tmp_path / "img", state_path=state)
    ndirs = 1 + sum(1 for _p, t, *_ in listing_of(src) if t == "dir")
    assert res.incremental and res.bytes == 0 and res.rewritten <= ndirs, res
    assert res.mac_text == pack_image(src, tmp_path / "full").mac_text


def test_manifest_fast_path_touches_only_changed_rows(tmp_path, monkeypatch):
    from occlum_rules.stages.securefs import sefs

    src = tmp_path / "src"
    make_random_tree(src, random.Random(4), files=25)
    (src / "lnk").symlink_to("a")
    state = tmp_path / "state"
    a = pack_image(src, tmp_path / "img", state_path=state, manifest=manifest_of(src))
    assert a.mac_text == pack_image(src, tmp_path / "full").mac_text
    victim = next(src / p for p, t, *_ in listing_of(src) if t == "file")
    victim.write_bytes(b"new content")
    victim.chmod(0o600)
    (src / "lnk").unlink()
    (src / "lnk").symlink_to("somewhere/else")
    next(src / p for p, t, *_ in listing_of(src) if t == "dir").chmod(0o711)

    def no_tree(*_a):
        raise AssertionError("fast path should not rebuild the tree")

    monkeypatch.setattr(sefs, "tree_from_manifest", no_tree)
    b = pack_image(src, tmp_path / "img", state_path=state, manifest=manifest_of(src))
    monkeypatch.undo()
    assert b.incremental and b.rewritten == 2  # the file and the symlink
    shutil.rmtree(tmp_path / "full")
    full = pack_image(src, tmp_path / "full")
    assert b.mac_text == full.mac_text and same_dir_bytes(tmp_path / "img", tmp_path / "full")


@pytest.mark.parametrize("damage", ["garbage", "checksum", "image_changed", "extra_file", "missing"])
def test_bad_state_falls_back_to_full_pack(tmp_path, damage):
    src = tmp_path / "src"
    make_random_tree(src, random.Random(2), files=20)
    root = tmp_path / "img" / "__ROOT"
    state = tmp_path / "img" / "state.json"
    pack_image(src, root, state_path=state)
    (src / "new_file").write_bytes(b"n" * 5000)
    if damage == "garbage":
        state.write_text("{not json")
    elif damage == "checksum":
        data = bytearray(state.read_bytes())
        data[-40] ^= 0x01  # some recorded value changes; the recorded checksum does not
        state.write_bytes(bytes(data))
    elif damage == "image_changed":
        pack_image(src / "..", tmp_path / "other")  # some other image moved into place
        shutil.rmtree(root)
        shutil.copytree(tmp_path / "other", root)
    elif damage == "extra_file":
        (root / "stray").write_bytes(b"")
    elif damage == "missing":
        os.unlink(state)
    res = pack_image(src, root, state_path=state)
    assert not res.incremental and res.reason
    assert same_dir_bytes(root, Path(pack_image(src, tmp_path / "ref") and tmp_path / "ref"))
    assert pack_image(src, root, state_path=state).incremental  # state is good again


def test_encrypted_images_are_always_packed_in_full(tmp_path):
    src = tmp_path / "src"
    make_random_tree(src, random.Random(8), files=10)
    state = tmp_path / "state.json"
    for _ in range(2):
        res = pack_image(src, tmp_path / "img", key=bytes(16 * [3]), state_path=state)
        assert not res.incremental and "encrypted" in res.reason
    assert not state.exists()  # never write hashes of an encrypted image's plaintext


def test_state_survives_an_encrypted_pack_of_the_same_directory(tmp_path):
    src = tmp_path / "src"
    make_random_tree(src, random.Random(13), files=15)
    root, state = tmp_path / "img" / "__ROOT", tmp_path / "state"
    pack_image(src, root, state_path=state)
    os.rename(root, tmp_path / "kept")  # its files as the pack left them
    pack_image(src, root, key=bytes(16 * [5]), state_path=state)
    assert state.exists()
    shutil.rmtree(root)
    os.rename(tmp_path / "kept", root)  # the integrity-only image back in place
    (src / "new").write_bytes(b"n" * 4000)
    res = pack_image(src, root, state_path=state)
    assert res.incremental, res.reason
    assert same_dir_bytes(root, Path(pack_image(src, tmp_path / "full") and tmp_path / "full"))


@pytest.mark.parametrize("keep_times", [True, False])
def test_a_copy_of_the_image_is_trusted_only_with_the_times_the_pack_left(tmp_path, keep_times):
    """Copied with its times (a workspace copied with ``cp -a``, a restore from the store),
    ``__ROOT`` holds what the pack left, as the build engine sees it too; copied afresh (new
    mtimes), the state cannot tell it from an edited one and the pack is full."""
    src = tmp_path / "src"
    make_random_tree(src, random.Random(13), files=15)
    root, state = tmp_path / "img" / "__ROOT", tmp_path / "state"
    pack_image(src, root, state_path=state)
    shutil.copytree(root, tmp_path / "copy",
                    copy_function=shutil.copy2 if keep_times else shutil.copyfile)
    shutil.rmtree(root)
    os.rename(tmp_path / "copy", root)
    (src / "new").write_bytes(b"n" * 4000)
    res = pack_image(src, root, state_path=state)
    assert res.incremental == keep_times, res.reason
    if not keep_times:
        assert "changed since it was packed" in res.reason
    assert same_dir_bytes(root, Path(pack_image(src, tmp_path / "full") and tmp_path / "full"))


@pytest.mark.parametrize("edit", ["data", "metadata"])
def test_an_image_file_edited_since_the_pack_is_packed_again(tmp_path, edit):
    """An incremental pack rewrites only the inodes whose source changed: a file of __ROOT
    edited since the last pack (by hand, or through the store's hard link to it) must not
    survive into the new image."""
    src = tmp_path / "src"
    make_random_tree(src, random.Random(21), files=15)
    root, state = tmp_path / "img" / "__ROOT", tmp_path / "state"
    pack_image(src, root, state_path=state)
    victim = root / "metadata" if edit == "metadata" else max(
        (p for p in root.iterdir() if p.name != "metadata"), key=lambda p: p.stat().st_size)
    at = victim.stat().st_size - 100
    with open(victim, "r+b") as f:  # in place: same inode, same size
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    (src / "new").write_bytes(b"n" * 4000)
    res = pack_image(src, root, state_path=state)
    assert not res.incremental and "changed since it was packed" in res.reason
    assert same_dir_bytes(root, Path(pack_image(src, tmp_path / "full") and tmp_path / "full"))
    verify_image(root, expected_mac=res.mac_text)


def test_interrupted_incremental_pack_is_not_trusted(tmp_path, monkeypatch):
    from occlum_rules.stages.securefs import sefs

    src = tmp_path / "src"
    make_random_tree(src, random.Random(6), files=15)
    state = tmp_path / "state.json"
    pack_image(src, tmp_path / "img", state_path=state)
    (src / "added").write_bytes(b"a" * 4000)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sefs, "metadata_content", boom)
    with pytest.raises(KeyboardInterrupt):
        pack_image(src, tmp_path / "img", state_path=state)
    monkeypatch.undo()
    assert not state.exists()
    res = pack_image(src, tmp_path / "img", state_path=state)
    assert not res.incremental
    assert same_dir_bytes(tmp_path / "img", Path(pack_image(src, tmp_path / "ref") and tmp_path / "ref"))


def test_scan_fast_path_when_only_contents_and_modes_change(tmp_path, monkeypatch):
    from occlum_rules.stages.securefs import incremental

    src = tmp_path / "src"
    make_random_tree(src, random.Random(12), files=25)
    (src / "lnk").symlink_to("a")
    state = tmp_path / "state"
    pack_image(src, tmp_path / "img", state_path=state)
    files = [src / p for p, t, *_ in listing_of(src) if t == "file"]
    files[0].write_bytes(files[0].read_bytes() + b"!")
    files[1].chmod(0o600)
    os.utime(files[2])  # new timestamps, same bytes: hashed, not rewritten
    (src / "lnk").unlink()
    (src / "lnk").symlink_to("elsewhere")

    def no_plan(*_a):
        raise AssertionError("unchanged structure should not need a plan")

    monkeypatch.setattr(incremental, "make_plan", no_plan)
    res = pack_image(src, tmp_path / "img", state_path=state)
    monkeypatch.undo()
    assert res.incremental and res.rewritten == 2, res
    full = pack_image(src, tmp_path / "full")
    assert res.mac_text == full.mac_text and same_dir_bytes(tmp_path / "img", tmp_path / "full")


@pytest.mark.parametrize("form", ["manifest file", "pretty-printed JSON"])
def test_manifest_given_as_bytes(tmp_path, form):
    """The build hands over the BOM stage's manifest file; any JSON text must still work."""
    import json

    from occlum_rules.stages.bom.manifest import encode_manifest

    def text(rows):
        if form == "manifest file":
            return encode_manifest(rows)
        return json.dumps(rows, indent=1).encode()

    src = tmp_path / "src"
    rng = random.Random(11)
    make_random_tree(src, rng, files=25)
    root, state = tmp_path / "img" / "__ROOT", tmp_path / "img" / "state"
    pack_image(src, root, state_path=state, manifest=text(manifest_of(src)))
    for step in range(6):
        random_edit(src, rng)
        inc = pack_image(src, root, state_path=state, manifest=text(manifest_of(src)))
        full = pack_image(src, tmp_path / f"full{step}")
        assert inc.incremental and inc.mac_text == full.mac_text
        assert same_dir_bytes(root, tmp_path / f"full{step}")


def test_changed_manifest_rows_compares_lines():
    from occlum_rules.stages.bom.manifest import encode_manifest
    from occlum_rules.stages.securefs.incremental import changed_manifest_rows

    rows = [{"path": "a", "type": "dir", "mode": 493},
            {"path": "a/f", "type": "file", "mode": 420, "size": 1, "sha256": "0" * 64},
            {"path": "l", "type": "symlink", "mode": 511, "target": "a"}]
    old = encode_manifest(rows)
    assert changed_manifest_rows(old, old) == []
    edited = [dict(r) for r in rows]
    edited[1]["sha256"] = "1" * 64
    edited[2]["target"] = "b"
    assert changed_manifest_rows(encode_manifest(edited), old) == [(1, edited[1]), (2, edited[2])]
    moved = [dict(r) for r in rows]
    moved[1]["path"] = "a/g"
    assert changed_manifest_rows(encode_manifest(moved), old) is None  # ids may move
    assert changed_manifest_rows(encode_manifest(rows[:2]), old) is None  # row count
    lines = old.split(b"\n")
    lines[1], lines[2] = lines[1] + b"," + lines[2][:-1], b"{}"  # two rows on one line
    assert changed_manifest_rows(b"\n".join(lines), old) is None
    lines = old.split(b"\n")
    lines[3] += b","  # a comma after the last row: not JSON
    assert changed_manifest_rows(b"\n".join(lines), old) is None


@pytest.mark.parametrize("count", [0, 1, 1021, 1022, 1023, 2045, 2046, 5000])
def test_allocate_ids_follows_allocation_order(count):
    """The bulk id list the incremental pack uses equals sefs-cli's one-by-one allocation."""
    import itertools

    from occlum_rules.stages.securefs.sefs_format import allocate_ids, inode_ids

    assert allocate_ids(count) == list(itertools.islice(inode_ids(), count))


def _rows_changed_naively(new_rows: list[dict], old_rows: list[dict]):
    if len(new_rows) != len(old_rows) or any(
            (a["path"], a["type"]) != (b["path"], b["type"]) for a, b in zip(new_rows, old_rows)):
        return None
    return [(i, a) for i, (a, b) in enumerate(zip(new_rows, old_rows)) if a != b]


@pytest.mark.parametrize("seed", range(40))
def test_changed_manifest_rows_matches_a_row_by_row_comparison(seed):
    """The prefix/suffix shortcut finds exactly the rows a full comparison finds."""
    from occlum_rules.stages.bom.manifest import encode_manifest
    from occlum_rules.stages.securefs.incremental import changed_manifest_rows

    rng = random.Random(seed)
    old = [{"path": f"d/f{i:03d}", "type": "file", "mode": 420, "size": rng.randrange(10**6),
            "sha256": f"{rng.getrandbits(256):064x}"} for i in range(rng.randrange(1, 40))]
    new = [dict(r) for r in old]
    for _ in range(rng.randrange(1, 4)):
        row = rng.choice(new)
        what = rng.choice(["size", "sha256", "mode", "path", "same"])
        if what == "size":
            row["size"] = rng.choice([row["size"] + 1, row["size"] * 10, row["size"] // 10])
        elif what == "sha256":
            row["sha256"] = f"{rng.getrandbits(256):064x}"
        elif what == "mode":
            row["mode"] = 0o755
        elif what == "path":
            row["path"] += "x"
    if rng.random() < 0.2:
        new.pop(rng.randrange(len(new)))
    got = changed_manifest_rows(encode_manifest(new), encode_manifest(old))
    assert got == _rows_changed_naively(new, old)


def test_scan_pack_between_manifest_packs_does_not_leave_a_stale_manifest(tmp_path):
    """manifest pack, file edited + directory-scan pack, edit undone + manifest pack: the
    last pack must see the file as changed against what was packed, not against the old
    manifest text."""
    from occlum_rules.stages.bom.manifest import encode_manifest

    src = tmp_path / "src"
    make_random_tree(src, random.Random(5), files=20)
    victim = next(src / p for p, t, *_ in listing_of(src) if t == "file")
    original = victim.read_bytes()
    root, state = tmp_path / "img" / "__ROOT", tmp_path / "img" / "state"
    pack_image(src, root, state_path=state, manifest=encode_manifest(manifest_of(src)))
    victim.write_bytes(original + b"changed")
    assert pack_image(src, root, state_path=state).incremental
    victim.write_bytes(original)
    last = pack_image(src, root, state_path=state, manifest=encode_manifest(manifest_of(src)))
    full = pack_image(src, tmp_path / "full")
    assert last.mac_text == full.mac_text and same_dir_bytes(root, tmp_path / "full")


def test_a_killed_packs_work_directories_are_removed(tmp_path):
    """A pack killed mid-way leaves ``__ROOT.tmp-<pid>`` / ``__ROOT.old-<pid>`` behind; the
    next full pack removes them (they would otherwise end up in the instance)."""
    src = tmp_path / "src"
    make_random_tree(src, random.Random(6), files=5)
    root = tmp_path / "img" / "__ROOT"
    for stale in ("__ROOT.tmp-999999", "__ROOT.old-999998"):
        (tmp_path / "img" / stale / "x").mkdir(parents=True)
    (tmp_path / "img" / "__ROOT.tmp-notapid").mkdir()
    pack_image(src, root)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["__ROOT", "__ROOT.tmp-notapid"]
