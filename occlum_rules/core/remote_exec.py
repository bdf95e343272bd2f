"""Remote execution: send an eligible action to a REAPI Execution service and take back its
outputs as if the action had run here.

``execution.remote: grpc://host:port`` (and ``execution.instance_name``) in WORKSPACE.yaml, or
``OCCLUM_RULES_REMOTE_EXECUTION`` / ``OCCLUM_RULES_REMOTE_EXECUTION_INSTANCE`` in the
environment (which win; ``off`` switches it off), turn it on. The CAS, ByteStream and call
accounting are those of the gRPC cache client (``core/reapi_cache.py``): a failing server
costs a bounded delay, then one warning switches remote execution off for the rest of the
build and actions run here. ``doit -n N`` keeps N actions in flight (one per doit process).

Only actions :func:`reapi_action.remote_ineligible` lets go are sent; an action with a secret
is never uploaded. What comes back is data from outside: every output must be exactly the
action's declared outputs, every blob is verified by digest as it arrives, and inputs the
worker discovered must have the same content here, or the action runs here instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from occlum_rules.core import action_result as ar
from occlum_rules.core.action import Action
from occlum_rules.core.build_env import BuildEnv, digest_cache
from occlum_rules.core.cache_entry import manifest_problem
from occlum_rules.core.keys import dynamic_unchanged
from occlum_rules.core.reapi_action import (
    DISCOVERED_PATH,
    package_path,
    remote_action,
    remote_ineligible,
)
from occlum_rules.core.reapi_cache import ReapiCache, parse_target
from occlum_rules.core.remote_cache import configured_url, env_seconds
from occlum_rules.core.store import LocalStore, manifest_blob_modes, manifest_blobs
from occlum_rules.credentials import credentials_from_env, tls_files_from_env
from occlum_rules.errors import UserError

ENV_URL = "OCCLUM_RULES_REMOTE_EXECUTION"
ENV_INSTANCE = "OCCLUM_RULES_REMOTE_EXECUTION_INSTANCE"
ENV_TIMEOUT = "OCCLUM_RULES_REMOTE_EXECUTION_TIMEOUT"
DEFAULT_EXECUTE_TIMEOUT = 600.0


class RemoteExecutor:
    """Runs eligible actions on the workers of one Execution service."""

    def __init__(self, client: ReapiCache, execute_timeout: float = DEFAULT_EXECUTE_TIMEOUT):
        self.client = client
        client.role = "remote execution"
        client.fallback = "running actions here"
        self.execute_timeout = float(execute_timeout)

    @property
    def display_url(self) -> str:
        return self.client.display_url

    def run(self, action: Action, env: BuildEnv, input_digests: list[tuple[str, str]],
            store: LocalStore) -> dict[str, Any] | None:
        """The output manifest of ``action`` run remotely, its blobs in ``store`` and verified,
        or None: not eligible, or the service failed (the caller runs it here)."""
        if remote_ineligible(action) is not None:
            return None
        client = self.client
        if not client.usable() or client.stats.uploads_disabled:
            return None
        pb = client.stubs
        remote = remote_action(pb, action, env.root, input_digests, digest_cache(env),
                               env.source_date_epoch)

        if not client.upload_blobs(remote.blobs()):
            return None
        request = pb.re.ExecuteRequest(instance_name=client.target.instance_name,
                                       action_digest=remote.action_digest)

        def call(channel: Any, timeout: float, metadata: Any) -> Any:
            last = None
            for operation in pb.re_grpc.ExecutionStub(channel).Execute(
                    request, timeout=timeout, metadata=metadata):
                last = operation
                if operation.done:
                    break
            if last is None or not last.done:
                raise ValueError("the operation stream ended before the action finished")
            return last

        operation = client.call("Execute", call, self.execute_timeout)
        if operation is None:
            return None
        return self._outputs(pb, action, env, store, operation)

    def _outputs(self, pb: Any, action: Action, env: BuildEnv, store: LocalStore,
                 operation: Any) -> dict[str, Any] | None:
        if operation.HasField("error"):
            return _refuse(action, f"the execution failed: {operation.error.message}")
        response = pb.re.ExecuteResponse()
        if not operation.response.Unpack(response):
            return _refuse(action, "the operation holds no ExecuteResponse")
        if response.status.code != 0:
            return _refuse(action, f"the execution failed: {response.status.message}")
        result = response.result
        if result.exit_code != 0:
            return _refuse(action, f"it exited with status {result.exit_code} on the worker")
        found = [f for f in result.output_files if f.path == DISCOVERED_PATH]
        if len(found) != 1:
            return _refuse(action, f"the worker did not return {DISCOVERED_PATH}")
        got = self.client.read_blobs({found[0].digest.hash: found[0].digest.size_bytes})
        dynamic = _discovered(got.get(found[0].digest.hash) if got else None)
        if dynamic is None:
            return _refuse(action, f"{DISCOVERED_PATH} from the worker is not readable")
        kept = [f for f in result.output_files if f.path != DISCOVERED_PATH]
        del result.output_files[:]
        result.output_files.extend(kept)
        try:
            trees = self.client.read_blobs({d.hash: d.size_bytes
                                            for d in ar.tree_digests(result)})
            if trees is None:
                return None
            manifest, sizes = ar.from_action_result(pb, result, trees)
        except ar.BadActionResult as exc:
            return _refuse(action, f"its result is not usable ({exc})")
        manifest = ar.order_outputs({**manifest, "label": action.label, "kind": action.kind,
                                     "dynamic": dynamic}, list(action.outputs))
        problem = manifest_problem(action, manifest)
        if problem:
            return _refuse(action, f"its result does not fit ({problem})")
        if not dynamic_unchanged(dynamic, env):
            return _refuse(action, "files it read on the worker differ from this machine's")
        wanted = {d: sizes.get(d) for d in set(manifest_blobs(manifest)) if not store.has_blob(d)}
        if not self.client.fetch_blobs(store, wanted, manifest_blob_modes(manifest)):
            return None
        return manifest


def _refuse(action: Action, why: str) -> dict[str, Any] | None:
    """Say why a remote result is not used (always None: the caller runs the action here)."""
    print(f"warning: {action.label}: not taken from remote execution: {why}; running it here",
          file=sys.stderr)
    return None


def _discovered(data: bytes | None) -> list[list[str]] | None:
    """The worker's discovered inputs as this machine names them (package files here)."""
    try:
        record = json.loads(data or b"")
    except ValueError:
        return None
    if not isinstance(record, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
            for r in record):
        return None
    return [[package_path(name), digest] for name, digest in record]


