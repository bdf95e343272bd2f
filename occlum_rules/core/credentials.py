"""Remote-cache credentials, read from the environment only.

Credentials never come from WORKSPACE.yaml or a URL: a file in the repository or a URL in
a log would leak them. They live in this object only, whose ``repr`` hides them, and they
leave the process only in the ``Authorization`` header of a request.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit, urlunsplit

from occlum_rules.errors import UserError

ENV_USER = "OCCLUM_RULES_REMOTE_USER"
ENV_PASSWORD = "OCCLUM_RULES_REMOTE_PASSWORD"
ENV_TOKEN = "OCCLUM_RULES_REMOTE_TOKEN"


@dataclass(frozen=True)
class RemoteCredentials:
    """Basic (user + password) or bearer (token) credentials for the remote cache."""

    scheme: str  # "basic" or "bearer"
    _secret: str = field(repr=False)
    user: str | None = None

    def authorization_header(self) -> str:
        """The value of the ``Authorization`` header; the only place the secret goes."""
        if self.scheme == "basic":
            raw = f"{self.user}:{self._secret}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return "Bearer " + self._secret

    def describe(self) -> str:
        """A loggable description (never the secret)."""
        if self.scheme == "basic":
            return f"basic auth as user {self.user!r}"
        return "bearer token"

    def __repr__(self) -> str:
        return f"RemoteCredentials({self.describe()})"

    __str__ = __repr__


def credentials_from_env(environ: Mapping[str, str] | None = None) -> RemoteCredentials | None:
    """Read the credentials from the environment; ``None`` when none are set.

    A half-set pair (user without password) or both kinds at once is a mistake the user
    should hear about rather than an anonymous request that fails later with 401.
    """
    env = os.environ if environ is None else environ
    user = env.get(ENV_USER) or None
    password = env.get(ENV_PASSWORD) or None
    token = env.get(ENV_TOKEN) or None
    if token and (user or password):
        raise UserError(
            f"set either {ENV_TOKEN} (bearer) or {ENV_USER} + {ENV_PASSWORD} (basic auth), "
            "not both",
            where="remote cache",
        )
    if token:
        if any(c in token for c in "\r\n"):
            raise UserError(f"{ENV_TOKEN} must be a single line", where="remote cache")
        return RemoteCredentials("bearer", token.strip())
    if user or password:
        if not (user and password):
            missing = ENV_PASSWORD if user else ENV_USER
            raise UserError(
                f"{ENV_USER} and {ENV_PASSWORD} must be set together; {missing} is missing",
                where="remote cache",
            )
        if ":" in user:
            raise UserError(f"{ENV_USER} must not contain ':'", where="remote cache")
        return RemoteCredentials("basic", password, user=user)
    return None


def redact_url(url: str) -> str:
    """The URL with any user-info and query string masked, safe to print.

    The query is masked too because pre-signed URLs (S3 proxies) carry tokens there.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parts.query else ""
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))
