"""The files under ``grafana/``: which are generated, reading them, and Grafana's ``$VAR`` interpolation.

Generated (``devdiag grafana generate``; a test keeps them equal to their source):
``dashboards/devdiag-analytics.json`` from ``dashboard.build()`` and
``provisioning/alerting/devdiag-alerts.yaml`` from ``orchestrator/alert_rules.yaml``.
Written by hand: the data source and dashboard provider files and the alerting examples.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from orchestrator.grafana import DASHBOARD_UID, alerting, dashboard, grafana_dir

_ENV = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def datasource_file() -> Path:
    return grafana_dir() / "provisioning" / "datasources" / "devdiag.yaml"


def dashboard_provider_file() -> Path:
    return grafana_dir() / "provisioning" / "dashboards" / "devdiag.yaml"


def dashboard_file() -> Path:
    return grafana_dir() / "dashboards" / f"{DASHBOARD_UID}.json"


def dashboard_text() -> str:
    return json.dumps(dashboard.build(), indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Generated:
    path: Path
    render: Callable[[], str]


def generated_files() -> tuple[Generated, ...]:
    return (
        Generated(dashboard_file(), dashboard_text),
        Generated(alerting.provisioning_file(), alerting.generated_text),
    )


def stale_files() -> list[Path]:
    """Generated files whose committed text differs from what their source gives now."""
    stale = []
    for item in generated_files():
        current = item.path.read_text() if item.path.exists() else None
        if current != item.render():
            stale.append(item.path)
    return stale


def generate() -> list[Path]:
    """Rewrite the generated files; returns those that changed."""
    changed = []
    for item in generated_files():
        text = item.render()
        if not item.path.exists() or item.path.read_text() != text:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            item.path.write_text(text)
            changed.append(item.path)
    return changed


def require_current() -> None:
    """Refuse to import files that no longer match their source (someone forgot `generate`)."""
    stale = stale_files()
    if stale:
        names = ", ".join(str(p.relative_to(grafana_dir().parent)) for p in stale)
        raise click.ClickException(f"{names} differ from their source: run `devdiag grafana generate` and commit")


def read_dashboard() -> dict[str, Any]:
    return json.loads(dashboard_file().read_text())


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise click.ClickException(f"cannot read {path}: {str(error).splitlines()[0]}") from None


def env_references(value: Any) -> set[str]:
    """Every ``$VAR`` / ``${VAR}`` in the string values of a provisioning document."""
    if isinstance(value, str):
        return {a or b for a, b in _ENV.findall(value)}
    if isinstance(value, Mapping):
        return set().union(*(env_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(env_references(v) for v in value)) if value else set()
    return set()


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Grafana's provisioning interpolation: ``$VAR`` and ``${VAR}`` from the environment."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: env[m.group(1) or m.group(2)], value)
    if isinstance(value, Mapping):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def datasource_definition() -> dict[str, Any]:
    """The one data source of the provisioning file, not yet interpolated."""
    document = read_yaml(datasource_file())
    sources = document.get("datasources") or []
    if len(sources) != 1:
        raise click.ClickException(f"{datasource_file()}: expected exactly one data source, found {len(sources)}")
    return sources[0]


def datasource_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Values for the data source's variables: the environment, else what devdiag itself knows.

    DEVDIAG_PG_HOST defaults to the host:port that devdiag connects to (the embedded server's
    127.0.0.1 port locally), DEVDIAG_GRAFANA_PASSWORD to the password `devdiag setup` kept for role
    grafana (none is made up here), and DEVDIAG_GRAFANA_SSLMODE to disable on loopback, require elsewhere.
    """
    env = dict(os.environ if base is None else base)
    if not env.get("DEVDIAG_PG_HOST"):
        env["DEVDIAG_PG_HOST"] = _devdiag_host()
    if not env.get("DEVDIAG_GRAFANA_PASSWORD"):
        kept = _kept_grafana_password()
        if kept:
            env["DEVDIAG_GRAFANA_PASSWORD"] = kept
    if not env.get("DEVDIAG_GRAFANA_SSLMODE"):
        host = env["DEVDIAG_PG_HOST"].rsplit(":", 1)[0]
        env["DEVDIAG_GRAFANA_SSLMODE"] = "disable" if host in ("localhost", "127.0.0.1", "::1") else "require"
    return env


def _kept_grafana_password() -> str | None:
    """The password `devdiag setup` kept for role grafana; never generates one (that would not match the server)."""
    from orchestrator.secrets import secrets_file

    try:
        kept = json.loads(secrets_file().read_text()).get("grafana")
    except (OSError, ValueError, AttributeError):
        return None
    return kept if isinstance(kept, str) and kept else None


def _devdiag_host() -> str:
    from devdiag_db import config, embedded

    external = config.external_settings()
    if external is not None:
        host = external.params.get("host", "localhost")
        if host.startswith("/"):
            raise click.ClickException(
                "devdiag connects over a Unix socket, which Grafana cannot use: set DEVDIAG_PG_HOST to the host:port "
                "Grafana should connect to"
            )
        return f"{host}:{external.params.get('port', '5432')}"
    state = embedded.status()
    if not state.running:
        raise click.ClickException("set DEVDIAG_PG_HOST (host:port for Grafana), or start the embedded PostgreSQL")
    return f"127.0.0.1:{state.port}"


def resolved_datasource(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The data source with its variables filled in, ready for the HTTP API."""
    definition = datasource_definition()
    values = datasource_environment(env)
    missing = sorted(name for name in env_references(definition) if not values.get(name))
    if missing:
        raise click.ClickException(f"set {', '.join(missing)}: {datasource_file().name} reads them")
    return interpolate(definition, values)
