"""`devdiag token create|list|revoke` and `devdiag role grafana-tenant`: who may reach a team's runs.

These run as the owner (the orchestrator's database). A token is printed once, on stdout, and
nowhere else: not in an error, not in a log, never stored (the database keeps its secret's SHA-256).
"""

from __future__ import annotations

import functools
import getpass
import json
import re
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg

from devdiag_db import config
from devdiag_db import tokens as store
from devdiag_db.db import DatabaseUnavailable, connect
from mcp_devdiag.settings import TENANT_RE

DEFAULT_EXPIRES = "90d"
MAX_LIFETIME = timedelta(days=3650)
_LIFETIME_RE = re.compile(r"^([1-9][0-9]{0,5})([dh])$")


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line for an unreachable database or a refused statement; never a token, never a row."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatabaseUnavailable as error:
            raise click.ClickException(str(error)) from None
        except psycopg.errors.UndefinedTable:
            raise click.ClickException("the token tables do not exist yet: run `devdiag setup`") from None
        except psycopg.Error as error:
            # the primary message only: a DETAIL line may quote a row
            primary = error.diag.message_primary or type(error).__name__
            raise click.ClickException(f"{fn.__name__.replace('_', ' ')} failed: {primary}") from None

    return wrapper


def _tenant(value: str | None) -> str | None:
    if value is not None and not TENANT_RE.match(value):
        raise click.BadParameter(
            f"{value[:60]!r} is not a tenant id: use letters, digits and . _ @ : / - (at most 200, "
            "starting with a letter or digit)",
            param_hint="--tenant",
        )
    return value


def parse_lifetime(value: str) -> timedelta | None:
    """``90d``, ``12h`` or ``never`` (None)."""
    text = value.strip().lower()
    if text == "never":
        return None
    match = _LIFETIME_RE.match(text)
    lifetime = None
    if match:
        amount = int(match.group(1))
        lifetime = timedelta(days=amount) if match.group(2) == "d" else timedelta(hours=amount)
    if lifetime is None or lifetime > MAX_LIFETIME:
        raise click.BadParameter(
            f"{value[:30]!r} is not a lifetime: use e.g. 90d, 12h (at most 3650d), or never", param_hint="--expires"
        )
    return lifetime


