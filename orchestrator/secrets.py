"""Role passwords: from the environment, else generated once and kept in a 0600 file.

Passwords are sent to PostgreSQL only as SCRAM-SHA-256 verifiers, so the plaintext never reaches
the server, its statement log or ``pg_stat_activity``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import click

from orchestrator.config import devdiag_home

ROLE_ENV = {"devdiag_writer": "DEVDIAG_WRITER_PASSWORD", "grafana": "DEVDIAG_GRAFANA_PASSWORD"}
SCRAM_ITERATIONS = 4096


def secrets_file() -> Path:
    return devdiag_home() / "secrets.json"


def _load() -> dict[str, str]:
    path = secrets_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise click.ClickException(
            f"{path} is unreadable or not JSON: fix or remove it, then run `devdiag setup` again"
        ) from None
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _store(data: dict[str, str]) -> None:
    path = secrets_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def role_password(role: str) -> str:
    """The password of ``role``: its environment variable, else the kept (or a new) generated one."""
    from_env = os.environ.get(ROLE_ENV[role])
    if from_env:
        return from_env
    kept = _load()
    if role not in kept:
        kept[role] = secrets.token_urlsafe(24)
        _store(kept)
    return kept[role]


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores in pg_authid (RFC 5802/7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
