"""Image key files: Occlum's format, sefs-cli's parser rules, fingerprint, generation."""

from __future__ import annotations

import os
import re

import pytest

from occlum_rules.cli import main as cli
from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.image_key import (
    format_image_key,
    key_fingerprint,
    load_image_key,
    parse_image_key,
)
from tests.conftest import vectors_path


def test_vector_key_file_parses():
    key = load_image_key(vectors_path("sefs", "pfs", "userkey", "key.txt"))
    assert key == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert format_image_key(key) == "00-11-22-33-44-55-66-77-88-99-aa-bb-cc-dd-ee-ff\n"


def test_parser_follows_rust_from_str_radix():
    assert parse_image_key("F-+0a" + "-00" * 14 + "\r\n") == bytes([15, 10]) + bytes(14)


@pytest.mark.parametrize(
    "text",
    ["", "00-11", "-".join(["00"] * 17), "-".join(["100"] + ["00"] * 15), "-".join(["zz"] + ["00"] * 15),
     "-".join([""] + ["00"] * 15), " " + "-".join(["00"] * 16)],
)
def test_malformed_keys_are_user_errors_without_echoing(text):
    with pytest.raises(UserError) as exc:
        parse_image_key(text, "key.txt")
    assert "malformed image key" in str(exc.value) and "00-00" not in str(exc.value)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_image_key(tmp_path / "nope")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        load_image_key(tmp_path / "bin")


def test_gen_image_key_cli(tmp_path):
    path = tmp_path / "image_key"
    assert cli(["gen-image-key", str(path)]) == 0
    text = path.read_text()
    assert re.fullmatch(r"([0-9a-f]{2}-){15}[0-9a-f]{2}\n", text)
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = load_image_key(path)
    assert cli(["gen-image-key", str(path)]) == 0
    assert load_image_key(path) != key


def test_fingerprint_is_stable_and_does_not_contain_the_key():
    key = bytes(range(16))
    fp = key_fingerprint(key)
    assert fp == key_fingerprint(bytes(range(16))) and fp != key_fingerprint(bytes(16))
    assert key.hex() not in fp and fp.startswith("sha256:")
