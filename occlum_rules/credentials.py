"""Credentials for remote services (the remote cache, OCI registries), from the environment only.

Credentials never come from WORKSPACE.yaml or a URL: a file in the repository or a URL in
a log would leak them. Each service has its own variables (``EnvNames``) so a registry
password is never sent to the cache server or the other way round. They live in this object only, whose ``repr`` hides them, and they
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
ENV_TLS_CA = "OCCLUM_RULES_REMOTE_TLS_CA"
ENV_TLS_CERT = "OCCLUM_RULES_REMOTE_TLS_CERT"
ENV_TLS_KEY = "OCCLUM_RULES_REMOTE_TLS_KEY"


@dataclass(frozen=True)
class EnvNames:
    """The environment variables one service reads its credentials from."""

    user: str
    password: str
    token: str
    where: str  # the service, for error messages


REMOTE_CACHE_ENV = EnvNames(ENV_USER, ENV_PASSWORD, ENV_TOKEN, "remote cache")
REGISTRY_ENV = EnvNames("OCCLUM_RULES_REGISTRY_USER", "OCCLUM_RULES_REGISTRY_PASSWORD",
                        "OCCLUM_RULES_REGISTRY_TOKEN", "OCI registry")


@dataclass(frozen=True)
class RemoteCredentials:
    """Basic (user + password) or bearer (token) credentials for one HTTP service."""

    scheme: str  # "basic" or "bearer"
    _secret: str = field(repr=False)
    user: str | None = None

    def authorization_header(self) -> str:
        """The value of the ``Authorization`` header; the only place the secret goes."""
        if self.scheme == "basic":
            raw = f"{self.user}:{self._secret}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return "Bearer " + self._secret

    def basic_header(self) -> str | None:
        """``Authorization: Basic`` for a token service (registries); None for a token."""
        return self.authorization_header() if self.scheme == "basic" else None

    def describe(self) -> str:
        """A loggable description (never the secret)."""
        if self.scheme == "basic":
            return f"basic auth as user {self.user!r}"
        return "bearer token"

    def __repr__(self) -> str:
        return f"RemoteCredentials({self.describe()})"

    __str__ = __repr__


def credentials_from_env(environ: Mapping[str, str] | None = None,
                         names: EnvNames = REMOTE_CACHE_ENV) -> RemoteCredentials | None:
    """Read the credentials from the environment; ``None`` when none are set.

    A half-set pair (user without password) or both kinds at once is a mistake the user
    should hear about rather than an anonymous request that fails later with 401.
    """
    env = os.environ if environ is None else environ
    user = env.get(names.user) or None
    password = env.get(names.password) or None
    token = env.get(names.token) or None
    where = names.where
    if token and (user or password):
        raise UserError(
            f"set either {names.token} (bearer) or {names.user} + {names.password} (basic "
            "auth), not both",
            where=where,
        )
    if token:
        if any(c in token for c in "\r\n"):
            raise UserError(f"{names.token} must be a single line", where=where)
        return RemoteCredentials("bearer", token.strip())
    if user or password:
        if not (user and password):
            missing = names.password if user else names.user
            raise UserError(
                f"{names.user} and {names.password} must be set together; {missing} is missing",
                where=where,
            )
        if ":" in user:
            raise UserError(f"{names.user} must not contain ':'", where=where)
        return RemoteCredentials("basic", password, user=user)
    return None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a gRPC cache over TLS: the roots to trust and an mTLS client identity.

    Read once from the files the environment names; the private key stays in this object
    (its ``repr`` names only which parts are set) and goes only to the TLS library."""

    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)

    def read(self, part: str) -> bytes | None:
        value: bytes | None = getattr(self, part)
        return value

    def describe(self) -> str:
        parts = [name for name in ("ca", "cert", "key") if getattr(self, name) is not None]
        return "TLS files: " + ", ".join(parts)

    def __repr__(self) -> str:
        return f"TlsFiles({self.describe()})"

    __str__ = __repr__


def tls_files_from_env(environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    """The TLS files named by ``OCCLUM_RULES_REMOTE_TLS_CA`` / ``_CERT`` / ``_KEY``, or None.

    The client certificate and its key go together; each file must be readable PEM."""
    env = os.environ if environ is None else environ
    paths = {part: (env.get(name) or "").strip()
             for part, name in (("ca", ENV_TLS_CA), ("cert", ENV_TLS_CERT), ("key", ENV_TLS_KEY))}
    if not any(paths.values()):
        return None
    if bool(paths["cert"]) != bool(paths["key"]):
        missing = ENV_TLS_KEY if paths["cert"] else ENV_TLS_CERT
        raise UserError(f"{ENV_TLS_CERT} and {ENV_TLS_KEY} must be set together; {missing} is "
                        "missing", where="remote cache")
    contents: dict[str, bytes | None] = {}
    for part, path in paths.items():
        name = {"ca": ENV_TLS_CA, "cert": ENV_TLS_CERT, "key": ENV_TLS_KEY}[part]
        if not path:
            contents[part] = None
            continue
        try:
            data = open(os.path.expanduser(path), "rb").read()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}", where=name) from None
        if b"-----BEGIN " not in data:
            raise UserError(f"{path} is not a PEM file (expected -----BEGIN ...)", where=name)
        contents[part] = data
    return TlsFiles(**contents)


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
