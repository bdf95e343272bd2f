"""Reading a file the user named: bytes, or one UserError naming the file."""

from __future__ import annotations

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.bom.schema import EXIT_FILE_NOT_FOUND, read_bom_file
from occlum_rules.stages.securefs.image_key import load_image_key
from occlum_rules.user_files import read_user_file, read_user_text


def test_contents(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one\r\ntwo\rthree\n")
    assert read_user_file(f) == b"one\r\ntwo\rthree\n"
    assert read_user_text(f) == "one\ntwo\nthree\n"


def test_missing_unreadable_and_undecodable_name_the_file(tmp_path):
    with pytest.raises(UserError) as info:
        read_user_file(tmp_path / "nope.json")
    assert str(info.value) == f"{tmp_path / 'nope.json'}: file not found"
    with pytest.raises(UserError) as info:
        read_user_file(tmp_path / "nope", "image key file", where="--key nope")
    assert str(info.value) == "--key nope: image key file not found"
    with pytest.raises(UserError) as info:  # a directory: an OSError other than "missing"
        read_user_file(tmp_path, "MAC file", exit_code=7)
    assert str(info.value) == f"{tmp_path}: cannot read MAC file: Is a directory"
    assert info.value.exit_code == 7
    bad = tmp_path / "latin1"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match="latin1: not UTF-8 text"):
        read_user_text(bad)


def test_the_sites_use_it(tmp_path):
    """A BOM that is a directory, or not UTF-8, keeps copy_bom's exit status; a key file
    that is a directory is one error, not a traceback."""
    for make in (lambda p: p.mkdir(), lambda p: p.write_bytes(b"\xff\xfe")):
        bom = tmp_path / f"bom{len(list(tmp_path.iterdir()))}.yaml"
        make(bom)
        with pytest.raises(UserError) as info:
            read_bom_file(str(bom))
        assert info.value.exit_code == EXIT_FILE_NOT_FOUND and str(bom) in str(info.value)
    with pytest.raises(UserError, match="cannot read image key file: Is a directory"):
        load_image_key(tmp_path)
