"""`devdiag serve`: the five tools over MCP Streamable HTTP at ``/mcp``, for a whole team.

The SDK does the transport (stateless, JSON responses: any worker can answer any request) and the
bearer-token check (401 with ``WWW-Authenticate: Bearer``); this module adds what a shared service
needs around it:

- ``DevDiagTokenVerifier``: every request's token is checked against the database
  (``devdiag_db.tokens.verify``, so a revocation applies to the very next call); only while the
  database is away does a token verified in the last ``DEVDIAG_TOKEN_GRACE`` minutes keep working,
  from a cache keyed by the token's SHA-256 (never the token), which the workers share
  (``token_grace``), so that ``serve`` still answers from the catalog priors and spools;
- ``RateLimit``: a token bucket per token (per client address without one), 429 + ``Retry-After``;
- ``GET /healthz``: 200 with the version and schema when the database answers, 503 otherwise;
- a background replay of the spool once the database is back, and the pool closed at shutdown.

Settings come from the environment (``http_settings``), so that each uvicorn worker process builds
the same app from ``app_factory``. This module never logs a header or a token.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devdiag_db import tokens
from devdiag_db.db import DatabaseUnavailable
from mcp_devdiag import classifier
from mcp_devdiag.recorder import Recorder
from mcp_devdiag.server import TENANT_CLAIM, build_server, version
from mcp_devdiag.settings import ConfigError, ServerSettings, load
from mcp_devdiag.token_grace import GraceFiles

log = logging.getLogger("mcp_devdiag.http")

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_WORKERS = 2  # benchmarks/serve.py on 2 cores: 165 calls/s with 2, 104 with 1 (docs/team-service.md "Figures")
DEFAULT_RATE_PER_MIN = 600
DEFAULT_MAX_BODY = 256 * 1024  # a diagnose call's largest arguments (error text, logs, context) fit many times
DEFAULT_GRACE_MIN = 10
REPLAY_EVERY_S = 2.0
TOKEN_CACHE_MAX = 10_000
NOTE_USE_EVERY_S = 60.0  # last_used_at has minute resolution (devdiag.token_used); not a write per call
BUCKETS_MAX = 50_000
KEEPALIVE_REQUESTS = 50  # then the connection closes, and the client's next one may go to the other worker
CONNECTIONS_MAX = 10_000
# The SDK wants an issuer; DevDiag issues its own tokens (`devdiag token create`) and runs no OAuth
# server, so no resource metadata is advertised and this URL is never served or contacted.
_ISSUER = "http://127.0.0.1/devdiag-tokens"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class HttpSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    rate_per_min: float = DEFAULT_RATE_PER_MIN  # per token and per worker process; 0 turns it off
    max_body_bytes: int = DEFAULT_MAX_BODY
    token_grace_s: float = DEFAULT_GRACE_MIN * 60
    allowed_hosts: tuple[str, ...] = ()  # Host names a proxy forwards (DNS-rebinding check)

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``http_settings`` read these back (for the worker processes)."""
        return {
            "DEVDIAG_SERVE_HOST": self.host,
            "DEVDIAG_SERVE_PORT": str(self.port),
            "DEVDIAG_SERVE_WORKERS": str(self.workers),
            "DEVDIAG_RATE_LIMIT": f"{self.rate_per_min:g}",
            "DEVDIAG_MAX_BODY": str(self.max_body_bytes),
            "DEVDIAG_TOKEN_GRACE": f"{self.token_grace_s / 60:g}",
            "DEVDIAG_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
        }


def parse_rate(raw: str) -> float:
    """``600``, ``600/min`` or ``10/s`` → calls per minute; ValueError with what to write."""
    text = raw.strip().lower().replace(" ", "")
    number, _, unit = text.partition("/")
    factor = {"": 1, "min": 1, "m": 1, "s": 60, "sec": 60, "h": 1 / 60, "hour": 1 / 60}.get(unit)
    try:
        value = float(number) * factor if factor is not None else float("nan")
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1_000_000:
        raise ValueError(f"rate limit {raw!r} is not valid: give calls per minute per token, e.g. 600 or 600/min")
    return value


