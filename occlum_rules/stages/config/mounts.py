"""Mount checks and the two-stage ``app`` array of .Occlum_sys.json.

Occlum checks only the *top-level* mounts (layers inside a unionfs are not checked) for
cache_size and disk_size, then rebuilds every mount from its typed form: unknown keys
vanish, default options vanish, ``temporary: false`` vanishes. The root unionfs must
exist and carry an image SEFS layer whose MAC is replaced by the root image's MAC; the
init stage is fixed apart from the init image's MAC.

Occlum 0.29.6 (profile ``app_mounts="slots"``) builds the app stage differently: four fixed
slots (root, host, /proc, /dev), the user's root unionfs and first hostfs mount replacing
the built-in ones, and every other user mount dropped (:func:`slot_app_mounts`).
"""

from __future__ import annotations

from typing import Any

from occlum_rules.errors import UserError
from occlum_rules.stages.config.profiles import NEWEST, ConfigProfile
from occlum_rules.stages.config.resources import size_field
from occlum_rules.stages.config.schema import Mount, OcclumConfig, json_quote

CACHE_PAGE_SIZE = 0x1000
MIN_CACHE_SIZE = 48 * CACHE_PAGE_SIZE
MIN_DISK_SIZE = 5 << 30

INIT_ROOT_SOURCE = "./build/initfs/__ROOT"
INIT_RUN_SOURCE = "./run/initfs/__ROOT"
APP_ROOT_SOURCE = "./build/mount/__ROOT"
APP_RUN_SOURCE = "./run/mount/__ROOT"
PROC_MOUNT = {"target": "/proc", "type": "procfs"}
DEV_MOUNT = {"target": "/dev", "type": "devfs"}
BUILTIN_HOST_MOUNT = {"source": ".", "target": "/host", "type": "hostfs"}


def _union_root(image_source: str, run_source: str, mac: str) -> dict[str, Any]:
    """A unionfs root: the image SEFS (with its MAC) over the run-time SEFS."""
    return {
        "target": "/",
        "type": "unionfs",
        "options": {
            "layers": [
                {"target": "/", "type": "sefs", "source": image_source, "options": {"MAC": mac}},
                {"target": "/", "type": "sefs", "source": run_source},
            ]
        },
    }


def check_mount_sizes(config: OcclumConfig, heap_max: int, source: str = "Occlum.json") -> None:
    """cache_size / disk_size rules, in Occlum's order, for the top-level mounts."""
    for mount in config.mount:
        opts = mount.options
        if opts.cache_size is not None:
            path = f"{mount.path}.options.cache_size"
            size = size_field(opts.cache_size, path, source)
            if size < MIN_CACHE_SIZE or size % CACHE_PAGE_SIZE or size > heap_max:
                raise UserError(
                    f"{json_quote(opts.cache_size)} ({size} bytes) is not allowed; the cache size "
                    f"must be at least {MIN_CACHE_SIZE} bytes, a multiple of {CACHE_PAGE_SIZE} and "
                    f"at most the kernel heap maximum ({heap_max} bytes)",
                    f"{source}: {path}",
                )
        if mount.type == "ext2" and opts.disk_size is None:
            raise UserError(
                'is missing; an "ext2" mount needs options.disk_size (at least "5GB")',
                f"{source}: {mount.path}.options.disk_size",
            )
        if opts.disk_size is not None:
            path = f"{mount.path}.options.disk_size"
            size = size_field(opts.disk_size, path, source)
            if size < MIN_DISK_SIZE:
                raise UserError(
                    f"{json_quote(opts.disk_size)} ({size} bytes) is too small; the minimum is "
                    f'"5GB" ({MIN_DISK_SIZE} bytes)',
                    f"{source}: {path}",
                )


