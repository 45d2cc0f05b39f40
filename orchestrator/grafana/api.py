"""A small client for Grafana's HTTP API: bearer token, JSON, one-line errors that never carry the token.

``GRAFANA_URL`` is Grafana's root URL (``http://localhost:3000``); ``GRAFANA_API_KEY`` a service
account token, sent only in the Authorization header and scrubbed from anything printed.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import click

TIMEOUT_S = 15
USER_AGENT = "devdiag-grafana-import"


class GrafanaError(click.ClickException):
    """One line: what failed and what to do. Never contains the token."""


class NotFound(GrafanaError):
    """404 on a resource we asked for by uid: it does not exist (yet)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: Any


def settings_from_env() -> tuple[str, str]:
    url = os.environ.get("GRAFANA_URL", "").strip()
    key = os.environ.get("GRAFANA_API_KEY", "").strip()
    missing = [name for name, value in (("GRAFANA_URL", url), ("GRAFANA_API_KEY", key)) if not value]
    if missing:
        raise GrafanaError(
            f"set {' and '.join(missing)}: Grafana's root URL and a service account token (role Admin, "
            "or Editor plus data source permissions)"
        )
    return url, key


class Grafana:
    def __init__(self, url: str, token: str, *, timeout: float = TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GrafanaError(f"GRAFANA_URL must be http(s)://host[:port], got {self._scrub(url, token)!r}")
        self.base = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls) -> Grafana:
        return cls(*settings_from_env())

    def _scrub(self, text: str, token: str | None = None) -> str:
        secret = token if token is not None else self._token
        return text.replace(secret, "***") if secret else text

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (),
    ) -> Response:
        """Send one request; HTTP errors raise GrafanaError unless their status is in ``expect``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", USER_AGENT)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Response(response.status, _json(response.read()))
        except urllib.error.HTTPError as error:
            body = _json(error.read())
            if error.code in expect:
                return Response(error.code, body)
            raise self._http_error(method, path, error.code, body) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise GrafanaError(
                self._scrub(
                    f"cannot reach Grafana at {self.base} ({_reason(reason)}): check GRAFANA_URL and that Grafana runs"
                )
            ) from None

    def _http_error(self, method: str, path: str, status: int, body: Any) -> GrafanaError:
        said = body.get("message") if isinstance(body, dict) else None
        detail = f": {said}" if said else ""
        where = f"{method} {path}"
        if status == 401:
            text = (
                f"Grafana refused the token (401 on {where}): GRAFANA_API_KEY is wrong, expired or revoked; "
                "create a new service account token"
            )
        elif status == 403:
            text = (
                f"the token may not do this (403 on {where}{detail}): give the service account the Admin role "
                "(data sources need it) or the missing permission"
            )
        elif status == 404:
            text = (
                f"Grafana has no {path} (404{detail}): check GRAFANA_URL (Grafana's root URL) and its version (>= 11)"
            )
            return NotFound(self._scrub(text))
        elif status == 409:
            text = f"conflict on {where} (409{detail}): a resource with the same name exists under another uid"
        elif status >= 500:
            text = f"Grafana failed on {where} (HTTP {status}{detail}): retry, or read Grafana's server log"
        else:
            text = f"Grafana rejected {where} (HTTP {status}{detail})"
        return GrafanaError(self._scrub(text.replace("\n", " ")))

    def get(self, path: str) -> Any:
        return self.request("GET", path).body

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except NotFound:
            return None


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"message": raw[:200].decode(errors="replace").strip()}


def _reason(reason: object) -> str:
    text = str(reason)
    if isinstance(reason, ConnectionRefusedError) or "refused" in text.lower():
        return "connection refused"
    if isinstance(reason, TimeoutError | socket.timeout) or "timed out" in text.lower():
        return "timed out"
    if isinstance(reason, socket.gaierror) or "name or service not known" in text.lower():
        return "unknown host"
    return text.splitlines()[0] if text else type(reason).__name__
