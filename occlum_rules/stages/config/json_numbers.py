"""JSON numbers as gen_internal_conf reads and re-writes them.

The free-form parts of Occlum.json (``env``, ``entry_points``) pass through
``serde_json::Value`` and come out re-serialised, so any number in them is re-formatted.
To get the same bytes we must read a number the way serde_json 1.0.87 (default
features, i.e. without ``float_roundtrip``) does -- which is *not* correctly rounded for
long decimals -- and print floats the way ryu does (``1e19``, ``1e-7``, ``100.0``).

Python's own ``float()`` and ``repr()`` differ from both in corner cases, which is why
this module exists. Real Occlum.json files hardly ever hold floats; integers that fit in
u64/i64 are kept exactly.
"""

from __future__ import annotations

from decimal import Decimal

from occlum_rules.errors import UserError

U64_MAX = 2**64 - 1
_I32_MAX = 2**31 - 1
# serde_json's POW10 table: 1e0 .. 1e308, each the correctly rounded double.
_POW10 = [float(f"1e{i}") for i in range(309)]


def _f64_from_parts(positive: bool, significand: int, exponent: int, text: str) -> float:
    """serde_json's non-roundtrip ``f64_from_parts``: one multiply or divide by 10^|e|."""
    f = float(significand)  # u64 -> f64, round-half-even like Rust's `as`
    while True:
        if abs(exponent) < len(_POW10):
            pow10 = _POW10[abs(exponent)]
            if exponent >= 0:
                f *= pow10
                if f == float("inf"):
                    raise _out_of_range(text)
            else:
                f /= pow10
            break
        if f == 0.0:
            break
        if exponent >= 0:
            raise _out_of_range(text)
        f /= 1e308
        exponent += 308
    return f if positive else -f


def _out_of_range(text: str) -> UserError:
    return UserError(f"number {text} is out of range for a JSON double")


def _overflows(acc: int, digit: int, limit: int) -> bool:
    """serde_json's ``overflow!(acc * 10 + digit, limit)``."""
    return acc >= limit // 10 and (acc > limit // 10 or digit > limit % 10)


def parse_json_number(text: str) -> int | float:
    """Parse the text of a JSON number token into what serde_json's ``Value`` would hold.

    Integers that fit u64 (or i64 when negative) stay Python ints; everything else,
    including ``-0``, becomes a float computed with serde_json 1.0.87's arithmetic.
    ``text`` is already known to match the JSON number grammar.
    """
    pos = 0
    positive = True
    if text[pos] == "-":
        positive = False
        pos += 1
    n = len(text)

    significand = 0
    exponent = 0
    # Integer part.
    while pos < n and text[pos].isdigit():
        digit = ord(text[pos]) - 48
        if _overflows(significand, digit, U64_MAX):
            # parse_long_integer: further integer digits only scale the exponent.
            while pos < n and text[pos].isdigit():
                exponent += 1
                pos += 1
            break
        significand = significand * 10 + digit
        pos += 1
    else:
        if pos == n:
            if positive:
                return significand
            if significand == 0 or significand > 2**63:
                # `-0` and anything below i64::MIN become floats.
                return -float(significand)
            return -significand

    if pos < n and text[pos] == ".":
        pos += 1
        overflowed = False
        while pos < n and text[pos].isdigit():
            digit = ord(text[pos]) - 48
            if overflowed or _overflows(significand, digit, U64_MAX):
                overflowed = True  # parse_decimal_overflow: ignore the remaining digits
            else:
                significand = significand * 10 + digit
                exponent -= 1
            pos += 1

    if pos < n and text[pos] in "eE":
        pos += 1
        exp_positive = True
        if text[pos] in "+-":
            exp_positive = text[pos] == "+"
            pos += 1
        exp = 0
        while pos < n:
            digit = ord(text[pos]) - 48
            if _overflows(exp, digit, _I32_MAX):
                if significand != 0 and exp_positive:
                    raise _out_of_range(text)
                return 0.0 if positive else -0.0
            exp = exp * 10 + digit
            pos += 1
        exponent = exponent + exp if exp_positive else exponent - exp
        exponent = max(-(2**31), min(_I32_MAX, exponent))  # saturating i32 arithmetic

    return _f64_from_parts(positive, significand, exponent, text)


def format_json_float(value: float) -> str:
    """Format a finite float like ryu's ``format64`` (what serde_json writes).

    Shortest round-trip digits (the same digits Python's ``repr`` picks), but laid out
    as ryu does: decimal notation for 1e-5 <= |v| < 1e16 with ``.0`` on integral
    values, otherwise ``d.ddde<exp>`` with no ``+`` and no zero padding.
    """
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("JSON cannot hold NaN or infinity")
    sign = "-" if str(value).startswith("-") else ""
    if value == 0.0:
        return f"{sign}0.0"
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)  # finite: NaN and infinity were refused above
    exp = exponent
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exp += len(digit_tuple) - len(digits)  # value = int(digits) * 10**exp
    length = len(digits)
    point = length + exp  # position of the decimal point relative to the digits
    if 0 <= exp and point <= 16:
        body = digits + "0" * exp + ".0"
    elif 0 < point <= 16:
        body = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        body = "0." + "0" * (-point) + digits
    elif length == 1:
        body = f"{digits}e{point - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{point - 1}"
    return sign + body
