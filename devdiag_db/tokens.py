"""Team-service tokens: ``ddg_<key id>_<secret>``, of which the database keeps only a hash.

- ``ddg_`` makes a token recognisable (secret scanners, DevDiag's own redaction); the 8-character
  key id names the token in lists and revocations and is how it is found; the 43-character secret
  carries 256 bits of entropy, so a plain SHA-256 of it is safe to keep (no slow hash needed: it
  cannot be guessed, only stolen).
- ``verify`` finds the token by key id through ``devdiag.token_lookup`` (the only thing the server's
  role may ask before it knows a tenant) and compares hashes in constant time; an unknown, malformed,
  expired or revoked token is ``None``, without saying which.
- Creating, listing and revoking tokens is the owner's (``devdiag token ...``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

PREFIX = "ddg_"
_ALPHABET = string.ascii_letters + string.digits
_KEY_ALPHABET = string.ascii_lowercase + string.digits
SECRET_LENGTH = 43  # 43 base62 characters: 256 bits
TOKEN_RE = re.compile(rf"^{PREFIX}([a-z0-9]{{8}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
# A looked-up hash for an unknown key id, compared against all the same (no early exit that times it).
_NO_HASH = bytes(32)


@dataclass(frozen=True)
class TokenInfo:
    key_id: str
    tenant: str
    name: str
    expires_at: datetime | None


@dataclass(frozen=True)
class TokenRow:
    """A token as `devdiag token list` shows it: never the secret, never the hash."""

    key_id: str
    tenant: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.key_id}"

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_token() -> tuple[str, str, bytes]:
    """(token, key id, hash of its secret): the token is shown once and never stored."""
    key_id = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(8))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
    return f"{PREFIX}{key_id}_{secret}", key_id, digest(secret)


def verify(
    conn: psycopg.Connection, token: str, *, now: datetime | None = None, note_use: bool = True
) -> TokenInfo | None:
    """The tenant a token speaks for, or None (malformed, unknown, expired, revoked: not told apart).

    With ``note_use`` its ``last_used_at`` is brought up to date (the database does so at most once a
    minute); a server that asks for every call notes it less often itself, to save the round trip."""
    match = TOKEN_RE.match(token.strip()) if isinstance(token, str) and len(token) < 200 else None
    key_id, secret = (match.group(1), match.group(2)) if match else ("", "")
    row = conn.execute("select * from devdiag.token_lookup(%s)", (key_id,)).fetchone() if match else None
    stored = bytes(row[2]) if row else _NO_HASH
    same = hmac.compare_digest(digest(secret), stored)
    if not (match and row and same):
        return None
    tenant, name, _, expires_at, revoked_at = row
    now = now or datetime.now(UTC)
    if revoked_at is not None or (expires_at is not None and expires_at <= now):
        return None
    if note_use:
        conn.execute("select devdiag.token_used(%s)", (key_id,))
    return TokenInfo(key_id=key_id, tenant=tenant, name=name, expires_at=expires_at)


def create(conn: psycopg.Connection, tenant: str, name: str, expires_in: timedelta | None) -> tuple[str, TokenRow]:
    """Store a new token's hash (as the owner); returns the token, to be shown once, and its row."""
    if not NAME_RE.match(name):
        raise ValueError(f"token name {name[:60]!r} is not valid: use letters, digits and . _ @ - (at most 100)")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be positive: use e.g. 90d, 12h or never")
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    for _ in range(3):  # a key id collision (36^8 ids) is retried with a new token
        token, key_id, secret_hash = new_token()
        try:
            with conn.transaction():
                row = conn.execute(
                    """
                    insert into devdiag.api_token (key_id, tenant_id, name, secret_sha256, expires_at)
                    values (%s, %s, %s, %s, %s)
                    returning key_id, tenant_id, name, created_at, expires_at, last_used_at, revoked_at
                    """,
                    (key_id, tenant, name, secret_hash, expires_at),
                ).fetchone()
        except psycopg.errors.UniqueViolation as error:
            if error.diag.constraint_name == "api_token_pkey":
                continue
            raise ValueError(
                f"tenant {tenant} already has a live token named {name!r}: "
                "pick another --name, or revoke that one first"
            ) from None
        assert row is not None
        return token, TokenRow(*row)
    raise RuntimeError("three key id collisions in a row: the random source is broken")


def list_tokens(conn: psycopg.Connection, tenant: str | None = None) -> list[TokenRow]:
    rows = conn.execute(
        """
        select key_id, tenant_id, name, created_at, expires_at, last_used_at, revoked_at
        from devdiag.api_token
        where %(tenant)s::text is null or tenant_id = %(tenant)s
        order by tenant_id, created_at, key_id
        """,
        {"tenant": tenant},
    ).fetchall()
    return [TokenRow(*row) for row in rows]


def revoke(conn: psycopg.Connection, which: str, tenant: str | None = None) -> list[TokenRow]:
    """Revoke by key id, prefix (``ddg_<key id>``) or name (within ``tenant`` when given); the rows revoked."""
    key_id = which.removeprefix(PREFIX).split("_", 1)[0] if which.startswith(PREFIX) else which
    if tenant is None:
        named = conn.execute(
            "select distinct tenant_id from devdiag.api_token where name = %s and revoked_at is null order by 1",
            (which,),
        ).fetchall()
        if len(named) > 1:
            raise ValueError(
                f"tokens named {which!r} exist for tenants {', '.join(t for (t,) in named)}: add --tenant, "
                "or revoke by prefix (devdiag token list shows it)"
            )
    rows = conn.execute(
        """
        update devdiag.api_token set revoked_at = now()
        where revoked_at is null
          and (key_id = %(key)s or name = %(name)s)
          and (%(tenant)s::text is null or tenant_id = %(tenant)s)
        returning key_id, tenant_id, name, created_at, expires_at, last_used_at, revoked_at
        """,
        {"key": key_id, "name": which, "tenant": tenant},
    ).fetchall()
    return [TokenRow(*row) for row in rows]