def parse_hosts(raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        if not all(c.isalnum() or c in ".-:[]*" for c in host):
            raise ValueError(f"allowed host {host[:60]!r} is not valid: give host names, e.g. devdiag.example.com")
    return hosts


def http_settings(env: Mapping[str, str] | None = None) -> HttpSettings:
    """Read and check the DEVDIAG_SERVE_* settings; ConfigError (one line) on the first bad one."""
    env = os.environ if env is None else env

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise ConfigError(f"{name}={raw!r} is not valid: give a whole number from {low} to {high}")
        return int(raw)

    try:
        rate = parse_rate(env.get("DEVDIAG_RATE_LIMIT", "") or str(DEFAULT_RATE_PER_MIN))
        hosts = parse_hosts(env.get("DEVDIAG_ALLOWED_HOSTS", ""))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    grace_raw = env.get("DEVDIAG_TOKEN_GRACE", "").strip()
    try:
        grace = float(grace_raw) if grace_raw else DEFAULT_GRACE_MIN
    except ValueError:
        grace = -1
    if not 0 <= grace <= 24 * 60:
        raise ConfigError(f"DEVDIAG_TOKEN_GRACE={grace_raw!r} is not valid: give minutes from 0 to 1440")
    return HttpSettings(
        host=env.get("DEVDIAG_SERVE_HOST", "").strip() or DEFAULT_HOST,
        port=integer("DEVDIAG_SERVE_PORT", DEFAULT_PORT, 1, 65535),
        workers=integer("DEVDIAG_SERVE_WORKERS", DEFAULT_WORKERS, 1, 64),
        rate_per_min=rate,
        max_body_bytes=integer("DEVDIAG_MAX_BODY", DEFAULT_MAX_BODY, 1024, 64 * 1024 * 1024),
        token_grace_s=grace * 60,
        allowed_hosts=hosts,
    )


# --- tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verified:
    info: tokens.TokenInfo
    at: float  # monotonic time of the last check against the database


def token_key(token: str) -> bytes:
    """What the cache and the rate limiter key on: never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class DevDiagTokenVerifier:
    """The SDK's TokenVerifier over ``devdiag.api_token``, through the recorder's pool."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        grace_s: float = DEFAULT_GRACE_MIN * 60,
        clock: Callable[[], float] = time.monotonic,
        shared: GraceFiles | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.recorder = recorder
        self.grace_s = grace_s
        self.clock = clock
        self.shared = shared  # the other workers' verifications (a file each), for while the database is away
        self.wall_clock = wall_clock  # the shared records' time: processes share no monotonic origin we trust
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._noted: dict[bytes, float] = {}  # token hash -> when its use was last noted in the database
        self._lock = threading.Lock()

    async def verify_token(self, token: str) -> AccessToken | None:
        return await anyio.to_thread.run_sync(self.verify_sync, token)

    def verify_sync(self, token: str) -> AccessToken | None:
        key = token_key(token)
        now = self.clock()
        with self._lock:
            note_use = now - self._noted.get(key, -math.inf) >= NOTE_USE_EVERY_S
        try:
            with self.recorder.connection() as conn:
                info = tokens.verify(conn, token, note_use=note_use)
        except DatabaseUnavailable:
            return self._from_cache(key)
        except psycopg.Error as error:  # a statement timeout or the like: refuse, say why without the token
            log.warning("token check failed (%s): refused", type(error).__name__)
            return None
        if self.shared is not None:
            if info is None:
                self.shared.forget(key)
            elif note_use:  # first seen here, or a minute since: as often as the database notes the use
                self.shared.record(key, info, self.wall_clock())
        with self._lock:
            if info is None:
                self._cache.pop(key, None)
                return None
            self._cache[key] = _Verified(info, now)
            self._cache.move_to_end(key)
            while len(self._cache) > TOKEN_CACHE_MAX:
                self._noted.pop(self._cache.popitem(last=False)[0], None)
            if note_use:
                self._noted[key] = now
        return _access(info, key)

    def _from_cache(self, key: bytes) -> AccessToken | None:
        with self._lock:
            hit = self._cache.get(key)
        info = hit.info if hit is not None and self.clock() - hit.at <= self.grace_s else None
        if info is None and self.shared is not None:
            found = self.shared.lookup(key)
            if found is not None and 0 <= self.wall_clock() - found[1] <= self.grace_s:
                info = found[0]
        if info is None or (info.expires_at is not None and info.expires_at <= datetime.now(UTC)):
            return None
        return _access(info, key)


def _access(info: tokens.TokenInfo, key: bytes) -> AccessToken:
    return AccessToken(
        token="sha256:" + key.hex(),  # the SDK keeps this field; the token itself is not kept
        client_id=info.name,
        subject=f"{info.tenant}/{info.key_id}",
        scopes=[],
        expires_at=int(info.expires_at.timestamp()) if info.expires_at is not None else None,
        claims={TENANT_CLAIM: info.tenant},
    )


# --- limits ---------------------------------------------------------------------------------------


class RateLimiter:
    """Token buckets: ``per_min`` a minute, bursts of up to ten seconds' worth (at least 5)."""

    def __init__(self, per_min: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_min / 60.0
        self.capacity = max(5.0, self.rate * 10)
        self.clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: bytes) -> float:
        """0 when allowed (one call taken), else the seconds to wait. Called on the event loop only."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        level, at = self._buckets.get(key, (self.capacity, now))
        level = min(self.capacity, level + (now - at) * self.rate)
        if level >= 1:
            self._buckets[key] = (level - 1, now)
            self._buckets.move_to_end(key)
            if len(self._buckets) > BUCKETS_MAX:  # the oldest buckets have refilled: forgetting them is exact
                self._buckets.popitem(last=False)
            return 0.0
        self._buckets[key] = (level, now)
        return (1 - level) / self.rate


class RateLimit:
    """ASGI middleware: past the bucket, 429 with Retry-After before the token is even checked."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        wait = self.limiter.take(_bucket(scope))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        body = (
            b'{"error":"rate_limited","error_description":"too many calls with this token: retry after '
            + str(retry).encode()
            + b' s"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class KeepAliveLimit:
    """ASGI middleware: the answer to a connection's ``requests``-th request says ``Connection: close``,
    and the client connects again (nginx's ``keepalive_requests``). The workers share one listening
    socket, and a burst of connections (clients that start together) is accepted mostly by the worker
    that woke first: 32 of 50 in one worker, measured, which then ran two thirds of the calls on its one
    core's worth of interpreter while the other idled. A connection made later is accepted by a worker
    waiting for one, the less busy: the load evens out as connections renew. A connection is known by
    its client's address and port (behind a proxy, uvicorn's forwarded address with port 0: one client's
    requests then count together, and the proxy's connection that carries every 50th is renewed)."""

    def __init__(self, app: ASGIApp, requests: int = KEEPALIVE_REQUESTS) -> None:
        self.app = app
        self.requests = requests
        self._served: OrderedDict[tuple[str, int], int] = OrderedDict()  # client (address, port) -> requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client:
            await self.app(scope, receive, send)
            return
        key = (str(client[0]), int(client[1]))
        served = self._served.pop(key, 0) + 1
        if served < self.requests:
            self._served[key] = served
            if len(self._served) > CONNECTIONS_MAX:  # connections closed by their client are never seen again
                self._served.popitem(last=False)
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


def _bucket(scope: Scope) -> bytes:
    """The caller's bucket: its bearer token's hash, else its address (every unauthenticated call
    from behind one proxy shares one bucket; they are all refused anyway)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return token_key(value.decode("latin-1"))
    client = scope.get("client") or ("?", 0)
    return b"addr:" + str(client[0]).encode()


def transport_security(http: HttpSettings) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check: loopback names, the bound host, and the names a proxy forwards."""
    names = [*_LOOPBACK, *((http.host,) if http.host not in ("0.0.0.0", "::") else ()), *http.allowed_hosts]
    hosts = sorted({pattern for name in names for pattern in (name, f"{name}:*")})
    origins = sorted(
        {f"{scheme}://{name}{port}" for name in names for scheme in ("http", "https") for port in ("", ":*")}
    )
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


# --- the database role ----------------------------------------------------------------------------


def role_problem(conn: psycopg.Connection) -> str | None:
    """Why this connection's role must not serve (row-level security would not hold), or None."""
    row = conn.execute(
        """
        select r.rolname, r.rolsuper, r.rolbypassrls, c.oid is not null,
               c.oid is not null and pg_has_role(current_user, c.relowner, 'USAGE'),
               coalesce(c.relrowsecurity, false), coalesce(c.relforcerowsecurity, false)
        from pg_roles as r
        left join pg_class as c on c.oid = to_regclass('devdiag.diag_run')
        where r.rolname = current_user
        """
    ).fetchone()
    assert row is not None
    name, superuser, bypass, exists, owner, rls, forced = row
    fix = "give the writer's credentials (devdiag_writer: `devdiag db url --role devdiag_writer`)"
    if superuser or bypass:
        what = "a superuser" if superuser else "has BYPASSRLS"
        return f"the database role {name} is {what}: row-level security would not apply; {fix}"
    if not exists:
        return "devdiag.diag_run does not exist: run `devdiag setup` first"
    if owner and not forced:
        return f"the database role {name} owns devdiag.diag_run: row-level security would not apply; {fix}"
    if not rls:
        return "row-level security is off on devdiag.diag_run: run `devdiag setup`"
    return None


# --- the app --------------------------------------------------------------------------------------


@dataclass
class ServeApp:
    """The ASGI app and what tests reach into (the recorder, the verifier)."""

    asgi: ASGIApp
    recorder: Recorder
    verifier: DevDiagTokenVerifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.asgi(scope, receive, send)


def build_app(settings: ServerSettings, http: HttpSettings, *, recorder: Recorder | None = None) -> ServeApp:
    settings = replace(settings, tenant_from_token=True)
    recorder = recorder or Recorder.for_settings(settings)
    verifier = DevDiagTokenVerifier(
        recorder, grace_s=http.token_grace_s, shared=GraceFiles(settings.spool_dir / "tokens")
    )
    auth = AuthSettings(issuer_url=AnyHttpUrl(_ISSUER), resource_server_url=None)
    server, _ = build_server(settings, recorder=recorder, token_verifier=verifier, auth=auth)

    @server.custom_route(HEALTH_PATH, methods=["GET"])
    async def healthz(request: Request) -> Response:
        status, body = await anyio.to_thread.run_sync(health, recorder)
        return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})

    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,  # no session to pin to a worker; DevDiag's tools never call back
        json_response=True,
        max_request_body_size=http.max_body_bytes,
        transport_security=transport_security(http),
        host=http.host,
    )
    sdk_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[None]:
        classifier.classify("warm-up")  # compile the catalog's patterns before the first call waits on them
        async with sdk_lifespan(scope_app), anyio.create_task_group() as group:
            group.start_soon(_replay_loop, recorder)
            frozen = freeze_startup_heap()
            try:
                yield
            finally:
                group.cancel_scope.cancel()
                if frozen:
                    gc.unfreeze()
        await anyio.to_thread.run_sync(recorder.close)

    app.router.lifespan_context = lifespan
    return ServeApp(KeepAliveLimit(RateLimit(app, RateLimiter(http.rate_per_min))), recorder, verifier)


