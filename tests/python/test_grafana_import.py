"""`devdiag grafana import` and `check` against a fake Grafana on 127.0.0.1 that checks requests as the real one.

No real Grafana runs here (none can be installed). The fake implements the documented endpoints
DevDiag uses (folders, data sources by uid and their health, dashboards by uid, alerting provisioning)
and refuses what Grafana refuses: a missing or wrong bearer token, payloads without their required
fields, unknown folder or data source uids, alert rules sent without X-Disable-Provenance, an empty
dashboard. It keeps state, so a second import can be seen to change nothing.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.grafana import (
    ALERT_FOLDER_UID,
    DASHBOARD_FOLDER_UID,
    DASHBOARD_UID,
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    alerting,
    files,
)
from orchestrator.grafana.cli import grafana

TOKEN = "glsa_FakeServiceAccountToken_0123456789abcdef"
DB_PASSWORD = "grafana-db-password-1"
RULE_UIDS = [r["uid"] for r in alerting.read_provisioning()["groups"][0]["rules"]]
NO_DATA_STATES = {"NoData", "Alerting", "OK", "KeepLast"}
ERROR_STATES = {"Error", "Alerting", "OK", "KeepLast"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


class Invalid(Exception):
    """A request the real Grafana would reject with 400."""


class FakeGrafana:
    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.passwords: dict[str, str] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.groups: dict[tuple[str, str], int] = {}
        self.db_password = DB_PASSWORD  # what PostgreSQL accepts from role grafana
        self.default_group_interval = 60
        self.requests: list[tuple[str, str]] = []
        self.rejected: list[str] = []
        self.forbidden: set[tuple[str, str]] = set()  # (method, path prefix) answered 403
        self.broken: dict[tuple[str, str], int] = {}  # (method, path) answered with a 5xx
        self.next_id = 1

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # --- routing ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Unauthorized", "messageId": "auth.unauthorized"}
        if any(method == m and path.startswith(p) for m, p in self.forbidden):
            return 403, {"message": "You'll need additional permissions to perform this action."}
        if (method, path) in self.broken:
            # a proxy error page that echoes the request, token included: it must be scrubbed
            return self.broken[(method, path)], {"message": f"upstream failed for Bearer {TOKEN}"}
        try:
            return self.route(method, path, headers, body)
        except Invalid as error:
            self.rejected.append(f"{method} {path}: {error}")
            return 400, {"message": str(error)}

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if path == "/api/org" and method == "GET":
            return 200, {"id": 1, "name": "Main Org."}
        if parts[:2] == ["api", "folders"]:
            return self.folder_api(method, parts[2:], body)
        if parts[:3] == ["api", "datasources", "uid"] or path == "/api/datasources":
            return self.datasource_api(method, parts[3:], body)
        if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
            return self.get_dashboard(parts[3])
        if path == "/api/dashboards/db" and method == "POST":
            return self.save_dashboard(body)
        if parts[:4] == ["api", "v1", "provisioning", "alert-rules"]:
            return self.rule_api(method, parts[4:], headers, body)
        if parts[:4] == ["api", "v1", "provisioning", "folder"] and len(parts) == 7 and parts[5] == "rule-groups":
            return self.group_api(method, parts[4], parts[6], headers, body)
        return 404, {"message": "Not found"}

    # --- folders ---------------------------------------------------------------------------------

    def folder_api(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "GET" and len(rest) == 1:
            folder = self.folders.get(rest[0])
            return (200, folder) if folder else (404, {"message": "folder not found"})
        if method == "POST" and not rest:
            if not isinstance(body.get("title"), str) or not body["title"] or not body.get("uid"):
                raise Invalid("folder needs uid and title")
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = {"id": self.new_id(), "uid": body["uid"], "title": body["title"], "version": 1}
            return 200, self.folders[body["uid"]]
        if method == "PUT" and len(rest) == 1 and rest[0] in self.folders:
            if not body.get("title") or not (body.get("overwrite") or body.get("version")):
                raise Invalid("folder update needs title and version or overwrite")
            folder = self.folders[rest[0]]
            folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        return 404, {"message": "folder not found"}

    # --- data sources ----------------------------------------------------------------------------

    def check_datasource(self, body: dict[str, Any]) -> None:
        for key in ("name", "type", "url", "access"):
            if not body.get(key):
                raise Invalid(f"data source field {key} is required")
        if body["type"] != DATASOURCE_TYPE:
            raise Invalid(f"unknown data source plugin {body['type']}")
        if not re.fullmatch(r"[\w.-]+:\d+", body["url"]):
            raise Invalid("PostgreSQL url must be host:port")
        if not (body.get("jsonData") or {}).get("database"):
            raise Invalid("jsonData.database is required")
        if "password" in body or "password" in (body.get("jsonData") or {}):
            raise Invalid("the password belongs in secureJsonData")

    def public_datasource(self, uid: str) -> dict[str, Any]:
        stored = copy.deepcopy(self.datasources[uid])
        stored["secureJsonFields"] = {"password": uid in self.passwords}
        return stored

    def datasource_api(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            self.check_datasource(body)
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            uid = body.get("uid") or "generated"
            secure = body.pop("secureJsonData", {}) or {}
            self.datasources[uid] = {
                **body,
                "id": self.new_id(),
                "uid": uid,
                "orgId": 1,
                "version": 1,
                "readOnly": False,
            }
            if secure.get("password"):
                self.passwords[uid] = secure["password"]
            return 200, {
                "datasource": self.public_datasource(uid),
                "id": self.datasources[uid]["id"],
                "name": body["name"],
            }
        if not rest or rest[0] not in self.datasources:
            return 404, {"message": "Data source not found"}
        uid = rest[0]
        if method == "GET" and len(rest) == 1:
            return 200, self.public_datasource(uid)
        if method == "GET" and rest[1:] == ["health"]:
            if self.passwords.get(uid) == self.db_password:
                return 200, {"status": "OK", "message": "Database Connection OK"}
            return 400, {"status": "ERROR", "message": 'pq: password authentication failed for user "grafana"'}
        if method == "PUT" and len(rest) == 1:
            self.check_datasource(body)
            secure = body.pop("secureJsonData", {}) or {}
            current = self.datasources[uid]
            self.datasources[uid] = {**current, **body, "uid": uid, "version": current["version"] + 1}
            if secure.get("password"):
                self.passwords[uid] = secure["password"]
            return 200, {"datasource": self.public_datasource(uid), "message": "Datasource updated"}
        return 404, {"message": "Not found"}

    # --- dashboards ------------------------------------------------------------------------------

    def get_dashboard(self, uid: str) -> tuple[int, Any]:
        if uid not in self.dashboards:
            return 404, {"message": "Dashboard not found"}
        stored = self.dashboards[uid]
        return 200, {"dashboard": copy.deepcopy(stored["dashboard"]), "meta": {"folderUid": stored["folderUid"]}}

    def save_dashboard(self, body: dict[str, Any]) -> tuple[int, Any]:
        board = body.get("dashboard") or {}
        if not board.get("uid") or not board.get("title"):
            raise Invalid("dashboard needs uid and title")
        if not board.get("panels"):
            raise Invalid("an empty dashboard (no panels)")
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                uid = target.get("datasource", {}).get("uid")
                if uid not in self.datasources:
                    raise Invalid(f"panel {panel.get('title')} uses unknown data source {uid}")
        folder = body.get("folderUid")
        if folder and folder not in self.folders:
            raise Invalid("folder not found")
        existing = self.dashboards.get(board["uid"])
        if existing and not body.get("overwrite"):
            return 412, {"status": "version-mismatch", "message": "The dashboard has been changed by someone else"}
        version = existing["dashboard"]["version"] + 1 if existing else 1
        saved = {**board, "id": self.new_id(), "version": version}
        self.dashboards[board["uid"]] = {"dashboard": saved, "folderUid": folder}
        slug = board["title"].lower().replace(" ", "-")
        return 200, {"id": saved["id"], "uid": board["uid"], "url": f"/d/{board['uid']}/{slug}", "status": "success",
                     "version": version, "slug": slug}  # fmt: skip

    # --- alerting provisioning -------------------------------------------------------------------

    def check_rule(self, rule: dict[str, Any], headers: dict[str, str]) -> None:
        if headers.get("x-disable-provenance") != "true":
            raise Invalid("expected X-Disable-Provenance: true, so the rule stays editable")
        for key in (
            "uid",
            "title",
            "folderUID",
            "ruleGroup",
            "condition",
            "data",
            "noDataState",
            "execErrState",
            "for",
        ):
            if rule.get(key) in (None, "", []):
                raise Invalid(f"alert rule field {key} is required")
        if rule["folderUID"] not in self.folders:
            raise Invalid(f"folder {rule['folderUID']} does not exist")
        if rule["noDataState"] not in NO_DATA_STATES or rule["execErrState"] not in ERROR_STATES:
            raise Invalid("bad noDataState or execErrState")
        for key in ("for", "keep_firing_for"):
            if key in rule and not DURATION.match(str(rule[key])):
                raise Invalid(f"{key} is not a duration")
        if "keepFiringFor" in rule:
            raise Invalid("unknown field keepFiringFor (the API spells it keep_firing_for)")
        refs = {q["refId"] for q in rule["data"]}
        if rule["condition"] not in refs:
            raise Invalid(f"condition {rule['condition']} is not one of the queries {sorted(refs)}")
        for query in rule["data"]:
            model = query["model"]
            if query["datasourceUid"] == "__expr__":
                if model.get("type") not in ("reduce", "threshold", "math", "classic_conditions"):
                    raise Invalid(f"expression {query['refId']} has no known type")
                if model.get("expression") not in refs:
                    raise Invalid(f"expression {query['refId']} reads unknown query {model.get('expression')}")
            else:
                if query["datasourceUid"] not in self.datasources:
                    raise Invalid(f"data source {query['datasourceUid']} not found")
                window = query.get("relativeTimeRange") or {}
                if not window.get("from", 0) > window.get("to", 0):
                    raise Invalid(f"invalid relative time range {window} for query {query['refId']}")
                if not model.get("rawSql"):
                    raise Invalid("a SQL query without rawSql")

    def store_rule(self, rule: dict[str, Any]) -> dict[str, Any]:
        key = (rule["folderUID"], rule["ruleGroup"])
        self.groups.setdefault(key, self.default_group_interval)
        stored = {**copy.deepcopy(rule), "id": self.new_id(), "orgID": 1, "provenance": "",
                  "updated": "2024-01-01T00:00:00Z", "keep_firing_for": rule.get("keep_firing_for", "0s")}  # fmt: skip
        self.rules[rule["uid"]] = stored
        return stored

    def rule_api(self, method: str, rest: list[str], headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            self.check_rule(body, headers)
            if body["uid"] in self.rules:
                return 409, {"message": "a rule with this uid exists"}
            return 201, self.store_rule(body)
        if len(rest) != 1:
            return 404, {"message": "Not found"}
        if rest[0] not in self.rules:
            return 404, {"message": "could not find alert rule"}
        if method == "GET":
            return 200, copy.deepcopy(self.rules[rest[0]])
        if method == "PUT":
            if body.get("uid") not in (None, rest[0]):
                raise Invalid("uid in body and path differ")
            self.check_rule(body, headers)
            return 200, self.store_rule(body)
        return 404, {"message": "Not found"}

    def group_api(self, method: str, folder: str, group: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if (folder, group) not in self.groups:
            return 404, {"message": "rule group not found"}
        rules = [r for r in self.rules.values() if (r["folderUID"], r["ruleGroup"]) == (folder, group)]
        if method == "GET":
            return 200, {"title": group, "folderUid": folder, "interval": self.groups[(folder, group)], "rules": rules}
        if method == "PUT":
            if headers.get("x-disable-provenance") != "true":
                raise Invalid("expected X-Disable-Provenance: true")
            if not isinstance(body.get("interval"), int) or body["interval"] <= 0:
                raise Invalid("interval must be a positive number of seconds")
            if sorted(r["uid"] for r in body.get("rules", [])) != sorted(r["uid"] for r in rules):
                raise Invalid("a group update must list the group's rules (others are deleted)")
            self.groups[(folder, group)] = body["interval"]
            return 200, {"title": group, "folderUid": folder, "interval": body["interval"], "rules": rules}
        return 404, {"message": "Not found"}


def serve(fake: FakeGrafana) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if raw and (body is None or self.headers.get("Content-Type") != "application/json"):
                status, payload = 400, {"message": "bad request data"}
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = fake.handle(self.command, self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def fake() -> Iterator[FakeGrafana]:
    state = FakeGrafana()
    server = serve(state)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(fake: FakeGrafana, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "GRAFANA_URL": fake.url,  # type: ignore[attr-defined]
        "GRAFANA_API_KEY": TOKEN,
        "DEVDIAG_PG_HOST": "db.internal:5432",
        "DEVDIAG_GRAFANA_PASSWORD": DB_PASSWORD,
        "DEVDIAG_GRAFANA_SSLMODE": "require",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def run(*args: str):
    result = CliRunner().invoke(grafana, list(args))
    assert TOKEN not in result.output
    return result


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    assert TOKEN not in result.output
    return errors[0]


# --- the happy path --------------------------------------------------------------------------------


def test_import_all_creates_everything_as_grafana_expects(fake: FakeGrafana, env: dict[str, str]) -> None:
    result = run("import", "all")
    assert result.exit_code == 0, result.output
    assert not fake.rejected, fake.rejected
    assert "token works: organisation Main Org. (id 1)" in result.output
    assert fake.requests[0] == ("GET", "/api/org"), "the token is verified before anything is written"

    source = fake.datasources[DATASOURCE_UID]
    assert source["type"] == DATASOURCE_TYPE and source["user"] == "grafana" and source["url"] == "db.internal:5432"
    assert source["jsonData"]["database"] == "devdiag" and source["jsonData"]["sslmode"] == "require"
    assert fake.passwords[DATASOURCE_UID] == DB_PASSWORD
    assert ("GET", f"/api/datasources/uid/{DATASOURCE_UID}/health") in fake.requests

    board = fake.dashboards[DASHBOARD_UID]
    local = files.read_dashboard()
    assert board["folderUid"] == DASHBOARD_FOLDER_UID
    assert board["dashboard"]["panels"] == local["panels"] and len(local["panels"]) >= 10
    assert board["dashboard"]["templating"] == local["templating"]

    assert fake.folders[ALERT_FOLDER_UID]["title"] == "devdiag-alerts"
    assert sorted(fake.rules) == sorted(RULE_UIDS) and len(RULE_UIDS) == 5
    for uid in RULE_UIDS:
        rule = fake.rules[uid]
        assert rule["folderUID"] == ALERT_FOLDER_UID and rule["provenance"] == ""
        assert rule["data"][0]["datasourceUid"] == DATASOURCE_UID
        assert rule["labels"]["severity"] in ("critical", "warning")
    assert fake.groups[(ALERT_FOLDER_UID, "devdiag")] == 60
    assert "created" in result.output


def test_second_import_changes_nothing(fake: FakeGrafana, env: dict[str, str]) -> None:
    assert run("import").exit_code == 0
    before = len(fake.requests)
    result = run("import", "all")
    assert result.exit_code == 0, result.output
    assert not [r for r in fake.requests[before:] if r[0] != "GET"], fake.requests[before:]
    lines = [line for line in result.output.splitlines() if not line.startswith("token works")]
    assert lines and all(line.startswith("unchanged") for line in lines), result.output


def test_each_part_imports_alone(fake: FakeGrafana, env: dict[str, str]) -> None:
    assert run("import", "datasource").exit_code == 0
    assert fake.datasources and not fake.dashboards and not fake.rules
    assert run("import", "dashboard").exit_code == 0
    assert fake.dashboards and not fake.rules
    assert run("import", "alerts").exit_code == 0
    assert len(fake.rules) == 5


def test_dry_run_writes_nothing(fake: FakeGrafana, env: dict[str, str]) -> None:
    result = run("import", "--dry-run")
    assert result.exit_code == 0, result.output
    assert not fake.writes
    assert "would create" in result.output and "dry run" in result.output
    assert run("import").exit_code == 0
    fake.requests.clear()
    result = run("import", "--dry-run")
    assert not fake.writes and "would" not in result.output


def test_drift_is_repaired_and_only_the_drift(fake: FakeGrafana, env: dict[str, str]) -> None:
    assert run("import").exit_code == 0
    fake.rules[RULE_UIDS[0]]["data"][2]["model"]["conditions"][0]["evaluator"]["params"] = [0.9]
    fake.rules[RULE_UIDS[1]]["for"] = "1h"
    fake.dashboards[DASHBOARD_UID]["dashboard"]["panels"][0]["title"] = "edited in the UI"
    fake.groups[(ALERT_FOLDER_UID, "devdiag")] = 10
    fake.requests.clear()
    result = run("import")
    assert result.exit_code == 0, result.output
    assert sorted(fake.writes) == sorted(
        [
            ("POST", "/api/dashboards/db"),
            ("PUT", f"/api/v1/provisioning/alert-rules/{RULE_UIDS[0]}"),
            ("PUT", f"/api/v1/provisioning/alert-rules/{RULE_UIDS[1]}"),
            ("PUT", f"/api/v1/provisioning/folder/{ALERT_FOLDER_UID}/rule-groups/devdiag"),
        ]
    )
    assert fake.dashboards[DASHBOARD_UID]["dashboard"]["panels"][0]["title"] == "Health"
    assert fake.groups[(ALERT_FOLDER_UID, "devdiag")] == 60
    assert not fake.rejected


def test_grafana_normalised_durations_are_not_drift(fake: FakeGrafana, env: dict[str, str]) -> None:
    assert run("import").exit_code == 0
    for rule in fake.rules.values():
        rule["keep_firing_for"] = {"30m": "30m0s", "0s": "0s"}.get(rule["keep_firing_for"], rule["keep_firing_for"])
        rule["for"] = "300s" if rule["for"] == "5m" else rule["for"]
    fake.requests.clear()
    assert run("import", "alerts").exit_code == 0
    assert not fake.writes


def test_a_rotated_database_password_is_sent_again(fake: FakeGrafana, env: dict[str, str], monkeypatch) -> None:
    assert run("import").exit_code == 0
    fake.db_password = "rotated-password-2"
    monkeypatch.setenv("DEVDIAG_GRAFANA_PASSWORD", "rotated-password-2")
    fake.requests.clear()
    result = run("import", "datasource")
    assert result.exit_code == 0, result.output
    assert fake.writes == [("PUT", f"/api/datasources/uid/{DATASOURCE_UID}")]
    assert fake.passwords[DATASOURCE_UID] == "rotated-password-2"
    assert "rotated-password-2" not in result.output and "updated" in result.output


def test_a_data_source_grafana_cannot_use_fails_the_import(fake: FakeGrafana, env: dict[str, str]) -> None:
    fake.db_password = "what-postgres-really-has"
    result = run("import", "datasource")
    error = one_line_error(result)
    assert "1 resource(s) failed: devdiag-postgres" in error
    assert "password authentication failed" in result.output and DB_PASSWORD not in result.output


# --- errors ----------------------------------------------------------------------------------------


def test_wrong_token_is_401_in_one_line(fake: FakeGrafana, env: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("GRAFANA_API_KEY", "glsa_revoked_token_999")
    result = CliRunner().invoke(grafana, ["import"])
    error = one_line_error(result)
    assert "401" in error and "GRAFANA_API_KEY" in error
    assert "glsa_revoked_token_999" not in result.output
    assert not fake.writes


def test_missing_permission_is_403(fake: FakeGrafana, env: dict[str, str]) -> None:
    fake.forbidden.add(("POST", "/api/datasources"))
    error = one_line_error(run("import", "datasource"))
    assert "403" in error and "POST /api/datasources" in error and "Admin" in error


def test_wrong_url_is_404(fake: FakeGrafana, env: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("GRAFANA_URL", fake.url + "/not-grafana")  # type: ignore[attr-defined]
    error = one_line_error(run("import"))
    assert "404" in error and "GRAFANA_URL" in error


def test_server_error_is_5xx_and_scrubbed(fake: FakeGrafana, env: dict[str, str]) -> None:
    fake.broken[("POST", "/api/dashboards/db")] = 502
    error = one_line_error(run("import", "dashboard"))
    assert "HTTP 502" in error and "POST /api/dashboards/db" in error
    assert "***" in error  # Grafana's message echoed the token; it is replaced


def test_unreachable_host(env: dict[str, str], monkeypatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("GRAFANA_URL", f"http://127.0.0.1:{port}")
    error = one_line_error(run("import"))
    assert "cannot reach Grafana" in error and "connection refused" in error


def test_missing_settings_are_named(monkeypatch) -> None:
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    monkeypatch.setenv("GRAFANA_API_KEY", TOKEN)
    error = one_line_error(run("check"))
    assert "set GRAFANA_URL" in error
    monkeypatch.setenv("GRAFANA_URL", "localhost:3000")
    assert "http(s)://" in one_line_error(run("check"))


def test_stale_generated_files_are_refused(env: dict[str, str], monkeypatch, tmp_path) -> None:
    stale = tmp_path / "devdiag-analytics.json"
    stale.write_text("{}")
    monkeypatch.setattr(files, "generated_files", lambda: (files.Generated(stale, lambda: "{ }"),))
    monkeypatch.setattr(files, "grafana_dir", lambda: tmp_path / "grafana")
    assert "devdiag grafana generate" in one_line_error(run("import"))


# --- check -----------------------------------------------------------------------------------------


def test_check_after_import_is_all_ok(fake: FakeGrafana, env: dict[str, str]) -> None:
    assert run("import").exit_code == 0
    fake.requests.clear()
    result = run("check")
    assert result.exit_code == 0, result.output
    assert not fake.writes
    lines = result.output.splitlines()
    assert lines[0].startswith("ok   token") and "Main Org." in lines[0]
    assert len(lines) == 1 + 1 + 1 + 5 and all(line.startswith("ok ") for line in lines), result.output


def test_check_fails_on_what_is_missing_or_broken(fake: FakeGrafana, env: dict[str, str]) -> None:
    assert run("import").exit_code == 0
    del fake.rules[RULE_UIDS[2]]
    fake.db_password = "changed-by-the-dba"
    fake.rules[RULE_UIDS[0]]["title"] = "renamed in the UI"
    result = run("check")
    assert result.exit_code == 1
    assert re.search(rf"^fail alert {RULE_UIDS[2]}\s+missing", result.output, re.M)
    assert re.search(r"^fail datasource\s+devdiag-postgres: pq: password authentication failed", result.output, re.M)
    assert re.search(rf"^warn alert {RULE_UIDS[0]}\s+differs", result.output, re.M)


def test_check_with_a_bad_token_says_so(fake: FakeGrafana, env: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("GRAFANA_API_KEY", "glsa_rotated_away")
    error = one_line_error(CliRunner().invoke(grafana, ["check"]))
    assert "401" in error
