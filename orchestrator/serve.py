"""`devdiag serve`: the MCP tools over Streamable HTTP for a whole team, one token per person.

Everything that can be wrong with the configuration is refused here, in one line, before the port
opens: a bad option, a database role for which row-level security would not apply (a superuser, the
tables' owner), credentials the database refuses, a port already taken. A database that is merely
unreachable is not refused: the server then answers from the catalog priors and spools.
"""

from __future__ import annotations

import os
import socket

import click

from devdiag_db import config, embedded
from devdiag_db.db import DatabaseUnavailable, connect
from mcp_devdiag import http
from mcp_devdiag.settings import ConfigError, load
from orchestrator.secrets import role_password

WRITER = "devdiag_writer"
_UNREACHABLE = ("is not reachable", "did not answer", "unknown host")


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return http.parse_rate(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def writer_settings() -> config.ConnectionSettings:
    """The writer's connection: DEVDIAG_PG_* when set (they must be the writer's), else the embedded
    database over TCP with the generated writer password."""
    external = config.external_settings()
    if external is not None:
        return external
    embedded.start()
    return embedded.tcp_settings(WRITER, role_password(WRITER))


def check_database(where: config.ConnectionSettings) -> str | None:
    """Refuse (ClickException) a role that would bypass row-level security or credentials that are
    refused; a database that does not answer is a warning (returned), not a refusal."""
    try:
        conn = connect(where)
    except DatabaseUnavailable as error:
        if any(marker in str(error) for marker in _UNREACHABLE):
            return f"{error}: serving anyway, from the catalog priors, runs spooled until it is back"
        raise click.ClickException(str(error)) from None
    with conn:
        problem = http.role_problem(conn)
    if problem:
        raise click.ClickException(problem)
    return None


def _port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({error.strerror}): pick another --port, or stop what uses it"
            ) from None


@click.command()
@click.option("--host", default=None, help=f"Address to bind (DEVDIAG_SERVE_HOST; default {http.DEFAULT_HOST}).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (DEVDIAG_SERVE_PORT; default 8765).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (DEVDIAG_SERVE_WORKERS).")
@click.option(
    "--rate-limit",
    callback=_rate,
    default=None,
    help="Calls per minute per token and worker, e.g. 600 or 10/s; 0 for none (DEVDIAG_RATE_LIMIT; default 600).",
)
@click.option(
    "--max-body", type=click.IntRange(1024), default=None, help="Largest request body in bytes (DEVDIAG_MAX_BODY)."
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Host name a proxy forwards to this server, e.g. devdiag.example.com (DEVDIAG_ALLOWED_HOSTS); repeatable.",
)
@click.option("--access-log/--no-access-log", default=False, help="Log one line per request (method, path, status).")
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    rate_limit: float | None,
    max_body: int | None,
    allowed_hosts: tuple[str, ...],
    access_log: bool,
) -> None:
    """Serve the MCP tools over Streamable HTTP at /mcp (tokens from `devdiag token create`).

    GET /healthz answers 200 when the database does, 503 otherwise. Put it behind a TLS-terminating
    proxy: docs/team-service.md.
    """
    import uvicorn

    try:
        base = http.http_settings()
        tools = load()  # every DEVDIAG_* setting the tools read, checked now rather than in each worker
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    try:
        hosts = base.allowed_hosts + http.parse_hosts(",".join(allowed_hosts))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--allowed-host") from None
    settings = http.HttpSettings(
        host=host or base.host,
        port=port or base.port,
        workers=workers or base.workers,
        rate_per_min=base.rate_per_min if rate_limit is None else rate_limit,
        max_body_bytes=max_body or base.max_body_bytes,
        token_grace_s=base.token_grace_s,
        allowed_hosts=hosts,
    )
    where = writer_settings()
    warning = check_database(where)
    _port_free(settings.host, settings.port)
    # The workers read everything from the environment (uvicorn starts them from an import string).
    os.environ.update(settings.to_env())
    if config.external_settings() is None:
        os.environ["DEVDIAG_PG_DSN"] = where.url(with_password=True)
    if warning:
        click.echo(f"devdiag serve: {warning}", err=True)
    durability = ", every commit waiting for the disk" if tools.synchronous_commit else ""
    click.echo(
        f"devdiag serve: http://{settings.host}:{settings.port}{http.MCP_PATH} ({settings.workers} worker"
        f"{'s' if settings.workers > 1 else ''}, {where.describe()}{durability})",
        err=True,
    )
    uvicorn.run(
        "mcp_devdiag.http:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=access_log,
        log_level="info" if access_log else "warning",
        server_header=False,
        timeout_graceful_shutdown=30,  # a tool call's budget is 10 s at most
        timeout_keep_alive=5,
    )