def mount_value(mount: Mount, mac_override: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON object Occlum writes for a mount (serde's skip rules applied).

    ``mac_override`` maps the JSON path of a mount to the MAC that replaces its own.
    """
    value: dict[str, Any] = {"type": mount.type, "target": mount.target}
    if mount.source is not None:
        value["source"] = mount.source
    opts = mount.options
    if not opts.is_default():
        options: dict[str, Any] = {}
        mac = (mac_override or {}).get(mount.path, opts.mac)
        if mac is not None:
            options["MAC"] = mac
        if opts.layers is not None:
            options["layers"] = [mount_value(layer, mac_override) for layer in opts.layers]
        if opts.temporary:
            options["temporary"] = True
        if opts.cache_size is not None:
            options["cache_size"] = opts.cache_size
        if opts.disk_size is not None:
            options["disk_size"] = opts.disk_size
        value["options"] = options
    return value


def _root_image_layer(config: OcclumConfig, source: str) -> Mount:
    root = next((m for m in config.mount if m.target == "/" and m.type == "unionfs"), None)
    if root is None:
        raise UserError(
            'has no root mount; one entry must be {"target": "/", "type": "unionfs"} with the '
            "image SEFS as a layer",
            f"{source}: mount",
        )
    if root.options.layers is None:
        raise UserError(
            'is missing; the root unionfs needs layers (the image SEFS with a "MAC" option, '
            "then the run-time SEFS)",
            f"{source}: {root.path}.options.layers",
        )
    layer = next(
        (
            m
            for m in root.options.layers
            if m.target == "/" and m.type == "sefs" and m.options.mac is not None
        ),
        None,
    )
    if layer is None:
        raise UserError(
            'has no image layer; one layer must be {"target": "/", "type": "sefs"} with an '
            '"options": {"MAC": ""} entry (the MAC is filled in at build time)',
            f"{source}: {root.path}.options.layers",
        )
    return layer


def check_root_mount(config: OcclumConfig, source: str = "Occlum.json") -> None:
    """The root unionfs checks on their own (for ``config check`` without MACs)."""
    _root_image_layer(config, source)


def slot_app_mounts(
    config: OcclumConfig, user_fs_mac: str, source: str, label: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Occlum 0.29.6's app-stage mounts (root, host, /proc, /dev) and warnings for the rest.

    The user's first ``/`` unionfs replaces the built-in root; it must have layers and an
    image SEFS layer (as in later releases), and the tool then writes the image MAC into
    ``layers[0]``, so that first layer must carry a ``MAC`` option (0.29 panics otherwise).
    Without such a mount the built-in root is used. The first hostfs mount, whatever its
    target, replaces the built-in ``/host``.
    """
    root = next((m for m in config.mount if m.target == "/" and m.type == "unionfs"), None)
    if root is None:
        root_value = _union_root(APP_ROOT_SOURCE, APP_RUN_SOURCE, user_fs_mac)
    else:
        _root_image_layer(config, source)  # so the root has layers
        assert root.options.layers is not None
        first = root.options.layers[0]
        if first.options.mac is None:
            raise UserError(
                f'has no "MAC" option; {label} writes the image MAC into the first layer of the '
                'root unionfs, so the image SEFS (with "options": {"MAC": ""}) must come first',
                f"{source}: {first.path}",
            )
        root_value = mount_value(root, {first.path: user_fs_mac})
    host = next((m for m in config.mount if m.type == "hostfs"), None)
    host_value = BUILTIN_HOST_MOUNT if host is None else mount_value(host)
    warnings = [
        f"{source}: {m.path}: dropped: {label} keeps only the root unionfs and the first "
        f"hostfs mount ({json_quote(m.target)}, {json_quote(m.type)} is neither)"
        for m in config.mount
        if m is not root and m is not host
    ]
    return [root_value, host_value, PROC_MOUNT, DEV_MOUNT], warnings


def app_stages(
    config: OcclumConfig,
    user_fs_mac: str,
    init_fs_mac: str,
    source: str = "Occlum.json",
    profile: ConfigProfile = NEWEST,
    warnings: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The ``app`` array: the fixed init stage, then the user's app stage.

    Mounts the profile's tool drops are reported by appending to ``warnings``.
    """
    init_stage = {
        "stage": "init",
        "entry_points": ["/bin"],
        "mount": [
            _union_root(INIT_ROOT_SOURCE, INIT_RUN_SOURCE, init_fs_mac),
            PROC_MOUNT,
            DEV_MOUNT,
        ],
    }
    if profile.app_mounts == "slots":
        mounts, dropped = slot_app_mounts(config, user_fs_mac, source, profile.label)
        if warnings is not None:
            warnings.extend(dropped)
    else:
        image_layer = _root_image_layer(config, source)
        overrides = {image_layer.path: user_fs_mac}
        mounts = [PROC_MOUNT, DEV_MOUNT, *(mount_value(m, overrides) for m in config.mount)]
    app_stage = {"stage": "app", "entry_points": config.entry_points, "mount": mounts}
    return [init_stage, app_stage]
