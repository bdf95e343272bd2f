"""What every action of one build shares: the workspace paths, the run, the caches.

``BuildEnv`` is plain data (doit's process runner pickles it with each task); the digest
cache and the remote cache client are per process, looked up from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occlum_rules.core.digests import DigestCache

if TYPE_CHECKING:
    from occlum_rules.core.reapi_cache import ReapiCache
    from occlum_rules.core.remote_cache import RemoteCache
    from occlum_rules.core.remote_exec import RemoteExecutor

_DIGESTS: dict[str, DigestCache] = {}
_REMOTES: dict[str, RemoteCache | ReapiCache | None] = {}
_EXECUTORS: dict[str, RemoteExecutor | None] = {}


@dataclass
class BuildEnv:
    """What every action of one build shares; plain data so it pickles."""

    root: str
    out: str
    state_dir: str
    cache_dir: str
    run_id: str
    source_date_epoch: int
    remote_url: str | None = None
    remote_upload: bool | None = None
    remote_instance: str | None = None
    exec_url: str | None = None
    exec_instance: str | None = None
    path_env: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def digest_cache(env: BuildEnv) -> DigestCache:
    cache = _DIGESTS.get(env.state_dir)
    if cache is None:
        cache = _DIGESTS[env.state_dir] = DigestCache(
            Path(env.state_dir) / "digests.marshal",
            split_prefix=os.path.join(os.path.abspath(env.out), ""))
    return cache


def remote_for(env: BuildEnv) -> RemoteCache | ReapiCache | None:
    """The remote cache this build talks to (configured or from the environment), or None."""
    if env.state_dir not in _REMOTES:
        from occlum_rules.core.remote_cache import remote_from_config  # only builds that run

        _REMOTES[env.state_dir] = remote_from_config(env.remote_url, env.remote_upload,
                                                     instance_name=env.remote_instance)
    return _REMOTES[env.state_dir]


def executor_for(env: BuildEnv) -> RemoteExecutor | None:
    """The remote execution service this build sends actions to, or None."""
    if env.state_dir not in _EXECUTORS:
        from occlum_rules.core.remote_exec import executor_from_config  # only builds that run

        _EXECUTORS[env.state_dir] = executor_from_config(env.exec_url, env.exec_instance)
    return _EXECUTORS[env.state_dir]


def abs_path(env: BuildEnv, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(env.root, path)
