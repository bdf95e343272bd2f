"""The action key is the hash of exactly the material `explain` shows.

For any change to any field that decides an action's outputs, the key changes and
`material_changes` (what `occlum-rules explain` prints) names that field.
"""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from occlum_rules.core import action as action_mod
from occlum_rules.core.action import Action, material_changes
from occlum_rules.core.action import compute_key as _compute_key
from occlum_rules.core.action import key_material as _key_material

text = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=8)
digest = st.text("0123456789abcdef", min_size=64, max_size=64)

actions = st.fixed_dictionaries({
    "kind": text,
    "argv": st.one_of(st.none(), st.lists(text, max_size=3)),
    "func": st.one_of(st.none(), text),
    "params": st.dictionaries(text, st.one_of(text, st.integers(), st.booleans(), st.none()), max_size=3),
    "toolchains": st.lists(text, max_size=3, unique=True),
    "env": st.dictionaries(text, text, max_size=3),
    "outputs": st.lists(text, min_size=1, max_size=3, unique=True),
}).map(lambda a: {**a, "output_types": ["file"] * len(a["outputs"])})
inputs = st.dictionaries(text, digest, max_size=4).map(lambda d: sorted(d.items()))

def _action(fields: dict) -> Action:
    return Action(id="//t:t:a", label="//t:t", name="a", inputs=[], **fields)


def compute_key(fields: dict, ins: list) -> str:
    return _compute_key(_action(fields), ins)


def key_material(fields: dict, ins: list) -> dict:
    return _key_material(_action(fields), ins)


FIELDS = ("input digest", "input added", "input removed", "kind", "argv", "func", "param",
          "toolchain", "env", "output name", "output type", "engine format")


def _mutate(data, act: dict, ins: list, field: str, monkeypatch_format) -> tuple[dict, list, str]:
    """A changed copy of (action, inputs) and the words explain must use for it."""
    act, ins = copy.deepcopy(act), list(ins)
    fresh = data.draw(text.filter(lambda t: t not in act["params"] and t not in act["env"]
                                  and t not in dict(ins) and t not in act["toolchains"]
                                  and t not in act["outputs"] and t != act["kind"]
                                  and t != act["func"]))
    if field == "input digest" and ins:
        path, old = ins[0]
        ins[0] = (path, data.draw(digest.filter(lambda d: d != old)))
        return act, ins, f"input changed: {path}"
    if field == "input removed" and ins:
        return act, ins[1:], f"input removed: {ins[0][0]}"
    if field in ("input added", "input digest", "input removed"):
        return act, [*ins, (fresh, "0" * 64)], f"input added: {fresh}"
    if field == "kind":
        act["kind"] = fresh
        return act, ins, "kind changed"
    if field == "argv":
        act["argv"] = [*(act["argv"] or []), fresh]
        return act, ins, "argv changed"
    if field == "func":
        act["func"] = fresh
        return act, ins, "func changed"
    if field == "param":
        act["params"][fresh] = 1
        return act, ins, f"parameter changed: {fresh}"
    if field == "toolchain":
        act["toolchains"].append(fresh)
        return act, ins, f"toolchain now: {fresh}"
    if field == "env":
        act["env"][fresh] = "x"
        return act, ins, f"environment variable changed: {fresh}"
    if field == "output name":
        act["outputs"][0] = fresh
        return act, ins, "outputs changed"
    if field == "output type":
        act["output_types"][0] = "dir"
        return act, ins, "outputs changed"
    monkeypatch_format()
    return act, ins, "format changed"


@given(data=st.data(), act=actions, ins=inputs, field=st.sampled_from(FIELDS))
def test_any_change_changes_the_key_and_explain_names_it(data, act, ins, field):
    before_key, before = compute_key(act, ins), key_material(act, ins)
    saved = action_mod.ENGINE_FORMAT
    try:
        new_act, new_ins, reason = _mutate(
            data, act, ins, field, lambda: setattr(action_mod, "ENGINE_FORMAT", saved + 1))
        after_key, after = compute_key(new_act, new_ins), key_material(new_act, new_ins)
    finally:
        action_mod.ENGINE_FORMAT = saved
    assert after_key != before_key
    assert any(r == reason or r.startswith(reason + " (") for r in material_changes(before, after))


@given(act=actions, ins=inputs)
def test_the_same_material_gives_the_same_key_and_no_reason(act, ins):
    again = copy.deepcopy(act)
    assert compute_key(act, ins) == compute_key(again, list(reversed(ins)))
    assert material_changes(key_material(act, ins), key_material(again, ins)) == []
