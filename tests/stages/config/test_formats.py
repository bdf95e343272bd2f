"""Size strings, JSON numbers and KSS ids: the small parsers whose quirks decide bytes."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occlum_rules.errors import UserError
from occlum_rules.stages.config.json_numbers import format_json_float, parse_json_number
from occlum_rules.stages.config.json_source import parse_json_text
from occlum_rules.stages.config.kss import parse_kss_id
from occlum_rules.stages.config.sizes import SizeError, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32MB", 32 << 20),
        (" 4 MB ", 4 << 20),
        ("+32MB", 32 << 20),
        ("314572800B", 314572800),
        ("1TB", 1 << 40),
        ("0KB", 0),
        ("0B", 0),
        ("\t2GB\n", 2 << 30),
    ],
)
def test_sizes_accepted(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("256XB", "no number"),  # unit B matches last, "256X" is not a number
        ("", "no unit"),
        ("1048576", "no unit"),
        ("1.5GB", "no number"),
        ("MB", "no number"),
        ("-1MB", "no number"),
        ("1 M B", "no number"),
        ("32mb", "no unit"),
        ("1GiB", "no number"),
        ("10G", "no unit"),
        ("1PB", "no number"),
        ("++1MB", "no number"),
        ("١MB", "no number"),  # non-ASCII digits are not digits to Rust
        ("17179869184GB", "2^64 bytes or more"),
        ("18446744073709551616B", "number too large"),
    ],
)
def test_sizes_rejected(text, reason):
    with pytest.raises(SizeError) as info:
        parse_size(text)
    assert info.value.reason == reason


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_format_size_round_trips(n):
    text = format_size(n)
    assert parse_size(text) == n
    assert text.endswith(("KB", "MB", "GB", "TB", "B"))


def test_format_size_prefers_largest_exact_unit():
    assert [format_size(n) for n in (0, 1000, 1024, 1 << 30, 3 << 40, (1 << 30) + 1)] == [
        "0B", "1000B", "1KB", "1GB", "3TB", "1073741825B",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "0"),
        ("-0", "-0.0"),
        ("1.0", "1.0"),
        ("100.0", "100.0"),
        ("0.1", "0.1"),
        ("1e19", "1e19"),
        ("1E-7", "1e-7"),
        ("2.5e+3", "2500.0"),
        ("1e16", "1e16"),
        ("1e15", "1000000000000000.0"),
        ("0.00001", "0.00001"),
        ("0.000001", "1e-6"),
        ("18446744073709551615", "18446744073709551615"),
        ("18446744073709551616", "1.8446744073709552e19"),
        ("-9223372036854775808", "-9223372036854775808"),
        ("-9223372036854775809", "-9.223372036854776e18"),
        # serde_json 1.0.87 without float_roundtrip: not correctly rounded.
        ("123456789012345678901234", "1.2345678901234567e23"),
        ("3.141592653589793238", "3.141592653589793"),
    ],
)
def test_numbers_reformatted_like_serde_json(text, expected):
    value = parse_json_number(text)
    out = str(value) if isinstance(value, int) else format_json_float(value)
    assert out == expected


def test_out_of_range_number_is_an_error():
    with pytest.raises(UserError, match="out of range"):
        parse_json_text('{"a": 1e400}')


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_format_round_trips(x):
    text = format_json_float(x)
    assert struct.pack("<d", float(text)) == struct.pack("<d", x)
    assert "+" not in text and ("e" in text or "." in text)


@pytest.mark.parametrize(
    ("text", "error_where"),
    [
        ('{"a": 1} x', "Occlum.json:1:10"),
        ('{"a": 1,}', "Occlum.json:1:9"),
        ('{\n  "a": // c\n 1}', "Occlum.json:2:8"),
        ('{"a": NaN}', "Occlum.json"),
        ('\ufeff{"a": 1}', "Occlum.json:1:1"),
        ('{"a": "\\ud800"}', "Occlum.json"),
    ],
)
def test_invalid_json_names_position(text, error_where):
    with pytest.raises(UserError) as info:
        parse_json_text(text.encode())
    assert info.value.where == error_where
    assert "invalid JSON" in info.value.message


@pytest.mark.parametrize(
    ("text", "error_where"),
    [('{"a": 1,}', "Occlum.json:1:9"), ('[1,\n ]', "Occlum.json:2:2"), ('{"a": [1, ]}', "Occlum.json:1:11")],
)
def test_trailing_comma_is_named_at_the_bracket_on_every_python(text, error_where):
    # Python 3.13 reports the comma, older releases the bracket after it; users see one answer.
    with pytest.raises(UserError) as info:
        parse_json_text(text)
    assert (info.value.where, info.value.message) == (
        error_where,
        "invalid JSON: trailing comma before the closing bracket",
    )


def test_invalid_utf8_names_position():
    with pytest.raises(UserError) as info:
        parse_json_text(b'{\n "a": "\xff"}')
    assert info.value.where == "Occlum.json:2:8"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x0", 0),
        ("42", 0x42),  # no prefix: still hex
        ("0x0x10", 0x10),  # every leading 0x is stripped
        ("0xFFFFFFFFFFFFFFFF", (1 << 64) - 1),
        ("0xabcDEF", 0xABCDEF),
    ],
)
def test_kss_ids_parse_as_hex(text, value):
    assert parse_kss_id(text, "metadata.family_id.high") == value


@pytest.mark.parametrize("text", ["0X10", "", "0x", "0x10000000000000000", "0xg", "-1"])
def test_kss_ids_rejected_with_path(text):
    with pytest.raises(UserError) as info:
        parse_kss_id(text, "metadata.family_id.high")
    assert info.value.where == "Occlum.json: metadata.family_id.high"
    assert json.dumps(text) in info.value.message