def default_name(taken: set[str]) -> str:
    """``user@host``, made a valid token name, with -2, -3... when the tenant already has a live one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "token"
    raw = f"{user}@{socket.gethostname().split('.')[0]}"
    base = re.sub(r"[^A-Za-z0-9._@-]+", "-", raw).strip("-.@_")[:90] or "token"
    if not base[0].isalnum():
        base = "t" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _when(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value is not None else None


def _public(row: store.TokenRow) -> dict[str, Any]:
    """What may be shown of a token: never its secret or hash."""
    return {
        "prefix": row.prefix,
        "tenant": row.tenant,
        "name": row.name,
        "created": _when(row.created_at),
        "expires": _when(row.expires_at),
        "last_used": _when(row.last_used_at),
        "status": row.status(),
    }


def _shown(which: str) -> str:
    """``which`` as an error may quote it: a whole token pasted by mistake is cut to its prefix."""
    match = store.TOKEN_RE.match(which.strip())
    return f"{store.PREFIX}{match.group(1)}_…" if match else which[:100]


@click.group()
def token() -> None:
    """Team-service tokens: one per person or editor, each bound to one tenant.

    `devdiag serve` takes the tenant from the token; the database keeps only a hash of it.
    """


@token.command("create")
@click.option("--tenant", required=True, callback=lambda _c, _p, v: _tenant(v), help="The tenant the token acts for.")
@click.option("--name", default=None, help="A name to list and revoke it by. Default: USER@HOST (-2, -3... if taken).")
@click.option(
    "--expires",
    default=DEFAULT_EXPIRES,
    show_default=True,
    help="Lifetime: e.g. 90d, 12h, or never.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the token and its details as one JSON object.")
@_errors
def token_create(tenant: str, name: str | None, expires: str, as_json: bool) -> None:
    """Create a token and print it once, on stdout (pipe it into a secret store).

    It is not kept anywhere and cannot be shown again: a lost token is revoked and replaced.
    """
    lifetime = parse_lifetime(expires)
    with connect(config.settings()) as conn:
        if name is None:
            live = store.list_tokens(conn, tenant)
            name = default_name({r.name for r in live if r.revoked_at is None})
        try:
            secret, row = store.create(conn, tenant, name, lifetime)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps({"token": secret, **_public(row)}, indent=2))
        return
    until = f"expires {_when(row.expires_at)}" if row.expires_at else "never expires"
    click.echo(
        f"token {row.prefix} for tenant {row.tenant}, named {row.name}, {until}. It is shown once and will not be "
        "shown again: store it now (e.g. in your editor's secret input).",
        err=True,
    )
    click.echo(secret)


@token.command("list")
@click.option("--tenant", default=None, callback=lambda _c, _p, v: _tenant(v), help="Only this tenant's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@_errors
def token_list(tenant: str | None, as_json: bool) -> None:
    """List tokens (prefix, tenant, name, created, expires, last used, status); never a token or its hash."""
    with connect(config.settings()) as conn:
        rows = [_public(r) for r in store.list_tokens(conn, tenant)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(
            "no tokens" + (f" for tenant {tenant}" if tenant else "") + ": create one with `devdiag token create`"
        )
        return
    columns = ["prefix", "tenant", "name", "created", "expires", "last_used", "status"]
    cells = [[str(r[c] if r[c] is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.replace("_", " ").ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


@token.command("revoke")
@click.argument("which")
@click.option("--tenant", default=None, callback=lambda _c, _p, v: _tenant(v), help="Only this tenant's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the revoked tokens as a JSON array.")
@_errors
def token_revoke(which: str, tenant: str | None, as_json: bool) -> None:
    """Revoke a token by NAME or PREFIX (ddg_xxxxxxxx, as `devdiag token list` shows it); refused at once.

    Exit 1 when no live token matched.
    """
    with connect(config.settings()) as conn:
        try:
            rows = store.revoke(conn, which, tenant)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps([_public(r) for r in rows], indent=2))
    else:
        for r in rows:
            click.echo(f"revoked {r.prefix} ({r.name}, tenant {r.tenant})")
    if not rows:
        scope = f" of tenant {tenant}" if tenant else ""
        click.echo(f"no live token{scope} has the name or prefix {_shown(which)!r}: see `devdiag token list`", err=True)
        sys.exit(1)


# --- roles ----------------------------------------------------------------------------------------


@click.group()
def role() -> None:
    """Database roles for one tenant."""


def _role_settings(role_name: str, password: str) -> config.ConnectionSettings:
    from devdiag_db import embedded

    external = config.external_settings()
    if external is not None:
        return config.ConnectionSettings({**external.params, "user": role_name, "password": password})
    embedded.start()
    return embedded.tcp_settings(role_name, password)


@role.command("grafana-tenant")
@click.argument("tenant", callback=lambda _c, _p, v: _tenant(v))
@click.option(
    "--url", "print_url", is_flag=True, help="Print only the role's connection URL, password included (for a pipe)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the role, schema and views as JSON (no password).")
@_errors
def grafana_tenant(tenant: str, print_url: bool, as_json: bool) -> None:
    """Create or update TENANT's read role for a team's own Grafana; safe to run again.

    The role (grafana_t_<tenant>) reads only the views of schema devdiag_tenant_<tenant>: the
    public views filtered to TENANT, re-made after every `devdiag build`. Its password is kept in
    $DEVDIAG_HOME/secrets.json; `--url` prints a URL that carries it.
    """
    from orchestrator.provision import grafana_tenant as provision
    from orchestrator.secrets import role_password, secrets_file

    reader = provision(config.settings(), tenant)
    if print_url:
        click.echo(_role_settings(reader.role, role_password(reader.role)).url(with_password=True))
        return
    payload = {
        "tenant": reader.tenant,
        "role": reader.role,
        "schema": reader.schema,
        "views": reader.views,
        "created": reader.created,
        "password_file": str(secrets_file()),
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"role {reader.role} {'created' if reader.created else 'up to date'}: reads schema {reader.schema} only")
    click.echo(
        f"tenant {tenant}: {reader.views} of 7 views"
        + ("" if reader.views >= 7 else " (run `devdiag build` for the rest)")
    )
    click.echo(
        f"password kept in {secrets_file()} (mode 0600); connection URL: devdiag role grafana-tenant {tenant} --url"
    )
    click.echo(
        f"dashboard for its Grafana: sed 's/devdiag\\.v_/{reader.schema}.v_/g' "
        "grafana/dashboards/devdiag-analytics.json"
    )