def executor_from_config(url: str | None, instance_name: str | None,
                         environ: Mapping[str, str] | None = None) -> RemoteExecutor | None:
    """The executor WORKSPACE.yaml's ``execution`` section and the environment ask for."""
    if environ is None:
        environ = os.environ
    url, where = configured_url(url, "WORKSPACE.yaml: execution.remote", environ, ENV_URL)
    if url is None:
        return None
    if not url.strip().lower().startswith(("grpc://", "grpcs://")):
        raise UserError("remote execution speaks REAPI over gRPC; expected grpc://host:port or "
                        "grpcs://host[:port]", where=where)
    instance_where = "WORKSPACE.yaml: execution.instance_name"
    env_instance = environ.get(ENV_INSTANCE, "").strip()
    if env_instance:
        instance_name, instance_where = env_instance, ENV_INSTANCE
    target = parse_target(url, instance_name, where, instance_where)
    timeout = env_seconds(environ, ENV_TIMEOUT)
    # uploads of inputs only: the service, not this client, writes the action results
    client = ReapiCache(target, upload=True, credentials=credentials_from_env(environ),
                        tls_files=tls_files_from_env(environ), writes_action_results=False)
    return RemoteExecutor(client, timeout or DEFAULT_EXECUTE_TIMEOUT)
