"""``http.client`` connections with one timeout for connecting and another for each read.

Shared by the remote-cache client and the OCI registry client: a dead host must fail within
the connect timeout, and a server that accepts the connection and then goes silent must fail
within the read timeout, instead of hanging a build or a push.
"""

from __future__ import annotations

import http.client
import socket


class TimeoutConnectionMixin:
    """Use ``timeout`` (the connect timeout) to connect and ``read_timeout`` afterwards."""

    read_timeout: float
    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]  # uses self.timeout, the connect timeout
        assert self.sock is not None
        self.sock.settimeout(self.read_timeout)


class HTTPConnection(TimeoutConnectionMixin, http.client.HTTPConnection):
    pass


class HTTPSConnection(TimeoutConnectionMixin, http.client.HTTPSConnection):
    pass
