"""Platform properties: a worker offering the same toolchains matches; another does not."""

from __future__ import annotations

from occlum_rules.core import reapi_platform as rp


def _matches(wanted: list[tuple[str, str]], offered: list[tuple[str, str]]) -> bool:
    return set(wanted) <= set(offered)


def test_an_action_matches_a_worker_with_its_toolchains_and_no_other() -> None:
    gcc = "cc:gcc:/usr/bin/gcc:" + "a" * 64 + ":"
    clang = "cc:clang:/usr/bin/clang:" + "b" * 64 + ":"
    wanted = rp.action_properties([gcc])
    assert _matches(wanted, rp.worker_properties([gcc, clang]))
    assert not _matches(wanted, rp.worker_properties([clang]))
    assert not _matches(rp.action_properties([gcc.replace("a" * 64, "c" * 64)]),
                        rp.worker_properties([gcc]))


def test_properties_are_sorted_and_name_the_host() -> None:
    props = rp.action_properties(["z", "a", "a"])
    assert props == sorted(props)
    names = [name for name, _ in props]
    assert names.count(rp.TOOLCHAIN) == 2
    assert {rp.OS_FAMILY, rp.ISA, rp.ENGINE} <= set(names)
    assert dict(rp.host_properties())[rp.ENGINE].endswith(f"format-{rp.ENGINE_FORMAT}")
