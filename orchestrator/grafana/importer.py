"""``devdiag grafana import`` and ``check``: put the committed files into Grafana by uid, idempotently.

Every resource is read first (GET by uid) and written only when it is missing or differs in a field
we manage, so a second import changes nothing. Alert rules are written with provenance disabled
(``X-Disable-Provenance: true``) so that they stay editable in Grafana's UI. The token is verified
(``GET /api/org``) before anything else, and the data source's connection is tested by Grafana
(``/health``), which is also how a rotated database password is noticed and re-sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.grafana import (
    ALERT_FOLDER_TITLE,
    ALERT_FOLDER_UID,
    ALERT_GROUP,
    ALERT_GROUP_INTERVAL,
    DASHBOARD_FOLDER_TITLE,
    DASHBOARD_FOLDER_UID,
    DASHBOARD_UID,
    DATASOURCE_UID,
    alerting,
    files,
)
from orchestrator.grafana.api import Grafana, GrafanaError

NO_PROVENANCE = {"X-Disable-Provenance": "true"}
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31_536_000}
DURATION_KEYS = ("for", "keep_firing_for")


@dataclass(frozen=True)
class Action:
    kind: str
    uid: str
    verb: str  # created, updated, unchanged, would create, would update, failed
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verb != "failed"

    def line(self) -> str:
        return f"{self.verb:<14} {self.kind:<11} {self.uid}" + (f"  ({self.detail})" if self.detail else "")


def seconds(duration: str) -> float:
    """A Prometheus-style duration (``5m``, ``1h30m``, ``0s``) in seconds."""
    parts = _DURATION_PART.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def contains(current: Any, desired: Any) -> bool:
    """Whether ``current`` (what Grafana returned) holds everything in ``desired`` (what we would send).

    Grafana adds fields of its own (ids, versions, defaults), so only our keys are compared.
    """
    if isinstance(desired, Mapping):
        return isinstance(current, Mapping) and all(
            k in current and contains(current[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(contains(c, d) for c, d in zip(current, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(current, bool):
        return current is desired
    return current == desired


def _same_rule(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    for key in DURATION_KEYS:
        try:
            if seconds(str(current.get(key, "0s"))) != seconds(str(desired[key])):
                return False
        except ValueError:
            return False
    rest = {k: v for k, v in desired.items() if k not in DURATION_KEYS}
    return contains(current, rest)


class Importer:
    def __init__(self, client: Grafana, *, dry_run: bool = False, report: Callable[[Action], None] | None = None):
        self.client = client
        self.dry_run = dry_run
        self.actions: list[Action] = []
        self._report = report or (lambda action: None)

    def _record(self, kind: str, uid: str, verb: str, detail: str = "") -> Action:
        if self.dry_run and verb in ("created", "updated"):
            verb = "would " + verb.removesuffix("d")
        action = Action(kind, uid, verb, detail)
        self.actions.append(action)
        self._report(action)
        return action

    # --- token ----------------------------------------------------------------------------------

    def verify_token(self) -> str:
        """The organisation the token belongs to; raises GrafanaError when the token does not work."""
        org = self.client.get("/api/org")
        if not isinstance(org, Mapping) or "id" not in org:
            raise GrafanaError(f"{self.client.base} answered /api/org without an organisation: is GRAFANA_URL Grafana?")
        return f"{org.get('name', '?')} (id {org['id']})"

    # --- folders --------------------------------------------------------------------------------

    def folder(self, uid: str, title: str) -> None:
        current = self.client.get_or_none(f"/api/folders/{uid}")
        if current is None:
            if not self.dry_run:
                self.client.request("POST", "/api/folders", {"uid": uid, "title": title})
            self._record("folder", uid, "created", title)
        elif current.get("title") != title:
            if not self.dry_run:
                body = {"title": title, "version": current.get("version"), "overwrite": True}
                self.client.request("PUT", f"/api/folders/{uid}", body)
            self._record("folder", uid, "updated", f"title {title!r}")
        else:
            self._record("folder", uid, "unchanged")

    # --- data source ----------------------------------------------------------------------------

    def datasource(self) -> None:
        source = files.resolved_datasource()
        payload = {
            "name": source["name"],
            "type": source["type"],
            "uid": source["uid"],
            "access": source.get("access", "proxy"),
            "url": source["url"],
            "user": source["user"],
            "basicAuth": False,
            "isDefault": bool(source.get("isDefault", False)),
            "jsonData": source.get("jsonData", {}),
            "secureJsonData": source.get("secureJsonData", {}),
        }
        managed = {k: v for k, v in payload.items() if k != "secureJsonData"}
        path = f"/api/datasources/uid/{DATASOURCE_UID}"
        current = self.client.get_or_none(path)
        if current is None:
            if not self.dry_run:
                self.client.request("POST", "/api/datasources", payload)
            self._finish_datasource("created")
            return
        stored_password = bool((current.get("secureJsonFields") or {}).get("password"))
        if contains(current, managed) and stored_password:
            if self.dry_run:
                self._record("datasource", DATASOURCE_UID, "unchanged", "connection not tested in a dry run")
                return
            healthy, message = self.datasource_health()
            if healthy:
                self._record("datasource", DATASOURCE_UID, "unchanged", message)
                return
            # Same settings but Grafana cannot log in: the password was rotated; send the current one.
        if not self.dry_run:
            self.client.request("PUT", path, {**payload, "version": current.get("version")})
        self._finish_datasource("updated")

    def _finish_datasource(self, verb: str) -> None:
        if self.dry_run:
            self._record("datasource", DATASOURCE_UID, verb)
            return
        healthy, message = self.datasource_health()
        if healthy:
            self._record("datasource", DATASOURCE_UID, verb, message)
        else:
            self._record(
                "datasource",
                DATASOURCE_UID,
                "failed",
                f"{verb}, but Grafana cannot query PostgreSQL: {message}; check DEVDIAG_PG_HOST, "
                "DEVDIAG_GRAFANA_SSLMODE and the grafana role's password",
            )

    def datasource_health(self) -> tuple[bool, str]:
        response = self.client.request("GET", f"/api/datasources/uid/{DATASOURCE_UID}/health", expect=(400, 500, 503))
        body = response.body if isinstance(response.body, Mapping) else {}
        ok = response.status == 200 and str(body.get("status", "")).upper() == "OK"
        return ok, str(body.get("message") or f"health check HTTP {response.status}").replace("\n", " ")

    # --- dashboard ------------------------------------------------------------------------------

    def dashboard(self) -> None:
        local = files.read_dashboard()
        if local.get("uid") != DASHBOARD_UID or not local.get("panels"):
            raise GrafanaError(f"{files.dashboard_file()} has no panels or another uid: run `devdiag grafana generate`")
        self.folder(DASHBOARD_FOLDER_UID, DASHBOARD_FOLDER_TITLE)
        desired = {k: v for k, v in local.items() if k not in ("id", "version")}
        current = self.client.get_or_none(f"/api/dashboards/uid/{DASHBOARD_UID}")
        if current is not None:
            in_folder = (current.get("meta") or {}).get("folderUid") == DASHBOARD_FOLDER_UID
            if in_folder and contains(current.get("dashboard"), desired):
                self._record("dashboard", DASHBOARD_UID, "unchanged", f"{len(local['panels'])} panels")
                return
        if not self.dry_run:
            body = {
                "dashboard": {**desired, "id": None},
                "folderUid": DASHBOARD_FOLDER_UID,
                "overwrite": True,
                "message": "devdiag grafana import",
            }
            saved = self.client.request("POST", "/api/dashboards/db", body).body or {}
            if saved.get("uid") != DASHBOARD_UID:
                raise GrafanaError(f"Grafana saved the dashboard under uid {saved.get('uid')!r}, not {DASHBOARD_UID}")
        verb = "created" if current is None else "updated"
        self._record("dashboard", DASHBOARD_UID, verb, f"{len(local['panels'])} panels")

    # --- alert rules ----------------------------------------------------------------------------

    def alerts(self) -> None:
        rules = alerting.api_rules(alerting.read_provisioning())
        expected = len(alerting.load_rules())
        if len(rules) != expected or not all(rule["data"] for rule in rules):
            raise GrafanaError(
                f"{alerting.provisioning_file()} holds {len(rules)} rules, alert_rules.yaml {expected}: "
                "run `devdiag grafana generate`"
            )
        self.folder(ALERT_FOLDER_UID, ALERT_FOLDER_TITLE)
        for rule in rules:
            path = f"/api/v1/provisioning/alert-rules/{rule['uid']}"
            current = self.client.get_or_none(path)
            if current is not None and _same_rule(current, rule):
                self._record("alert rule", rule["uid"], "unchanged", rule["title"])
                continue
            if not self.dry_run:
                if current is None:
                    self.client.request("POST", "/api/v1/provisioning/alert-rules", rule, headers=NO_PROVENANCE)
                else:
                    self.client.request("PUT", path, rule, headers=NO_PROVENANCE)
            self._record("alert rule", rule["uid"], "created" if current is None else "updated", rule["title"])
        self._rule_group_interval()

    def _rule_group_interval(self) -> None:
        path = f"/api/v1/provisioning/folder/{ALERT_FOLDER_UID}/rule-groups/{ALERT_GROUP}"
        wanted = int(seconds(ALERT_GROUP_INTERVAL))
        group = None if self.dry_run and self._any_pending() else self.client.get_or_none(path)
        if group is not None and group.get("interval") == wanted:
            self._record("rule group", ALERT_GROUP, "unchanged", f"every {ALERT_GROUP_INTERVAL}")
            return
        if not self.dry_run:
            if group is None:
                raise GrafanaError(f"Grafana has no rule group {ALERT_GROUP} after the import: {path} is missing")
            self.client.request("PUT", path, {**group, "interval": wanted}, headers=NO_PROVENANCE)
        self._record("rule group", ALERT_GROUP, "updated", f"every {ALERT_GROUP_INTERVAL}")

    def _any_pending(self) -> bool:
        return any(a.verb == "would create" and a.kind == "alert rule" for a in self.actions)


# --- check ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    status: str  # ok, warn, fail
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.what:<22} {self.detail}"


def check(client: Grafana) -> list[Finding]:
    """The runbook's token test after a rotation, and that everything DevDiag imported is there."""
    importer = Importer(client, dry_run=True)
    findings = [Finding("ok", "token", f"works: organisation {importer.verify_token()}")]

    source = client.get_or_none(f"/api/datasources/uid/{DATASOURCE_UID}")
    if source is None:
        findings.append(Finding("fail", "datasource", f"{DATASOURCE_UID} missing: devdiag grafana import datasource"))
    else:
        healthy, message = importer.datasource_health()
        findings.append(Finding("ok" if healthy else "fail", "datasource", f"{DATASOURCE_UID}: {message}"))

    board = client.get_or_none(f"/api/dashboards/uid/{DASHBOARD_UID}")
    local = files.read_dashboard()
    if board is None:
        findings.append(Finding("fail", "dashboard", f"{DASHBOARD_UID} missing: devdiag grafana import dashboard"))
    else:
        panels = len((board.get("dashboard") or {}).get("panels") or [])
        desired = {k: v for k, v in local.items() if k not in ("id", "version")}
        same = contains(board.get("dashboard"), desired)
        status = "ok" if panels and same else ("warn" if panels else "fail")
        note = "" if same else ", differs from the repository: devdiag grafana import dashboard"
        findings.append(Finding(status, "dashboard", f"{board['dashboard'].get('title')!r}, {panels} panels{note}"))

    rules = alerting.api_rules(alerting.read_provisioning())
    for rule in rules:
        current = client.get_or_none(f"/api/v1/provisioning/alert-rules/{rule['uid']}")
        if current is None:
            findings.append(Finding("fail", f"alert {rule['uid']}", "missing: devdiag grafana import alerts"))
        elif current.get("folderUID") != ALERT_FOLDER_UID:
            findings.append(Finding("warn", f"alert {rule['uid']}", f"in folder {current.get('folderUID')!r}"))
        elif not _same_rule(current, rule):
            findings.append(Finding("warn", f"alert {rule['uid']}", "differs from the repository"))
        else:
            findings.append(Finding("ok", f"alert {rule['uid']}", f"{rule['title']} in {ALERT_FOLDER_UID}"))
    return findings
