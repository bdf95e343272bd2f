"""Picking the config profile from an Occlum version, and what only some profiles do."""

from __future__ import annotations

import json

import pytest

from occlum_rules.cli import main as cli_main
from occlum_rules.errors import UserError
from occlum_rules.stages.config import default_occlum_json, generate_config
from occlum_rules.stages.config.profiles import (
    NEWEST,
    V0_29,
    V0_29_7,
    V0_30,
    V0_30_0,
    profile_by_name,
    profile_for_version,
)


@pytest.mark.parametrize(
    ("version", "profile"),
    [
        (None, NEWEST),
        ("0.29.6", V0_29),
        ("0.29.7", V0_29_7),
        ("0.29.8", V0_29_7),  # not released: the newest profile at or below it
        ("0.30.0", V0_30_0),
        ("0.30.1", V0_30),
        ("0.30.2", V0_30),
        ("0.31.0", NEWEST),
        ("0.31.7", NEWEST),
        ("0.32.0", NEWEST),
        (" 0.31.0\n", NEWEST),
    ],
)
def test_version_picks_profile(version, profile):
    assert profile_for_version(version) is profile


def test_every_release_tag_from_0_29_0_maps_or_is_refused():
    # The tags of occlum/occlum from v0.29.0 to the newest (v0.31.0); each one is either a
    # profile whose name is the first release with its behaviour, or refused.
    refused = [f"0.29.{p}" for p in range(6)]
    mapped = {"0.29.6": "v0.29.6", "0.29.7": "v0.29.7", "0.30.0": "v0.30.0",
              "0.30.1": "v0.30.1", "0.31.0": "v0.31.0"}
    for version in refused:
        with pytest.raises(UserError, match="gen_user_conf"):
            profile_for_version(version)
    for version, name in mapped.items():
        assert profile_for_version(version).name == name
        assert profile_by_name(name) is profile_for_version(version)


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("0.28.1", "too old"),
        ("0.2", "X.Y.Z"),
        ("garbage", "X.Y.Z"),
        ("", "X.Y.Z"),
        ("1.0.0-garbage", "X.Y.Z"),
        ("1.0.0", "after the 0.x series"),
        # inside 0.29, but built another way (two config files, see profiles.py)
        ("0.29.0", "gen_user_conf"),
        ("0.29.5", "gen_user_conf"),
    ],
)
def test_unsupported_version_is_one_clear_error(version, why):
    with pytest.raises(UserError) as info:
        profile_for_version(version, "include/occlum_version.h")
    text = str(info.value)
    assert text.startswith("include/occlum_version.h: ")
    assert repr(version) in text and why in text
    assert "supported: 0.29.6 and later 0.x releases" in text
    assert "\n" not in text


def test_profile_by_name():
    assert profile_by_name("v0.30.1") is V0_30
    with pytest.raises(UserError, match="known: v0.29.6, v0.29.7, v0.30.0, v0.30.1, v0.31.0"):
        profile_by_name("v0.1")


def _template(**changes) -> dict:
    tree = default_occlum_json()
    tree.update(changes)
    return tree


def test_0_29_keeps_root_and_first_hostfs_and_says_what_it_drops():
    tree = _template()
    root = next(m for m in tree["mount"] if m["target"] == "/")
    tree["mount"] = [
        root,
        {"target": "/tmp", "type": "sefs", "source": "./run/tmp", "options": {"temporary": True}},
        {"target": "/data", "type": "hostfs", "source": "/srv/data"},
        {"target": "/more", "type": "hostfs", "source": "/srv/more"},
    ]
    out = generate_config(tree, "U", "I", edmm=False, profile=V0_29)
    app = json.loads(out.sys_json)["app"][1]["mount"]
    assert [m["target"] for m in app] == ["/", "/data", "/proc", "/dev"]
    layers = app[0]["options"]["layers"]
    assert layers[0]["options"]["MAC"] == "U"
    dropped = [w for w in out.warnings if "dropped" in w]
    assert any("/tmp" in w for w in dropped) and any("/more" in w for w in dropped)
    assert not any('"/data"' in w for w in dropped)
    # the newest tool keeps every mount
    newest = generate_config(tree, "U", "I", edmm=False)
    targets = [m["target"] for m in json.loads(newest.sys_json)["app"][1]["mount"]]
    assert targets[2:] == [m["target"] for m in tree["mount"]]


def test_0_29_root_whose_first_layer_has_no_mac_is_an_error():
    # 0.29.6 writes the image MAC into layers[0] and panics when that layer has no MAC.
    tree = _template()
    layers = tree["mount"][0]["options"]["layers"]
    layers.reverse()
    with pytest.raises(UserError) as info:
        generate_config(tree, "U", "I", edmm=False, profile=V0_29)
    assert "mount[0].options.layers[0]" in str(info.value) and "MAC" in str(info.value)
    generate_config(tree, "U", "I", edmm=False, profile=V0_30)  # later releases search for it


def test_feature_keys_follow_the_profile():
    tree = _template()
    for profile, keys in ((NEWEST, ["amx", "pkru", "io_uring", "enable_edmm", "enable_posix_shm"]),
                          (V0_30, ["amx", "pkru", "enable_edmm", "enable_posix_shm"])):
        sys_json = json.loads(generate_config(tree, "U", "I", edmm=False, profile=profile).sys_json)
        assert list(sys_json["feature"]) == keys
    out = generate_config(tree, "U", "I", edmm=False, profile=V0_29)
    assert list(json.loads(out.sys_json)) == ["resource_limits", "process", "env", "app"]
    assert any("feature: unknown key, ignored by Occlum 0.29.6" in w for w in out.warnings)


def test_bad_occlum_version_flag_is_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Occlum.json").write_text(json.dumps(default_occlum_json()))
    code = cli_main(["gen-conf", "--occlum-version", "0.28.0", "--user_json", "Occlum.json",
                     "gen_conf", "--user_fs_mac", "u", "--init_fs_mac", "i",
                     "--sdk_xml", "E.xml", "--output_json", "s.json"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: --occlum-version: ") and "Traceback" not in err
    assert not (tmp_path / "E.xml").exists()
