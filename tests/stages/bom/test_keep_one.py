"""keep_one: the single rule behind every "a later BOM overrides an earlier one" dedupe."""

from __future__ import annotations

from occlum_rules.stages.bom.plan import keep_one


def test_last_one_wins_across_groups_and_order_is_kept():
    a, b, c = ["x1", "y1"], ["z1", "x2"], ["y2"]
    kept = keep_one([a, b, c], key=lambda s: s[0])
    assert (a, b, c) == ([], ["z1", "x2"], ["y2"])
    assert kept == {"x", "y", "z"}


def test_first_one_wins_when_asked():
    a, b = ["x1", "y1"], ["x2", "z1", "z2"]
    keep_one([a, b], key=lambda s: s[0], last=False)
    assert (a, b) == (["x1", "y1"], ["z1"])


def test_keys_seen_earlier_are_dropped_everywhere():
    files = [["lib/a"], ["lib/b"]]
    seen = keep_one(files, key=str)
    libraries = [["lib/a", "lib/c"]]
    keep_one(libraries, key=str, seen=seen)
    assert libraries == [["lib/c"]]
