"""Connect to the DevDiag database the way Grafana does: as role ``grafana``, with its password, over TCP."""

from __future__ import annotations

from devdiag_db import config, embedded
from devdiag_db.config import ConnectionSettings
from orchestrator.secrets import role_password


def grafana_settings() -> ConnectionSettings:
    """Role grafana's login: the configured server's host and database, else the embedded server's TCP port."""
    external = config.external_settings()
    password = role_password("grafana")
    if external is not None:
        return ConnectionSettings({**external.params, "user": "grafana", "password": password})
    embedded.start()
    return embedded.tcp_settings("grafana", password)
