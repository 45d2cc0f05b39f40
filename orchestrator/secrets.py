"""Role passwords and the backup signing key: from the environment, else generated once and kept in 0600 files.

Passwords are sent to PostgreSQL only as SCRAM-SHA-256 verifiers, so the plaintext never reaches
the server, its statement log or ``pg_stat_activity``. The backup key signs (HMAC-SHA256) every
`devdiag backup` file; it lives in its own file so that it can be copied to a restoring machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import click

from devdiag_db.config import devdiag_home
from devdiag_db.scram import SCRAM_ITERATIONS, scram_verifier

__all__ = ["SCRAM_ITERATIONS", "scram_verifier"]  # re-exported: where the role passwords are

ROLE_ENV = {"devdiag_writer": "DEVDIAG_WRITER_PASSWORD", "grafana": "DEVDIAG_GRAFANA_PASSWORD"}
BACKUP_KEY_ENV = "DEVDIAG_BACKUP_KEY"
BACKUP_KEY_FILE = "backup.key"
MIN_KEY_BYTES = 16


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
    from_env = os.environ.get(ROLE_ENV[role]) if role in ROLE_ENV else None
    if from_env:
        return from_env
    kept = _load()
    if role not in kept:
        kept[role] = secrets.token_urlsafe(24)
        _store(kept)
    return kept[role]


# --- the backup signing key ---------------------------------------------------------------------------


class BackupKeyMissing(click.ClickException):
    """No key to check a backup's signature with; the message names where one is looked for."""


def backup_key_file() -> Path:
    return devdiag_home() / BACKUP_KEY_FILE


def backup_key(key_file: Path | None = None, *, create: bool = False) -> bytes:
    """The key that signs backups: ``key_file``, else $DEVDIAG_BACKUP_KEY, else $DEVDIAG_HOME/backup.key.

    With ``create`` (a backup), a missing home key is generated once (32 random bytes, hex, mode 0600).
    """
    if key_file is not None:
        try:
            return _key_bytes(key_file.read_bytes(), f"--key-file {key_file}")
        except OSError as error:
            raise click.ClickException(
                f"cannot read --key-file {key_file} ({error.strerror}): give the backup key file of the "
                "machine that made the backup"
            ) from None
    from_env = os.environ.get(BACKUP_KEY_ENV)
    if from_env:
        return _key_bytes(from_env.encode(), BACKUP_KEY_ENV)
    path = backup_key_file()
    try:
        return _key_bytes(path.read_bytes(), str(path))
    except FileNotFoundError:
        if not create:
            raise BackupKeyMissing(
                f"no backup key on this machine ({path} does not exist, {BACKUP_KEY_ENV} is unset): copy the "
                f"backup.key of the machine that made the backup and pass --key-file FILE, or pass "
                "--trust-unsigned if you know where this file came from"
            ) from None
    except OSError as error:
        raise click.ClickException(
            f"cannot read the backup key {path} ({error.strerror}): fix its permissions"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return backup_key()  # another backup made it first
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


def _key_bytes(raw: bytes, where: str) -> bytes:
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise click.ClickException(
            f"the backup key in {where} is shorter than {MIN_KEY_BYTES} bytes: use the backup.key file "
            "`devdiag backup` generated"
        )
    return key


def key_id(key: bytes) -> str:
    """A short fingerprint that names a key in messages without revealing it."""
    return hashlib.sha256(b"devdiag backup key id\0" + key).hexdigest()[:12]
