"""Tokens verified lately, shared by `devdiag serve`'s worker processes, for while the database is away.

Every call's token is checked against the database; only while the database is away does a token
verified in the last grace period (``DEVDIAG_TOKEN_GRACE``) keep working. A worker's memory holds only
the tokens it verified itself, and a client's connections move between workers (the keep-alive limit
renews them, a proxy pools them): a token verified by one worker was refused with 401 by the other
during an outage (50 of 5,000 calls in ``benchmarks/serve.py --fault db-restart``). So each worker also
records what it verified as a file ``<spool dir>/tokens/<SHA-256 of the token>``: the tenant, the
token's name, key id and expiry, and when it was verified (wall clock), never the token itself; at
most once a minute per token, and the record goes as soon as the database refuses the token.

Best effort: a record that cannot be written or read (a full disk, a hand-edited file) is a miss,
never an error of the call.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from devdiag_db.tokens import TokenInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraceFiles:
    directory: Path

    def _path(self, key: bytes) -> Path:
        return self.directory / key.hex()

    def record(self, key: bytes, info: TokenInfo, at: float) -> None:
        """Note that the database accepted the token whose hash is ``key`` at ``at`` (seconds, wall clock)."""
        body = {
            "key_id": info.key_id,
            "tenant": info.tenant,
            "name": info.name,
            "expires_at": info.expires_at.isoformat() if info.expires_at is not None else None,
            "verified_at": at,
        }
        path = self._path(key)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(body, out)
            os.replace(temporary, path)  # whole or not at all: a reader never sees half a record
        except OSError as error:
            log.warning("token grace record not written (%s): only this worker knows the token", error.strerror)
            temporary.unlink(missing_ok=True)

    def forget(self, key: bytes) -> None:
        """The database refused the token (revoked, expired, unknown): no worker may serve it from here."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as error:
            log.warning("token grace record not removed (%s)", error.strerror)

    def lookup(self, key: bytes) -> tuple[TokenInfo, float] | None:
        """The token's record and when it was verified, or None (none, unreadable or malformed)."""
        try:
            body = json.loads(self._path(key).read_text())
            expires = body["expires_at"]
            info = TokenInfo(
                key_id=str(body["key_id"]),
                tenant=str(body["tenant"]),
                name=str(body["name"]),
                expires_at=datetime.fromisoformat(expires) if expires is not None else None,
            )
            return info, float(body["verified_at"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
