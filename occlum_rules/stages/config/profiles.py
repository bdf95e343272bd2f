"""Config profiles: the ways gen_internal_conf's output differs between Occlum releases.

The LibOS reads ``.Occlum_sys.json`` and the signer reads ``Enclave.xml``, and both files
changed shape between releases. A build for an installed Occlum must write what *that*
release's tool writes, so the generator takes one of these profiles, picked from the
install's version header (:func:`profile_for_version`); without an install, the newest.

What changed, per release, in Occlum's ``tools/gen_internal_conf/src/main.rs`` (read from
the release tags; 0.29.6 and 0.30.1 are also checked byte for byte against golden outputs
of the tool built from the tag, 0.31 against commit 690d5dbf, which has 0.31.0's tool):

========  =================================================================================
0.29.0-5  Another build pipeline: two sub-commands (``gen_user_conf`` writes Enclave.xml and
          a user Occlum.json that ``occlum_build.mk`` protects and whose MAC goes into the
          initfs' ``image_config.json``; ``gen_sys_conf`` writes the initfs config). Not a
          config format this project can produce: refused. (0.29.4 added TCSMaxNum /
          TCSMinPool / HeapInitSize and kernel_space_heap_max_size; 0.29.5 added the
          ``cache_size`` mount option and the heap maximum max(heap, 1GB).)
0.29.6    One ``gen_conf`` sub-command and one ``.Occlum_sys.json`` with an init and an app
          stage. No EDMM; PKRU in ``metadata``; no ``feature`` or ``disable_log``; the app
          stage has four slots (root, first hostfs, /proc, /dev) and drops other mounts.
0.29.7    As 0.29.6, but the app stage is /proc, /dev and *every* user mount, and the root
          unionfs is required (``gen_app_config``): the later releases' mount handling.
0.30.0    EDMM and non-EDMM layouts chosen by INSTANCE_IS_FOR_EDMM_PLATFORM only,
          ``init_num_of_threads`` / ``user_space_max_size`` and their checks, UserRegionSize
          and <AMX> in Enclave.xml, the byte sizes in ``resource_limits``. PKRU and AMX are
          read from ``metadata``; still no ``feature`` section, no ``disable_log``, and the
          "Build on platform" line goes to the debug log, not stdout.
0.30.1    ``feature`` section (amx, pkru, enable_edmm, enable_posix_shm), read from and
          written to it; ``feature.enable_edmm`` forces EDMM; ``disable_log``; the
          "Build on platform" line on stdout.
0.31.0    ``feature.io_uring``; the ``disk_size`` mount option; cache_size / disk_size
          checks; TCSPolicy 0 instead of 1.
========  =================================================================================

``etc/template/Occlum.json`` follows the same steps (0.29.6 drops the /proc and /dev
mounts, 0.30.0 adds ``metadata.amx``, 0.30.1 moves pkru/amx into ``feature``, 0.31.0 adds
``feature.io_uring``); builds with an install use the install's own template.
``tools/occlum``'s default initfs (``gen_initfs``) is the same from 0.29.0 to 0.31.0;
``occlum init`` made image/sbin and image/ext2 only from 0.31.0 (followed in
occlum_rules/stages/instance_layout.py). ``--init-ra`` exists from 0.29.6; its aecs
library list changed in 0.30.0 (OS lib dir, libprotobuf) and 0.31.0 (OS libssl/libcrypto
only when aecs_client lacks them): only the 0.31.0 list is reproduced.

A release maps to the profile of the newest release listed here that is not newer than
it (0.30.2 would be treated as 0.30.1, 0.32.0 as 0.31). Releases before 0.29.6 and any
1.x or later are refused with one line naming the supported range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from occlum_rules.errors import UserError


@dataclass(frozen=True)
class ConfigProfile:
    """Everything in which the gen_internal_conf builds we reproduce differ."""

    name: str  # the first release with this behaviour, "v0.29.6" ... "v0.31.0"
    reference: str  # what this profile was checked against (golden outputs or the source)
    edmm: bool  # EDMM layouts exist (INSTANCE_IS_FOR_EDMM_PLATFORM, UserRegionSize)
    edmm_line: bool  # "Build on platform WITH|WITHOUT EDMM support" printed on stdout
    thread_and_space_limits: bool  # init_num_of_threads, user_space_max_size and their checks
    tcs_policy: int  # Enclave.xml TCSPolicy
    amx_element: bool  # Enclave.xml has <AMX>
    metadata_cpu_keys: tuple[str, ...]  # pkru / amx read from metadata (else from feature)
    feature_keys: tuple[str, ...] | None  # the feature section's keys; None: no section
    disable_log: bool  # metadata.disable_log exists and .Occlum_sys.json has disable_log
    mount_option_keys: tuple[str, ...]  # mount option keys the tool knows
    mount_size_checks: bool  # cache_size / disk_size are validated
    app_mounts: str  # "append": /proc, /dev, every user mount; "slots": root, host, /proc, /dev

    @property
    def label(self) -> str:
        """How messages name the tool this profile stands for."""
        return f"Occlum {self.name[1:]}"

    @property
    def pkru_in_metadata(self) -> bool:
        return "pkru" in self.metadata_cpu_keys

    @property
    def amx_in_metadata(self) -> bool:
        return "amx" in self.metadata_cpu_keys


_ALL_FEATURES = ("amx", "pkru", "io_uring", "enable_edmm", "enable_posix_shm")
_ALL_MOUNT_OPTIONS = ("MAC", "layers", "temporary", "cache_size", "disk_size")

NEWEST = ConfigProfile(
    name="v0.31.0", reference="golden outputs of 690d5dbf (0.31.0's tool)", edmm=True,
    edmm_line=True, thread_and_space_limits=True, tcs_policy=0, amx_element=True,
    metadata_cpu_keys=(), feature_keys=_ALL_FEATURES, disable_log=True,
    mount_option_keys=_ALL_MOUNT_OPTIONS, mount_size_checks=True, app_mounts="append",
)
V0_30 = ConfigProfile(
    name="v0.30.1", reference="golden outputs of v0.30.1", edmm=True, edmm_line=True,
    thread_and_space_limits=True, tcs_policy=1, amx_element=True, metadata_cpu_keys=(),
    feature_keys=tuple(k for k in _ALL_FEATURES if k != "io_uring"), disable_log=True,
    mount_option_keys=_ALL_MOUNT_OPTIONS[:4], mount_size_checks=False, app_mounts="append",
)
V0_30_0 = ConfigProfile(
    name="v0.30.0", reference="the v0.30.0..v0.30.1 main.rs diff; no golden outputs",
    edmm=True, edmm_line=False, thread_and_space_limits=True, tcs_policy=1, amx_element=True,
    metadata_cpu_keys=("pkru", "amx"), feature_keys=None, disable_log=False,
    mount_option_keys=_ALL_MOUNT_OPTIONS[:4], mount_size_checks=False, app_mounts="append",
)
V0_29_7 = ConfigProfile(
    name="v0.29.7", reference="the v0.29.6..v0.29.7 main.rs diff; no golden outputs",
    edmm=False, edmm_line=False, thread_and_space_limits=False, tcs_policy=1,
    amx_element=False, metadata_cpu_keys=("pkru",), feature_keys=None, disable_log=False,
    mount_option_keys=_ALL_MOUNT_OPTIONS[:4], mount_size_checks=False, app_mounts="append",
)
V0_29 = ConfigProfile(
    name="v0.29.6", reference="golden outputs of v0.29.6", edmm=False, edmm_line=False,
    thread_and_space_limits=False, tcs_policy=1, amx_element=False, metadata_cpu_keys=("pkru",),
    feature_keys=None, disable_log=False, mount_option_keys=_ALL_MOUNT_OPTIONS[:4],
    mount_size_checks=False, app_mounts="slots",
)
# Oldest first: a release gets the last profile whose first release is not newer than it.
_BY_FIRST_RELEASE: tuple[tuple[tuple[int, int, int], ConfigProfile], ...] = (
    ((0, 29, 6), V0_29),
    ((0, 29, 7), V0_29_7),
    ((0, 30, 0), V0_30_0),
    ((0, 30, 1), V0_30),
    ((0, 31, 0), NEWEST),
)
PROFILES: dict[str, ConfigProfile] = {p.name: p for _, p in _BY_FIRST_RELEASE}

SUPPORTED = "0.29.6 and later 0.x releases"
_OLDEST = _BY_FIRST_RELEASE[0][0]
_BEFORE_0_29_6 = ("its build differs, not only its config format: gen_internal_conf has two "
                  "sub-commands (gen_user_conf, gen_sys_conf) and the user config is protected "
                  "into the initfs")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_version(version: str, where: str = "Occlum version") -> tuple[int, int, int]:
    """"X.Y.Z" as numbers, or one UserError saying what was expected."""
    match = _VERSION.fullmatch(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise unsupported(version, 'not a version of the form "X.Y.Z"', where)
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def unsupported(version: object, why: str, where: str) -> UserError:
    return UserError(f"Occlum {version!r} is not supported: {why}; supported: {SUPPORTED}", where)


def check_supported(version: str, where: str = "Occlum version") -> tuple[int, int, int]:
    """The parsed version of a release this project can build for, else one UserError."""
    release = parse_version(version, where)
    if release[0] != 0:
        raise unsupported(version, "no Occlum release after the 0.x series is known", where)
    if release < (0, 29, 0):
        raise unsupported(version, "releases before 0.29.6 are too old", where)
    if release < _OLDEST:
        raise unsupported(version, _BEFORE_0_29_6, where)
    return release


def profile_for_version(version: str | None, where: str = "Occlum version") -> ConfigProfile:
    """The profile for an Occlum version string "X.Y.Z" (None: no install, the newest).

    ``where`` names where the version came from (a flag, a version header) for the error.
    """
    if version is None:
        return NEWEST
    release = check_supported(version, where)
    chosen = _BY_FIRST_RELEASE[0][1]
    for first, profile in _BY_FIRST_RELEASE:
        if release >= first:
            chosen = profile
    return chosen


def profile_by_name(name: str) -> ConfigProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown config profile {name!r}; known: {', '.join(PROFILES)}") from None
