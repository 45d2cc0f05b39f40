"""Grafana as code: provisioning files, the DevDiag Analytics dashboard, alert rules, import and preview.

Every uid lives here so that files, importer, checks and tests agree on them.
"""

from __future__ import annotations

from pathlib import Path

DATASOURCE_UID = "devdiag-postgres"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_NAME = "DevDiag PostgreSQL"
DATASOURCE_REF = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}

DASHBOARD_UID = "devdiag-analytics"
DASHBOARD_TITLE = "DevDiag Analytics"
DASHBOARD_FOLDER_UID = "devdiag"
DASHBOARD_FOLDER_TITLE = "DevDiag"

ALERT_FOLDER_UID = "devdiag-alerts"
ALERT_FOLDER_TITLE = "devdiag-alerts"  # the runbook looks for the five rules in a folder of this name
ALERT_GROUP = "devdiag"
ALERT_GROUP_INTERVAL = "1m"

# The public views are the only relations that role `grafana` may read.
from orchestrator.contract import PUBLIC_VIEWS  # noqa: E402, F401  (re-exported for the grafana modules)


def grafana_dir() -> Path:
    """The repository's ``grafana/`` folder (provisioning files and dashboard JSON)."""
    from devdiag_db.config import project_dir

    return project_dir() / "grafana"
