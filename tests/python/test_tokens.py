"""`devdiag token create|list|revoke` and `devdiag_db.tokens.verify`, against the real database.

A token is printed once and is nowhere else afterwards: not in `list`, not in JSON, not in any
column of devdiag.api_token, not in the server's log. `verify` runs as the server's role (through
devdiag.token_lookup) and refuses malformed, unknown, wrong, expired and revoked tokens at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from devdiag_db import embedded
from devdiag_db import tokens as store
from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect
from orchestrator.cli import main
from orchestrator.secrets import role_password


def tenant() -> str:
    """A tenant of its own per test (the session database is shared)."""
    return f"tok-{uuid.uuid4().hex[:8]}"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def create(who: str, *extra: str) -> str:
    result = cli("token", "create", "--tenant", who, *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


@pytest.fixture
def writer(pg: ConnectionSettings) -> Iterator[psycopg.Connection]:
    """The server's own login: verify runs as it, never as the owner."""
    with connect(embedded.tcp_settings("devdiag_writer", role_password("devdiag_writer"))) as conn:
        yield conn


def every_stored_value(pg: ConnectionSettings) -> list[str]:
    """Every text and bytea value of devdiag.api_token, bytea as hex."""
    with connect(pg) as conn:
        columns = conn.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'devdiag' and table_name = 'api_token' and data_type in ('text', 'bytea')"
        ).fetchall()
        assert {"secret_sha256", "name", "key_id"} <= {c for c, _ in columns}
        values: list[str] = []
        for column, kind in columns:
            expr = f"encode({column}, 'hex')" if kind == "bytea" else column
            values += [v for (v,) in conn.execute(f"select {expr} from devdiag.api_token") if v is not None]
        return values


# --- create, list, revoke ---------------------------------------------------------------------------


def test_create_prints_the_token_once_on_stdout(pg: ConnectionSettings) -> None:
    who = tenant()
    result = cli("token", "create", "--tenant", who, "--name", "alice-laptop")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert store.TOKEN_RE.match(token), "stdout is the token alone, for a pipe"
    assert "not be shown again" in result.stderr and token not in result.stderr
    assert token[:12] in result.stderr  # the prefix names it

    listed = cli("token", "list", "--tenant", who)
    as_json = cli("token", "list", "--tenant", who, "--json")
    secret = token.split("_", 2)[2]
    hashed = hashlib.sha256(secret.encode()).hexdigest()
    for output in (listed.output, as_json.output):
        assert secret not in output and hashed not in output
    rows = json.loads(as_json.stdout)
    assert rows == [
        {
            "prefix": token[:12],
            "tenant": who,
            "name": "alice-laptop",
            "created": rows[0]["created"],
            "expires": rows[0]["expires"],
            "last_used": None,
            "status": "active",
        }
    ]
    expires = datetime.fromisoformat(rows[0]["expires"]) - datetime.fromisoformat(rows[0]["created"])
    assert abs(expires - timedelta(days=90)) < timedelta(minutes=1), "the default lifetime is 90 days"
    assert "alice-laptop" in listed.stdout and "active" in listed.stdout


def test_the_database_and_its_log_hold_only_a_hash(pg: ConnectionSettings, devdiag_home: Path) -> None:
    token = create(tenant(), "--json")
    token = json.loads(token)["token"]
    secret = token.split("_", 2)[2]
    stored = every_stored_value(pg)
    assert not any(secret in v or token in v for v in stored)
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    logs = [p for p in devdiag_home.rglob("*") if p.is_file() and p.suffix in {".log", ".json", ".csv", ""}]
    assert logs
    for path in logs:
        assert secret.encode() not in path.read_bytes(), path


def test_default_names_and_a_name_freed_by_revoking(pg: ConnectionSettings) -> None:
    who = tenant()
    create(who)
    create(who)
    names = [r["name"] for r in json.loads(cli("token", "list", "--tenant", who, "--json").stdout)]
    assert len(names) == 2 and names[1] == names[0] + "-2"
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]*", names[0]) and "@" in names[0]

    clash = cli("token", "create", "--tenant", who, "--name", names[0])
    assert clash.exit_code == 1 and "already has a live token named" in clash.stderr
    assert cli("token", "revoke", names[0], "--tenant", who).exit_code == 0
    assert cli("token", "create", "--tenant", who, "--name", names[0]).exit_code == 0


def test_expires_accepts_days_hours_and_never(pg: ConnectionSettings) -> None:
    who = tenant()
    hours = json.loads(cli("token", "create", "--tenant", who, "--expires", "12h", "--json").stdout)
    never = json.loads(cli("token", "create", "--tenant", who, "--expires", "never", "--json").stdout)
    lifetime = datetime.fromisoformat(hours["expires"]) - datetime.fromisoformat(hours["created"])
    assert abs(lifetime - timedelta(hours=12)) < timedelta(minutes=1)
    assert never["expires"] is None and never["status"] == "active"
    for bad in ("0d", "-1d", "90", "3651d", "forever", "1w"):
        result = cli("token", "create", "--tenant", who, "--expires", bad)
        assert result.exit_code == 2 and "90d, 12h" in result.stderr, bad
    assert "default: 90d" in cli("token", "create", "--help").stdout


