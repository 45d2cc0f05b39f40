"""Server configuration from the environment, checked once before the stdio transport opens.

A bad value is refused with one line naming the variable and what to write instead; the
server exits 2 (``main``) so that the editor shows the reason rather than a dead pipe.

| variable | meaning | default |
|---|---|---|
| ``DEVDIAG_PG_DSN`` / ``DEVDIAG_PG_HOST``, ``_USER``, ``_PASS``, ``_DB`` | the database | embedded PostgreSQL |
| ``DEVDIAG_TENANT`` | team or organisation the runs belong to | ``default`` |
| ``DEVDIAG_ENVIRONMENT`` | environment label | detected, e.g. ``linux/python-3.12/node-20`` |
| ``DEVDIAG_ALLOW_PROBES`` | URL probe allow-list (globs, CIDRs), comma separated | empty: probes off |
| ``DEVDIAG_PROBE_TIMEOUT`` | seconds for one URL probe | 5 |
| ``DEVDIAG_SPOOL_DIR`` | where runs wait while the database is away | ``$DEVDIAG_HOME/spool`` |
| ``DEVDIAG_SPOOL_MAX_MB`` | spool bound | 64 |
| ``DEVDIAG_CONNECT_TIMEOUT`` | seconds to wait for the database inside a tool call | 2 |
| ``DEVDIAG_CALL_BUDGET`` | seconds one tool call may take in all (probe and database work) | 10 |
| ``DEVDIAG_SYNCHRONOUS_COMMIT`` | ``on``: tool calls' commits wait for the disk (``off``: flush_watch) | ``off`` |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click

from devdiag_db.config import ConnectionSettings, devdiag_home, external_settings
from devdiag_db.db import DatabaseUnavailable
from mcp_devdiag import environment
from mcp_devdiag.probes import AllowList

DEFAULT_TENANT = "default"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,199}$")


class ConfigError(Exception):
    """A configuration the server refuses to start with; the message is one actionable line."""


@dataclass(frozen=True)
class DatabaseTarget:
    """Where runs go: an external PostgreSQL, or (``external`` None) the embedded one."""

    external: ConnectionSettings | None = None

    @property
    def embedded(self) -> bool:
        return self.external is None

    def resolve(self) -> ConnectionSettings:
        """Connection settings now; the embedded server's socket and port are read when asked."""
        if self.external is not None:
            return self.external
        from devdiag_db import embedded

        try:
            return embedded.settings(start=False)
        except click.ClickException as error:
            raise DatabaseUnavailable(error.message) from None

    def describe(self) -> str:
        return self.external.describe() if self.external is not None else "embedded PostgreSQL"


@dataclass(frozen=True)
class ServerSettings:
    tenant: str = DEFAULT_TENANT
    environment: str = "unknown"
    database: DatabaseTarget = field(default_factory=DatabaseTarget)
    spool_dir: Path = field(default_factory=lambda: devdiag_home() / "spool")
    spool_max_bytes: int = 64 * 1024 * 1024
    allow_probes: AllowList = field(default_factory=AllowList)
    probe_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    call_budget_s: float = 10.0
    tenant_from_token: bool = False  # served over HTTP: every call's tenant comes from its token
    # off: a tool call's commit does not wait for the WAL flush; its writes are held until PostgreSQL has
    # flushed them and spooled if it goes away first (flush_watch, docs/team-service.md)
    synchronous_commit: bool = False


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is not valid: give a number from {low:g} to {high:g}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "yes", "1"):
        return True
    if raw in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{name}={raw[:40]!r} is not valid: write on or off")


def tenant_from(env: Mapping[str, str]) -> str:
    tenant = env.get("DEVDIAG_TENANT", "").strip() or DEFAULT_TENANT
    if not TENANT_RE.match(tenant):
        raise ConfigError(
            f"DEVDIAG_TENANT={tenant!r} is not valid: use letters, digits and . _ - @ : / (at most 200), e.g. team-web"
        )
    return tenant


def environment_from(env: Mapping[str, str]) -> str:
    explicit = env.get("DEVDIAG_ENVIRONMENT", "").strip()
    if not explicit:
        return environment.detect()
    try:
        return environment.canonical(explicit)
    except ValueError as error:
        raise ConfigError(f"DEVDIAG_ENVIRONMENT: {error}") from None


def spool_dir_from(env: Mapping[str, str]) -> Path:
    raw = env.get("DEVDIAG_SPOOL_DIR", "").strip()
    path = Path(raw).expanduser().resolve() if raw else devdiag_home() / "spool"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise ConfigError(
            f"spool directory {path} cannot be created ({error.strerror}): set DEVDIAG_SPOOL_DIR to a writable path"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"spool directory {path} is not writable: set DEVDIAG_SPOOL_DIR to a writable path")
    return path


def database_from() -> DatabaseTarget:
    try:
        return DatabaseTarget(external_settings())
    except click.ClickException as error:
        raise ConfigError(error.message) from None


def load(env: Mapping[str, str] | None = None) -> ServerSettings:
    """Read and check every setting; raise ConfigError on the first bad one."""
    env = os.environ if env is None else env
    try:
        allow = AllowList.parse(env.get("DEVDIAG_ALLOW_PROBES", ""))
    except ValueError as error:
        raise ConfigError(f"DEVDIAG_ALLOW_PROBES: {error}") from None
    return ServerSettings(
        tenant=tenant_from(env),
        environment=environment_from(env),
        database=database_from(),
        spool_dir=spool_dir_from(env),
        spool_max_bytes=int(_number(env, "DEVDIAG_SPOOL_MAX_MB", 64, 0.01, 100_000) * 1024 * 1024),
        allow_probes=allow,
        probe_timeout_s=_number(env, "DEVDIAG_PROBE_TIMEOUT", 5.0, 0.1, 120),
        connect_timeout_s=_number(env, "DEVDIAG_CONNECT_TIMEOUT", 2.0, 0.1, 60),
        call_budget_s=_number(env, "DEVDIAG_CALL_BUDGET", 10.0, 1, 120),
        synchronous_commit=_switch(env, "DEVDIAG_SYNCHRONOUS_COMMIT", False),
    )
