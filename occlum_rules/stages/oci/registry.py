"""A small client for the OCI distribution API (registry v2), standard library only.

What push and pull need and nothing more: the ``/v2/`` ping, HEAD/GET of blobs and manifests,
monolithic and chunked blob uploads streamed from a file, cross-repository mounts, and PUT
of manifests. Authentication follows the registries: anonymous, ``Basic``, or the ``Bearer``
token dance (``WWW-Authenticate: Bearer realm=…,service=…,scope=…``) with credentials from
the environment only (``occlum_rules.credentials``); the secret goes into ``Authorization`` headers
and nowhere else, so no error message, log line or output file can hold it.

Every failure is one ``UserError`` naming the registry, the repository and what was being
done; connection and read waits are bounded (``occlum_rules.http_connection``) so a dead or silent
registry fails in seconds rather than hanging a CI job.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Protocol
from urllib.parse import quote, urlencode, urljoin, urlsplit

from occlum_rules.credentials import RemoteCredentials
from occlum_rules.errors import UserError
from occlum_rules.http_connection import HTTPConnection, HTTPSConnection

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
ENV_TIMEOUT = "OCCLUM_RULES_REGISTRY_TIMEOUT"
MAX_DOCUMENT = 16 << 20          # manifests, indexes, tokens: JSON, never this large
_BLOCK = 1 << 20
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]+)?|\[[0-9A-Fa-f:]+\](?::[0-9]+)?")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                         r"[a-z0-9]+)*)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError,
                            BrokenPipeError, ConnectionAbortedError)


def timeouts_from_env(environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """(connect, read) timeouts for a ``Registry``: the defaults, or both set
    from OCCLUM_RULES_REGISTRY_TIMEOUT (seconds) for a slow link or an impatient CI job."""
    text = (os.environ if environ is None else environ).get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise UserError(f"{ENV_TIMEOUT}={text!r}: expected seconds, more than 0 and at most 3600")
    return seconds, seconds


@dataclass(frozen=True)
class Reference:
    """``REGISTRY/REPO[:TAG]``: where an image goes or comes from."""

    registry: str
    repository: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")


def parse_reference(text: str, *, allow_tag: bool = True) -> Reference:
    """Split ``REGISTRY/REPO[:TAG]``; the registry part is always explicit (no Docker Hub
    default), so an image never goes to a registry the user did not name."""
    host, slash, rest = text.partition("/")
    if not slash or not rest or not _HOST.fullmatch(host):
        raise UserError(f"{text!r} is not REGISTRY/REPOSITORY[:TAG] (for example "
                        "registry.example.com/team/app:v1)")
    if "@" in rest:
        raise UserError(f"{text!r}: give a tag, not a digest (the digest is the image's own)")
    repo, tag = rest, None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = rest.rsplit(":", 1)
        if not allow_tag:
            raise UserError(f"{text!r}: no tag expected here")
        if not TAG.fullmatch(tag):
            raise UserError(f"{text!r}: {tag!r} is not a valid tag")
    if not _REPOSITORY.fullmatch(repo):
        raise UserError(f"{text!r}: {repo!r} is not a valid repository name (lowercase "
                        "letters, digits, '.', '_', '-' and '/')")
    return Reference(host, repo, tag)


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {realm, service, …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
    return scheme.lower(), params


@dataclass
class Registry:
    """One registry and one repository (plus the repositories blobs may be mounted from)."""

    host: str
    repository: str
    insecure: bool = False
    credentials: RemoteCredentials | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    mount_from: tuple[str, ...] = ()
    _auth: str | None = field(default=None, repr=False)
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)
    _conn_host: str = field(default="", repr=False)
    _challenge: tuple[dict[str, str], str] | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure else "https"

    def _where(self) -> str:
        return f"registry {self.host}, repository {self.repository}"

    def fail(self, what: str) -> UserError:
        return UserError(f"{self._where()}: {what}")

    # ------------------------------------------------------------------ transport

    def _connection(self, host: str) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn_host == host:
            return self._conn
        self.close()
        conn: http.client.HTTPConnection
        if self.insecure:
            conn = HTTPConnection(host, timeout=self.connect_timeout, blocksize=_BLOCK)
        else:
            conn = HTTPSConnection(host, timeout=self.connect_timeout, blocksize=_BLOCK,
                                   context=ssl.create_default_context())
        conn.read_timeout = self.read_timeout
        self._conn, self._conn_host = conn, host
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, target: str, what: str, *,
                headers: Mapping[str, str] | None = None,
                body: bytes | IO[bytes] | None = None, length: int | None = None,
                stream_to: Writer | None = None, auth: bool = True,
                limit: int = MAX_DOCUMENT) -> Response:
        """One exchange (see ``_exchange``); a 401 after a Bearer login means the token
        expired during a long push (registries give minutes): one new token, one retry."""
        start = body.tell() if body is not None and not isinstance(body, bytes) else None
        resp = self._exchange(method, target, what, headers=headers, body=body, length=length,
                              stream_to=stream_to, auth=auth, limit=limit)
        if resp.status != 401 or not auth or self._challenge is None:
            return resp
        params, actions = self._challenge
        self._auth = "Bearer " + self._token(params, actions)
        self._challenge = (params, actions)
        if start is not None:
            body.seek(start)  # type: ignore[union-attr]
        return self._exchange(method, target, what, headers=headers, body=body, length=length,
                              stream_to=stream_to, auth=auth, limit=limit)

    def _exchange(self, method: str, target: str, what: str, *,
                  headers: Mapping[str, str] | None, body: bytes | IO[bytes] | None,
                  length: int | None, stream_to: Writer | None, auth: bool,
                  limit: int) -> Response:
        """One exchange. ``target`` is a path on this registry or an absolute URL (a
        ``Location`` header). The answer's body is read (up to ``limit``) or, when
        ``stream_to`` is given and the status is 200, copied there in blocks."""
        parts = urlsplit(target)
        host = parts.netloc or self.host
        if parts.scheme and parts.scheme != self.scheme:
            raise self.fail(f"{what}: the registry sent us to a {parts.scheme}:// URL; only "
                            f"{self.scheme}:// is allowed here"
                            + ("" if self.insecure else " (plain http needs --insecure)"))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": "occlum-rules", **(headers or {})}
        if auth and self._auth is not None and host == self.host:
            sent["Authorization"] = self._auth
        if body is not None or method in ("PUT", "POST", "PATCH"):
            sent["Content-Length"] = str(length if length is not None else
                                         len(body) if isinstance(body, bytes) else 0)
        # a keep-alive connection the registry closed while idle fails before any answer:
        # that one is retried once on a new connection (rewinding a file body)
        reused = self._conn is not None and self._conn_host == host
        start = body.tell() if body is not None and not isinstance(body, bytes) else None
        while True:
            conn = self._connection(host)
            answered = False
            try:
                conn.request(method, path or "/", body=body, headers=sent)
                resp = conn.getresponse()
                answered = True
                status, resp_headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
                if stream_to is not None and status == 200:
                    while block := resp.read(_BLOCK):
                        stream_to.write(block)
                    data = b""
                else:
                    data = resp.read(limit + 1)
                    if len(data) > limit:
                        self.close()
                        raise self.fail(f"{what}: the answer is implausibly large (over "
                                        f"{limit} bytes)")
                if resp.will_close:
                    self.close()
                break
            except _STALE_CONNECTION_ERRORS as exc:
                self.close()
                if reused and not answered:
                    reused = False
                    if start is not None:
                        body.seek(start)  # type: ignore[union-attr]
                    continue
                raise self.fail(f"{what}: {type(exc).__name__}: {exc or 'connection closed'}"
                                ) from None
            except TimeoutError:
                self.close()
                raise self.fail(f"{what}: no answer within {self.read_timeout:g} s (timed out)"
                                ) from None
            except ConnectionRefusedError:
                self.close()
                raise self.fail(f"{what}: connection refused ({self.scheme}://{host})") from None
            except ssl.SSLError as exc:
                self.close()
                hint = "; for a plain-http registry pass --insecure" if not self.insecure else ""
                raise self.fail(f"{what}: TLS failed ({exc.reason or exc}){hint}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self.fail(f"{what}: {type(exc).__name__}: {exc or 'connection closed'}"
                                ) from None
        return Response(status, resp_headers, data)

    def check(self, resp: Response, what: str, ok: Iterable[int]) -> Response:
        """``resp`` when its status is expected, else the one clear error for it."""
        if resp.status in tuple(ok):
            return resp
        hint = {401: " (unauthorized: set OCCLUM_RULES_REGISTRY_USER and "
                     "OCCLUM_RULES_REGISTRY_PASSWORD, or OCCLUM_RULES_REGISTRY_TOKEN)",
                403: " (forbidden: these credentials may not do this)",
                404: " (not found)"}.get(resp.status, "")
        if resp.status == 401 and self.credentials is not None:
            hint = " (unauthorized: the registry refused the credentials from the environment)"
        detail = _error_detail(resp.body)
        raise self.fail(f"{what}: HTTP {resp.status}{hint}{detail}")

    # ---------------------------------------------------------------- authentication

    def login(self, actions: str) -> None:
        """Ping ``/v2/`` and authenticate for ``actions`` ("pull" or "pull,push") on the
        repository (and "pull" on the mount sources) the way the registry asks."""
        resp = self.request("GET", "/v2/", "ping /v2/", auth=False)
        if resp.status == 200:  # open /v2/; repositories may still want the credentials
            if self.credentials is not None:
                self._auth = self.credentials.authorization_header()
            return
        if resp.status != 401:
            self.check(resp, "ping /v2/", (200,))
        scheme, params = _parse_challenge(resp.headers.get("www-authenticate", ""))
        if self.credentials is None:
            if scheme != "bearer":
                self.check(resp, "ping /v2/", (200,))
        elif scheme == "basic" or (scheme != "bearer" and self.credentials.scheme == "basic"):
            self._auth = self.credentials.authorization_header()
            self.check(self.request("GET", "/v2/", "log in (basic auth)"),
                       "log in (basic auth)", (200,))
            return
        if scheme != "bearer":
            raise self.fail(f"ping /v2/: unsupported authentication scheme {scheme!r}")
        if self.credentials is not None and self.credentials.scheme == "bearer":
            self._auth = self.credentials.authorization_header()  # a ready registry token
            return
        self._auth = "Bearer " + self._token(params, actions)
        self._challenge = (params, actions)

    def _token(self, params: Mapping[str, str], actions: str) -> str:
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise self.fail(f"log in: the token realm {realm!r} is not an http(s) URL")
        if parts.scheme == "http" and not self.insecure:
            raise self.fail("log in: the token realm is plain http; credentials are only sent "
                            "over http with --insecure")
        scopes = [f"repository:{self.repository}:{actions}",
                  *(f"repository:{r}:pull" for r in self.mount_from)]
        query = [("scope", s) for s in scopes]
        if params.get("service"):
            query.insert(0, ("service", params["service"]))
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        basic = self.credentials.basic_header() if self.credentials is not None else None
        try:
            resp = self.request("GET", url, "log in (token service)", auth=False,
                                headers={"Authorization": basic} if basic else {})
        finally:
            self.close()
        self.check(resp, f"log in (token service {parts.netloc})", (200,))
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise self.fail(f"log in: the token service {parts.netloc} answered without a token")
        return token

    # ------------------------------------------------------------------------ paths

    def path(self, kind: str, ref: str, repository: str | None = None) -> str:
        return f"/v2/{repository or self.repository}/{kind}/{quote(ref, safe=':')}"


def _error_detail(body: bytes) -> str:
    """The registry's own error codes (``{"errors":[{"code":…,"message":…}]}``), short."""
    try:
        errors = json.loads(body).get("errors")
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3])
    except (ValueError, AttributeError, TypeError):
        return ""
    return f": {text[:300]}" if text else ""


def upload_location(reg: Registry, resp: Response, what: str) -> str:
    """The absolute URL an upload continues at (``Location`` may be relative)."""
    location = resp.headers.get("location")
    if not location:
        raise reg.fail(f"{what}: the registry gave no upload Location")
    return urljoin(f"{reg.scheme}://{reg.host}/", location)


def with_query(url: str, **params: str) -> str:
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)
