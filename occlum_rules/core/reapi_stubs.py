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

INSTALL_HINT = "pip install 'occlum-rules[remote]'"


def load_stubs(where: str = "WORKSPACE.yaml: cache.remote") -> Any:
    """``grpc`` and the generated modules: ``re`` (remote_execution_pb2), ``re_grpc``, ``bs``
    (bytestream_pb2), ``bs_grpc``, ``any_pb2``, ``struct_pb2``."""
    global _STUBS
    if _STUBS is None:
        try:
            import grpc
            from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
                remote_execution_pb2,
                remote_execution_pb2_grpc,
            )
            from buildgrid.common.protos.google.bytestream import (
                bytestream_pb2,
                bytestream_pb2_grpc,
            )
            from google.protobuf import any_pb2, struct_pb2
        except ImportError as exc:
            raise UserError(
                f"a grpc:// remote cache needs the optional gRPC dependencies ({exc.name} is "
                f"missing); install them with {INSTALL_HINT}",
                where=where,
            ) from None
        _STUBS = SimpleNamespace(
            grpc=grpc,
            re=remote_execution_pb2,
            re_grpc=remote_execution_pb2_grpc,
            bs=bytestream_pb2,
            bs_grpc=bytestream_pb2_grpc,
            any_pb2=any_pb2,
            struct_pb2=struct_pb2,
        )
    return _STUBS
