"""Which parts of Occlum.json matter to which build action.

The build keys each action on its inputs. Only the *config* action (Enclave.xml +
.Occlum_sys.json) reads Occlum.json, and it reads only what gen_internal_conf's typed
schema holds: unknown keys, mount keys other than type/target/source/options, option
keys other than MAC/layers/temporary/cache_size/disk_size, and formatting are all
dropped. Keying the config action on :func:`config_relevant_json` instead of the raw
bytes means a reformatted Occlum.json, or a new comment-like unknown key, does not rerun
it -- its outputs would be byte-identical anyway.

The SEFS packing actions (root image, init image) do not read Occlum.json at all: the
image MACs flow *into* the config action, not the other way round. So the SEFS part of
:class:`ActionInputs` is always empty; it exists to make that fact explicit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from occlum_rules.stages.config.mounts import mount_value
from occlum_rules.stages.config.pipeline import as_tree, ms_buffer_for
from occlum_rules.stages.config.schema import OcclumConfig, read_config


@dataclass(frozen=True)
class ActionInputs:
    config: dict[str, Any]  # everything the config action depends on, canonical
    sefs: dict[str, Any] = field(default_factory=dict)  # always empty, see module doc
    ignored: tuple[str, ...] = ()  # warnings about keys Occlum drops

    def config_key_bytes(self) -> bytes:
        """Stable bytes to hash into the config action's key."""
        return json.dumps(
            self.config, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()


def _relevant(config: OcclumConfig, ms_buffer: bool) -> dict[str, Any]:
    rl = {k: v for k, v in asdict(config.resource_limits).items() if v is not None}
    if not ms_buffer:
        rl.pop("marshal_buffer_size", None)
    return {
        "resource_limits": rl,
        "process": asdict(config.process),
        "entry_points": config.entry_points,
        "env": config.env,
        "metadata": asdict(config.metadata),
        "feature": asdict(config.feature),
        "mount": [mount_value(m) for m in config.mount],
    }


def split_action_inputs(
    occlum_json: bytes | str | dict, *, sgx_mode: str = "HW", source: str = "Occlum.json"
) -> ActionInputs:
    """The Occlum.json parts that feed the config action vs. the SEFS packs (none)."""
    ms_buffer = ms_buffer_for(sgx_mode)
    tree = as_tree(occlum_json, source)
    config, warnings = read_config(tree, source=source, ms_buffer=ms_buffer)
    return ActionInputs(config=_relevant(config, ms_buffer), ignored=tuple(warnings))


def config_relevant_json(occlum_json: bytes | str | dict, *, sgx_mode: str = "HW") -> bytes:
    """Canonical bytes of the config-relevant part of Occlum.json (for action keys)."""
    return split_action_inputs(occlum_json, sgx_mode=sgx_mode).config_key_bytes()
