"""Pack -> verify/unpack gives back the tree; any flipped byte in __ROOT is caught."""

from __future__ import annotations

import os
import random

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.pfs import IntegrityError
from occlum_rules.stages.securefs.sefs import pack_image, unpack_image, verify_image

from .helpers import listing_of, listing_of_entries, make_random_tree


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pack_then_verify_and_unpack_give_the_tree(tmp_path, seed):
    rng = random.Random(seed)
    src = tmp_path / "src"
    make_random_tree(src, rng, files=40, big=seed == 1)
    res = pack_image(src, tmp_path / "img" / "__ROOT")
    entries = verify_image(tmp_path / "img" / "__ROOT", expected_mac=res.mac_text)
    assert listing_of_entries(entries) == listing_of(src)
    mac = unpack_image(tmp_path / "img" / "__ROOT", tmp_path / "back")
    assert mac == res.root_mac
    assert listing_of(tmp_path / "back") == listing_of(src)


def test_encrypted_round_trip_and_wrong_key(tmp_path):
    rng = random.Random(7)
    make_random_tree(tmp_path / "src", rng, files=20)
    key = bytes(range(16))
    a = pack_image(tmp_path / "src", tmp_path / "a" / "__ROOT", key=key)
    b = pack_image(tmp_path / "src", tmp_path / "b" / "__ROOT", key=key)
    assert a.mac_text != b.mac_text  # random nonces
    entries = verify_image(tmp_path / "a" / "__ROOT", key, expected_mac=a.mac_text)
    assert listing_of_entries(entries) == listing_of(tmp_path / "src")
    with pytest.raises(IntegrityError):
        verify_image(tmp_path / "a" / "__ROOT", bytes(16))
    with pytest.raises(IntegrityError):
        verify_image(tmp_path / "a" / "__ROOT")


@pytest.mark.parametrize("keyed", [False, True])
def test_flipped_byte_anywhere_in_root_is_detected(tmp_path, keyed):
    rng = random.Random(11)
    src = tmp_path / "src"
    make_random_tree(src, rng, files=12)
    key = bytes(16 * [7]) if keyed else None
    root = tmp_path / "img" / "__ROOT"
    pack_image(src, root, key=key)
    verify_image(root, key)
    files = sorted(os.listdir(root))
    checked = 0
    for name in files:
        path = root / name
        data = path.read_bytes()
        positions = set(rng.sample(range(len(data)), min(25, len(data))))
        positions |= {0, 8, 60, 77, 93, 94, 95, 3486, 3487, 4095}
        for pos in sorted(p for p in positions if p < len(data)):
            bad = bytearray(data)
            bad[pos] ^= 1 << rng.randrange(8)
            path.write_bytes(bad)
            with pytest.raises(IntegrityError):
                verify_image(root, key)
            checked += 1
        path.write_bytes(data)
    assert checked > 200
    verify_image(root, key)


def test_image_structure_changes_are_detected(tmp_path):
    make_random_tree(tmp_path / "src", random.Random(5), files=10)
    root = tmp_path / "img" / "__ROOT"
    res = pack_image(tmp_path / "src", root)
    (root / "ffff0000000000000000000000000000").write_bytes(b"")
    with pytest.raises(IntegrityError, match="differ"):
        verify_image(root)
    os.unlink(root / "ffff0000000000000000000000000000")
    victim = sorted(n for n in os.listdir(root) if n != "metadata")[-1]
    os.unlink(root / victim)
    with pytest.raises(IntegrityError):
        verify_image(root)
    pack_image(tmp_path / "src", root)
    with pytest.raises(IntegrityError, match="root MAC"):
        verify_image(root, expected_mac="00-" * 15 + "00")
    assert verify_image(root, expected_mac=res.mac_text)


def test_unpack_leaves_nothing_on_failure(tmp_path):
    make_random_tree(tmp_path / "src", random.Random(3), files=10)
    root = tmp_path / "img" / "__ROOT"
    pack_image(tmp_path / "src", root)
    last = sorted(n for n in os.listdir(root) if n != "metadata")[-1]
    data = bytearray((root / last).read_bytes())
    data[200] ^= 0xFF
    (root / last).write_bytes(data)
    with pytest.raises(IntegrityError):
        unpack_image(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_names_are_user_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    long_name = [{"path": "n" * 256, "type": "file", "mode": 0o644, "size": 0, "sha256": "00" * 32}]
    with pytest.raises(UserError, match="at most 255"):  # Linux itself stops at 255 bytes
        pack_image(src, tmp_path / "img", manifest=long_name)
    os.close(os.open(os.path.join(os.fsencode(src), b"bad\xff"), os.O_CREAT | os.O_WRONLY))
    with pytest.raises(UserError, match="UTF-8"):
        pack_image(src, tmp_path / "img")
    assert not (tmp_path / "img").exists()


def test_failed_pack_keeps_the_old_image_and_leaves_no_temp(tmp_path):
    src = tmp_path / "src"
    make_random_tree(src, random.Random(21), files=10)
    (src / "f").write_bytes(b"12345")
    root = tmp_path / "out" / "__ROOT"
    good = pack_image(src, root)
    bad_manifest = [{"path": "f", "type": "file", "mode": 0o644, "size": 6, "sha256": "0" * 64}]
    with pytest.raises(UserError, match="shrank|differs"):
        pack_image(src, root, manifest=bad_manifest)
    assert sorted(os.listdir(tmp_path / "out")) == ["__ROOT"]
    assert verify_image(root, expected_mac=good.mac_text)
