"""Occlum 0.29.7 and 0.30.0: no golden outputs, but each is a small source diff away from one.

The expectations are built from the 0.29.6 and 0.30.1 golden outputs plus exactly what
``tools/gen_internal_conf/src/main.rs`` changed between the tags (see profiles.py):

- v0.29.6 -> v0.29.7 only rewrote ``gen_app_config``; the new one is byte for byte the
  one v0.30.0 and v0.30.1 use. So 0.29.7's Enclave.xml is 0.29.6's, and its
  .Occlum_sys.json is 0.29.6's with the app stage's mounts taken from 0.30.1's output
  (0.29.7 and 0.30.1 know the same mount options).
- v0.30.0 -> v0.30.1 added the ``feature`` section (read and written), ``disable_log``,
  ``feature.enable_edmm`` as an EDMM switch and the stdout line, and moved PKRU/AMX from
  ``metadata`` to ``feature``. So 0.30.0's output is 0.30.1's without ``disable_log`` and
  ``feature``, with PKRU/AMX from ``metadata`` (default 0), for the cases whose EDMM choice
  does not rest on ``feature.enable_edmm``.

.Occlum_sys.json is compared as a tree that keeps key order and the numbers' text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from occlum_rules.cli import main as cli_main
from occlum_rules.errors import UserError
from occlum_rules.stages.config import generate
from occlum_rules.stages.config.profiles import profile_for_version
from tests.conftest import VECTORS, vectors_path


def _cases(version: str) -> dict[str, dict]:
    path = VECTORS / f"config-v{version}" / "cases" / "index.json"
    return {c["name"]: c for c in json.loads(path.read_text())} if path.exists() else {}


V0_29_6, V0_30_1 = _cases("0.29.6"), _cases("0.30.1")


def _dir(version: str, name: str) -> Path:
    return vectors_path(f"config-v{version}", "cases", name)


def _tree(data: bytes | str):
    """JSON with key order and number spelling kept (lists of pairs, numbers as text)."""
    return json.loads(data, object_pairs_hook=list, parse_float=str, parse_int=str)


def _edmm_env(case: dict) -> bool:
    return case["INSTANCE_IS_FOR_EDMM_PLATFORM"] == "YES"


def _run(version: str, src: Path, case: dict) -> tuple[bytes, bytes]:
    return generate(
        (src / "Occlum.json").read_bytes(), (src / "user_fs_mac").read_text(),
        (src / "init_fs_mac").read_text(), edmm=_edmm_env(case),
        sgx_mode="HYPER" if case["build_features"] == "ms_buffer" else "HW",
        profile=profile_for_version(version),
    )  # fmt: skip


# ---------------------------------------------------------------------------- 0.29.7

BOTH_OK = sorted(n for n, c in V0_29_6.items()
                 if c["outcome"] == "ok" and V0_30_1.get(n, {}).get("outcome") == "ok")


def test_0_29_7_has_cases_to_compare():
    if not (VECTORS / "config-v0.29.6").exists():
        vectors_path("config-v0.29.6")  # skips with the reason
    assert len(BOTH_OK) >= 30


@pytest.mark.parametrize("name", BOTH_OK)
def test_0_29_7_is_0_29_6_with_the_later_app_mounts(name):
    old, new = _dir("0.29.6", name), _dir("0.30.1", name)
    enclave_xml, sys_json = _run("0.29.7", old, V0_29_6[name])
    assert enclave_xml == (old / "Enclave.xml").read_bytes()
    expected = _tree((old / ".Occlum_sys.json").read_bytes())
    later = dict(_tree((new / ".Occlum_sys.json").read_bytes()))
    app = dict(expected)["app"]
    later_app_mounts = dict(later["app"][1])["mount"]
    app[1] = [(k, later_app_mounts if k == "mount" else v) for k, v in app[1]]
    assert _tree(sys_json) == expected


def test_0_29_7_needs_the_root_unionfs_that_0_29_6_did_not():
    src = _dir("0.29.6", "mount_no_root_unionfs")
    case = V0_29_6["mount_no_root_unionfs"]
    _run("0.29.6", src, case)  # 0.29.6 falls back to its built-in root
    with pytest.raises(UserError, match=r"Occlum.json: mount: has no root mount"):
        _run("0.29.7", src, case)


# ---------------------------------------------------------------------------- 0.30.0


def _edmm_rests_on_feature(src: Path, case: dict) -> bool:
    feature = json.loads((src / "Occlum.json").read_text()).get("feature") or {}
    return feature.get("enable_edmm") is True and not _edmm_env(case)


OK_0_30_1 = sorted(n for n, c in V0_30_1.items() if c["outcome"] == "ok"
                   and c["INSTANCE_IS_FOR_EDMM_PLATFORM"] is not None
                   and not _edmm_rests_on_feature(_dir("0.30.1", n), c))


def test_0_30_0_has_cases_to_compare():
    if not (VECTORS / "config-v0.30.1").exists():
        vectors_path("config-v0.30.1")
    assert len(OK_0_30_1) >= 30
    # among them, ones where metadata and feature disagree on PKRU or AMX
    moved = [n for n in OK_0_30_1 if _metadata_cpu(_dir("0.30.1", n)) != _feature_cpu(n)]
    assert len(moved) >= 2, moved


def _metadata_cpu(src: Path) -> tuple[int, int]:
    meta = json.loads((src / "Occlum.json").read_text())["metadata"]
    return meta.get("pkru", 0), meta.get("amx", 0)


def _feature_cpu(name: str) -> tuple[int, int]:
    xml = (_dir("0.30.1", name) / "Enclave.xml").read_text()
    return tuple(int(re.search(f"<{t}>(\\d+)</{t}>", xml).group(1)) for t in ("PKRU", "AMX"))


@pytest.mark.parametrize("name", OK_0_30_1)
def test_0_30_0_is_0_30_1_without_feature_and_disable_log(name):
    src = _dir("0.30.1", name)
    enclave_xml, sys_json = _run("0.30.0", src, V0_30_1[name])
    pkru, amx = _metadata_cpu(src)
    expected_xml = (src / "Enclave.xml").read_text()
    expected_xml = re.sub(r"<PKRU>\d+</PKRU>", f"<PKRU>{pkru}</PKRU>", expected_xml)
    expected_xml = re.sub(r"<AMX>\d+</AMX>", f"<AMX>{amx}</AMX>", expected_xml)
    assert enclave_xml.decode() == expected_xml
    expected = [(k, v) for k, v in _tree((src / ".Occlum_sys.json").read_bytes())
                if k not in ("disable_log", "feature")]
    assert _tree(sys_json) == expected


def test_0_30_0_ignores_feature_enable_edmm_and_prints_no_platform_line(
    tmp_path, monkeypatch, capsys
):
    src = _dir("0.30.1", "template_edmm_feature")
    assert json.loads((src / "Occlum.json").read_text())["feature"]["enable_edmm"] is True
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Occlum.json").write_bytes((src / "Occlum.json").read_bytes())
    monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", "NO")
    argv = ["gen-conf", "--occlum-version", "0.30.0", "--user_json", "Occlum.json", "gen_conf",
            "--user_fs_mac", "u", "--init_fs_mac", "i", "--sdk_xml", "E.xml",
            "--output_json", "s.json"]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert "<UserRegionSize>" not in (tmp_path / "E.xml").read_text()  # non-EDMM layout
    assert "feature: unknown key, ignored by Occlum 0.30.0" in out.err
    argv[2] = "0.30.1"
    assert cli_main(argv) == 0
    assert capsys.readouterr().out == "Build on platform WITH EDMM support\n"
    assert "<UserRegionSize>" in (tmp_path / "E.xml").read_text()