def freeze_startup_heap() -> bool:
    """Move what start-up allocated (the SDK, pydantic schemas, the catalog and its patterns) out of
    the collector's reach; True when this call froze it. A full collection of a worker's heap paused
    every thread for 70-95 ms, twice a minute under load: the p99 of a 200 calls/s run. Frozen, the
    full collections see only what calls allocate (2.4 ms at most; docs/team-service.md "Figures")."""
    if gc.get_freeze_count():
        return False  # frozen already (a test process, or an app built twice): not ours to undo
    gc.collect()
    gc.freeze()
    return True


def health(recorder: Recorder) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for /healthz; the body names no host, role or reason (it is public)."""
    body: dict[str, Any] = {"version": version(), "spool_bytes": recorder.spool.size_bytes()}
    try:
        with recorder.connection() as conn:
            row = conn.execute(
                """
                select to_regclass('devdiag.diag_run') is not null,
                       to_regclass('devdiag.api_token') is not null,
                       coalesce((select relrowsecurity from pg_class
                                 where oid = to_regclass('devdiag.diag_run')), false)
                """
            ).fetchone()
    except (DatabaseUnavailable, psycopg.Error):
        return 503, {"status": "unavailable", "database": "unavailable", **body}
    assert row is not None
    schema = {"diag_run": row[0], "api_token": row[1], "row_security": row[2]}
    ok = all(schema.values())
    return (200 if ok else 503), {"status": "ok" if ok else "schema", "database": "ok", "schema": schema, **body}


async def _replay_loop(recorder: Recorder) -> None:
    """Replay the spool once the database is back, even if no call comes to trigger it."""
    while True:
        await anyio.sleep(REPLAY_EVERY_S)
        if recorder.spool.pending() and recorder.down_reason is None:
            await anyio.to_thread.run_sync(_replay_once, recorder)


def _replay_once(recorder: Recorder) -> None:
    try:
        with recorder.connection() as conn:
            report = recorder.replay(conn)
    except DatabaseUnavailable:
        return
    if report is not None and report.rows_inserted:
        log.warning("spool replayed: %d rows written", report.rows_inserted)


def app_factory() -> ServeApp:
    """What each uvicorn worker calls (``mcp_devdiag.http:app_factory``): settings from the environment."""
    _configure_logging()
    try:
        return build_app(load(), http_settings())
    except ConfigError as error:
        raise SystemExit(f"devdiag serve: {error}") from None


def _configure_logging() -> None:
    level = os.environ.get("DEVDIAG_LOG_LEVEL", "INFO").upper()
    for name in ("mcp", "httpx", "httpx2"):  # the SDK's own INFO lines are per request
        logging.getLogger(name).setLevel(logging.WARNING)
    ours = logging.getLogger("mcp_devdiag")
    ours.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("devdiag-serve %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.propagate = False
