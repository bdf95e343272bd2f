"""Config profiles: the ways gen_internal_conf's output differs between Occlum releases.

The LibOS reads ``.Occlum_sys.json`` and the signer reads ``Enclave.xml``, and both files
changed shape between releases: Occlum 0.29 has no EDMM, no ``feature`` section and keeps
only the root and one hostfs mount; 0.30 adds EDMM and ``feature`` but neither io_uring nor
the mount size checks; 0.31 is what the rest of this package describes. A build for an
installed Occlum must write what *that* release's tool writes, so the generator takes one
of these profiles. Each one names the release its behaviour was checked against (golden
outputs of the real tool built from that tag).

Within a minor series the tool did not stand still either (see ``Occlum.git``'s
``tools/gen_internal_conf/src/main.rs``): 0.29.0-0.29.5 had another command line
(``gen_user_conf``/``gen_sys_conf``, no init-FS stage in the output), 0.29.7 took 0.30's
mount handling, and 0.30.0 printed no EDMM line and had no ``feature`` section. Those
releases are refused with a message rather than given a profile whose bytes would be
wrong for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from occlum_rules.errors import UserError


@dataclass(frozen=True)
class ConfigProfile:
    """Everything in which the gen_internal_conf builds we reproduce differ."""

    name: str  # "v0.29", "v0.30", "v0.31"
    reference: str  # the release whose tool's output this profile reproduces byte for byte
    edmm: bool  # EDMM layouts exist (INSTANCE_IS_FOR_EDMM_PLATFORM, feature.enable_edmm)
    thread_and_space_limits: bool  # init_num_of_threads, user_space_max_size and their checks
    tcs_policy: int  # Enclave.xml TCSPolicy
    amx_element: bool  # Enclave.xml has <AMX>
    pkru_in_metadata: bool  # PKRU comes from metadata.pkru (else feature.pkru)
    feature_keys: tuple[str, ...] | None  # the feature section's keys; None: no section
    disable_log: bool  # metadata.disable_log exists and .Occlum_sys.json has disable_log
    mount_option_keys: tuple[str, ...]  # mount option keys the tool knows
    mount_size_checks: bool  # cache_size / disk_size are validated
    app_mounts: str  # "append": /proc, /dev, every user mount; "slots": root, host, /proc, /dev

    @property
    def label(self) -> str:
        """How messages name the tool this profile stands for."""
        return f"Occlum {self.name[1:]}"


_ALL_FEATURES = ("amx", "pkru", "io_uring", "enable_edmm", "enable_posix_shm")
_ALL_MOUNT_OPTIONS = ("MAC", "layers", "temporary", "cache_size", "disk_size")

NEWEST = ConfigProfile(
    name="v0.31", reference="0.31.0 (690d5dbf)", edmm=True, thread_and_space_limits=True,
    tcs_policy=0, amx_element=True, pkru_in_metadata=False, feature_keys=_ALL_FEATURES,
    disable_log=True, mount_option_keys=_ALL_MOUNT_OPTIONS, mount_size_checks=True,
    app_mounts="append",
)
V0_30 = ConfigProfile(
    name="v0.30", reference="0.30.1", edmm=True, thread_and_space_limits=True, tcs_policy=1,
    amx_element=True, pkru_in_metadata=False,
    feature_keys=tuple(k for k in _ALL_FEATURES if k != "io_uring"), disable_log=True,
    mount_option_keys=_ALL_MOUNT_OPTIONS[:4], mount_size_checks=False, app_mounts="append",
)
V0_29 = ConfigProfile(
    name="v0.29", reference="0.29.6", edmm=False, thread_and_space_limits=False, tcs_policy=1,
    amx_element=False, pkru_in_metadata=True, feature_keys=None, disable_log=False,
    mount_option_keys=_ALL_MOUNT_OPTIONS[:4], mount_size_checks=False, app_mounts="slots",
)
PROFILES: dict[str, ConfigProfile] = {p.name: p for p in (V0_29, V0_30, NEWEST)}

SUPPORTED = "0.29.6, 0.30.1 and later 0.30.x, 0.31.0 and later 0.x"
# Releases inside a supported series whose tool differs from the profile's reference.
_DIFFERENT_TOOL = {
    (0, 29): (range(0, 6), "its gen_internal_conf has another command line (gen_user_conf / "
                           "gen_sys_conf) and output layout"),
}
_DIFFERENT_PATCH = {
    (0, 29, 7): "its gen_internal_conf already has 0.30's mount handling on top of 0.29's "
                "layout, which no profile reproduces",
    (0, 30, 0): "its gen_internal_conf has no feature section, no disable_log and no EDMM "
                "line, unlike 0.30.1",
}
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def profile_for_version(version: str | None, where: str = "Occlum version") -> ConfigProfile:
    """The profile for an Occlum version string "X.Y.Z" (None: no install, the newest).

    ``where`` names where the version came from (a flag, a version header) for the error.
    """
    if version is None:
        return NEWEST

    def unsupported(why: str) -> UserError:
        return UserError(f"Occlum {version!r} is not supported for config generation: {why}; "
                         f"supported: {SUPPORTED}", where)

    match = _VERSION.fullmatch(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise unsupported('not a version of the form "X.Y.Z"')
    major, minor, patch = (int(g) for g in match.groups())
    if major != 0:
        raise unsupported("no Occlum release after the 0.x series is known")
    if minor < 29:
        raise unsupported("releases before 0.29.6 are too old")
    if (major, minor, patch) in _DIFFERENT_PATCH:
        raise unsupported(_DIFFERENT_PATCH[(major, minor, patch)])
    older = _DIFFERENT_TOOL.get((major, minor))
    if older is not None and patch in older[0]:
        raise unsupported(older[1])
    if minor == 29:
        return V0_29
    if minor == 30:
        return V0_30
    return NEWEST


def profile_by_name(name: str) -> ConfigProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown config profile {name!r}; known: {', '.join(PROFILES)}") from None
