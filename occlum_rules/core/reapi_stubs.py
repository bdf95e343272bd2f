"""The REAPI and ByteStream protobuf stubs, imported only when a gRPC cache is configured.

They come from PyPI's ``buildgrid-common`` (with ``grpcio`` and ``protobuf``): the optional
extra ``occlum-rules[remote]``. The HTTP cache and everything else work without them; a
``grpc://`` cache configured without them is one clear error, not a traceback.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from occlum_rules.errors import UserError

_STUBS: SimpleNamespace | None = None
_MESSAGES: SimpleNamespace | None = None

INSTALL_HINT = "pip install 'occlum-rules[remote]'"


def _missing(exc: ImportError, where: str) -> UserError:
    return UserError(
        f"a grpc:// remote cache needs the optional gRPC dependencies ({exc.name} is "
        f"missing); install them with {INSTALL_HINT}",
        where=where,
    )


def load_messages(where: str = "WORKSPACE.yaml: cache.remote") -> Any:
    """The message modules only, without grpc (what the HTTP cache needs to write
    ActionResults): ``re`` (remote_execution_pb2), ``any_pb2``, ``struct_pb2``."""
    global _MESSAGES
    if _MESSAGES is None:
        try:
            from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
                remote_execution_pb2,
            )
            from google.protobuf import any_pb2, struct_pb2
        except ImportError as exc:
            raise _missing(exc, where) from None
        _MESSAGES = SimpleNamespace(re=remote_execution_pb2, any_pb2=any_pb2,
                                    struct_pb2=struct_pb2)
    return _MESSAGES


def optional_messages() -> Any | None:
    """:func:`load_messages`, or None when the ``remote`` extra is not installed."""
    try:
        return load_messages()
    except UserError:
        return None


def load_stubs(where: str = "WORKSPACE.yaml: cache.remote") -> Any:
    """``grpc`` and the generated modules: the messages of :func:`load_messages`, and
    ``re_grpc`` (remote_execution_pb2_grpc), ``bs`` (bytestream_pb2), ``bs_grpc``."""
    global _STUBS
    if _STUBS is None:
        messages = load_messages(where)
        try:
            import grpc
            from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
                remote_execution_pb2_grpc,
            )
            from buildgrid.common.protos.google.bytestream import (
                bytestream_pb2,
                bytestream_pb2_grpc,
            )
        except ImportError as exc:
            raise _missing(exc, where) from None
        _STUBS = SimpleNamespace(
            grpc=grpc,
            re=messages.re,
            re_grpc=remote_execution_pb2_grpc,
            bs=bytestream_pb2,
            bs_grpc=bytestream_pb2_grpc,
            any_pb2=messages.any_pb2,
            struct_pb2=messages.struct_pb2,
        )
    return _STUBS
