"""Check a built Occlum instance directory: the pieces that must agree with each other.

* each SEFS image (``build/mount``, ``build/initfs``) verifies against its ``.ROOT_MAC``;
* the LibOS's ``.builtin_config`` holds the MAC of ``.Occlum_sys.json.protected``;
* the signed enclave's identity matches ``build/measurements.json`` when it is there.

Every check runs even after an earlier one failed, so one call names every problem.
Results are returned, never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules.errors import UserError
from occlum_rules.stages.securefs import (
    load_image_key,
    mac_text,
    read_protected_mac,
    show_mac_line,
    verify_image,
)
from occlum_rules.stages.securefs.builtin_config import read_builtin_config
from occlum_rules.stages.sign import read_signed_info
from occlum_rules.stages.verify_package import SIGNED

IMAGES = (("image", "build/mount"), ("initfs", "build/initfs"))


@dataclass(frozen=True)
class ImageCheck:
    """One SEFS image: verified (with its entry count and root MAC), or skipped."""

    what: str  # "image" or "initfs"
    rel: str  # its directory inside the instance
    entries: int = 0
    root_mac: str = ""
    skipped: str = ""  # why it was not checked (an encrypted image without its key)


@dataclass
class InstanceCheck:
    """What :func:`verify_instance` found. No problems means the instance verified."""

    instance: Path
    images: list[ImageCheck] = field(default_factory=list)
    config_mac: str = ""  # set when .builtin_config holds the protected config's MAC
    identity: dict[str, Any] = field(default_factory=dict)  # of the signed enclave
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _message(exc: Exception) -> str:
    """The error without its location (the caller puts the image directory in front)."""
    return str(exc.message) if isinstance(exc, UserError) else str(exc)


def _is_encrypted(inst: Path) -> bool:
    config = inst / "build" / "image_config.json"
    if not config.is_file():
        return False
    return bool(json.loads(config.read_text()).get("image_type") == "encrypted")


def _check_images(inst: Path, image_key: Path | None, check: InstanceCheck) -> None:
    encrypted = _is_encrypted(inst)
    for what, rel in IMAGES:
        key = image_key if what == "image" and encrypted else None
        if what == "image" and encrypted and image_key is None:
            check.images.append(ImageCheck(what, rel, skipped="encrypted; pass --image-key "
                                                              "to verify it"))
            continue
        try:
            mac = (inst / rel / ".ROOT_MAC").read_text().strip()
            entries = verify_image(inst / rel / "__ROOT", load_image_key(key) if key else None,
                                   expected_mac=mac)
            check.images.append(ImageCheck(what, rel, len(entries), mac))
        except (UserError, OSError, ValueError) as exc:
            check.problems.append(f"{rel}: {_message(exc)}")


def _check_enclave(inst: Path, check: InstanceCheck) -> None:
    protected = inst / "build" / ".Occlum_sys.json.protected"
    signed = inst / SIGNED
    try:
        conf_mac = read_protected_mac(protected)
        line = show_mac_line(conf_mac).encode()
        if not read_builtin_config(signed).startswith(line.rstrip(b"\n")):
            check.problems.append(f"{SIGNED}: .builtin_config does not hold the protected "
                                  f"config's MAC {mac_text(conf_mac)}")
        else:
            check.config_mac = mac_text(conf_mac)
        check.identity = read_signed_info(signed)
        measurements = inst / "build" / "measurements.json"
        if measurements.is_file():
            recorded = json.loads(measurements.read_text())
            for key in ("mrenclave", "mrsigner"):
                if recorded.get(key) != check.identity[key]:
                    check.problems.append(
                        f"build/measurements.json: {key} {recorded.get(key)} differs from the "
                        f"signed enclave's {check.identity[key]}")
            if recorded.get("config_mac") not in (None, mac_text(conf_mac)):
                check.problems.append("build/measurements.json: config_mac differs from the "
                                      "protected config's MAC")
    except (UserError, OSError, ValueError) as exc:
        check.problems.append(str(exc))  # names the file the error is about


def verify_instance(inst: Path, image_key: Path | None = None) -> InstanceCheck:
    """Verify the instance at ``inst``; an encrypted image needs ``image_key``."""
    check = InstanceCheck(inst)
    _check_images(inst, image_key, check)
    _check_enclave(inst, check)
    return check