def test_bad_tenants_and_names_are_refused_in_one_line(pg: ConnectionSettings) -> None:
    for bad in ("-x", "a b", "", "x" * 201, "tenant;drop"):
        result = cli("token", "create", "--tenant", bad)
        assert result.exit_code == 2 and "is not a tenant id" in result.stderr, bad
    result = cli("token", "create", "--tenant", tenant(), "--name", "has space")
    assert result.exit_code == 1 and "is not valid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_revoke_by_name_and_prefix(pg: ConnectionSettings, writer: psycopg.Connection) -> None:
    who = tenant()
    first = create(who, "--name", "one")
    second = create(who, "--name", "two")
    by_name = cli("token", "revoke", "one", "--tenant", who)
    assert by_name.exit_code == 0 and first[:12] in by_name.stdout
    by_prefix = cli("token", "revoke", second[:12], "--json")
    assert by_prefix.exit_code == 0 and [r["status"] for r in json.loads(by_prefix.stdout)] == ["revoked"]
    statuses = {r["name"]: r["status"] for r in json.loads(cli("token", "list", "--tenant", who, "--json").stdout)}
    assert statuses == {"one": "revoked", "two": "revoked"}
    assert store.verify(writer, first) is None and store.verify(writer, second) is None


def test_revoke_of_nothing_says_so_and_exits_1(pg: ConnectionSettings) -> None:
    result = cli("token", "revoke", "nobody-has-this-name")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "no live token has the name or prefix 'nobody-has-this-name': see `devdiag token list`"
    ]
    token = create(tenant())
    cli("token", "revoke", token[:12])
    pasted = cli("token", "revoke", token)  # a whole token pasted by mistake, already revoked
    assert pasted.exit_code == 1 and token.split("_", 2)[2] not in pasted.output
    assert token[:12] in pasted.stderr


def test_a_name_shared_by_two_tenants_needs_a_tenant(pg: ConnectionSettings) -> None:
    name = f"shared-{uuid.uuid4().hex[:6]}"
    a, b = tenant(), tenant()
    create(a, "--name", name)
    create(b, "--name", name)
    result = cli("token", "revoke", name)
    assert result.exit_code == 1 and "add --tenant" in result.stderr
    assert cli("token", "revoke", name, "--tenant", a).exit_code == 0
    statuses = {
        r["tenant"]: r["status"] for r in json.loads(cli("token", "list", "--json").stdout) if r["name"] == name
    }
    assert statuses == {a: "revoked", b: "active"}


# --- verify, as the server's role --------------------------------------------------------------------


def test_verify_gives_the_tenant_and_notes_the_use(pg: ConnectionSettings, writer: psycopg.Connection) -> None:
    who = tenant()
    token = create(who, "--name", "editor")
    info = store.verify(writer, token)
    assert info is not None and (info.tenant, info.name, info.key_id) == (who, "editor", token[4:12])
    assert store.verify(writer, f"  {token}\n") is not None  # as pasted into a header
    (row,) = json.loads(cli("token", "list", "--tenant", who, "--json").stdout)
    assert row["last_used"] is not None


def test_verify_refuses_everything_else(pg: ConnectionSettings, writer: psycopg.Connection) -> None:
    token = create(tenant())
    key, secret = token[4:12], token[13:]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    unknown = f"ddg_{'0' * 8}_{secret}" if key != "0" * 8 else f"ddg_{'1' * 8}_{secret}"
    for bad in (
        "",
        "ddg_",
        token[:-1],
        token + "x",
        token.upper(),
        f"Bearer {token}",
        f"ddg_{key}_{flipped}",
        unknown,
        "x" * 10_000,
        None,
        b"ddg_",
    ):
        assert store.verify(writer, bad) is None, repr(bad)[:40]  # type: ignore[arg-type]


def test_expired_and_revoked_are_refused_at_once(pg: ConnectionSettings, writer: psycopg.Connection) -> None:
    expiring = create(tenant(), "--expires", "1h")
    revoked = create(tenant())
    assert store.verify(writer, expiring) is not None and store.verify(writer, revoked) is not None
    with connect(pg) as conn:
        conn.execute(
            "update devdiag.api_token set expires_at = now() - interval '1 second' where key_id = %s", (expiring[4:12],)
        )
    assert store.verify(writer, expiring) is None
    assert cli("token", "revoke", revoked[:12]).exit_code == 0
    assert store.verify(writer, revoked) is None
    statuses = {r["prefix"]: r["status"] for r in json.loads(cli("token", "list", "--json").stdout)}
    assert (statuses[expiring[:12]], statuses[revoked[:12]]) == ("expired", "revoked")


def test_every_refusal_of_a_well_formed_token_costs_one_lookup_and_one_comparison(
    pg: ConnectionSettings, writer: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown key id is compared against a dummy hash, as a wrong secret is against the real one:
    the same database round trip and the same constant-time comparison, so time does not tell them apart."""
    token = create(tenant())
    secret = token[13:]
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(store.hmac, "compare_digest", spy)
    statements: list[str] = []
    real_execute = writer.execute

    def counting(query, *args, **kwargs):  # type: ignore[no-untyped-def]
        statements.append(str(query))
        return real_execute(query, *args, **kwargs)

    monkeypatch.setattr(writer, "execute", counting)
    for case in (f"ddg_zzzzzzz9_{secret}", token[:-1] + ("A" if token[-1] != "A" else "B")):
        calls.clear()
        statements.clear()
        assert store.verify(writer, case) is None
        assert len(calls) == 1 and len(calls[0][0]) == len(calls[0][1]) == 32
        assert [s for s in statements if "token_lookup" in s] and not [s for s in statements if "token_used" in s]
