"""URL probes against HTTP(S) servers started on loopback by the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import ipaddress
import json
import random
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.client import Client

from mcp_devdiag.probes import AllowList, ProbeRefused, probe
from mcp_devdiag.server import build_server
from mcp_devdiag.settings import DatabaseTarget, ServerSettings

APP = "http://app.test"
COOKIE_SECRET = "topsecretcookievalue"

# path -> (status, headers, body) for GET; OPTIONS answers are in Handler.do_OPTIONS.
ROUTES: dict[str, tuple[int, dict[str, str], str]] = {
    "/ok": (200, {"Content-Type": "text/html", "Content-Security-Policy": "default-src 'self'"}, "<p>fine</p>"),
    "/api/open": (200, {"Content-Type": "application/json", "Access-Control-Allow-Origin": APP}, "{}"),
    "/api/closed": (200, {"Content-Type": "application/json"}, "{}"),
    "/embed-deny": (200, {"Content-Type": "text/html", "X-Frame-Options": "DENY"}, "<p>x</p>"),
    "/embed-ok": (200, {"Content-Type": "text/html", "Content-Security-Policy": f"frame-ancestors {APP}"}, "<p>x</p>"),
    "/inline": (
        200,
        {"Content-Type": "text/html", "Content-Security-Policy": "script-src 'self'"},
        "<html><script>alert(1)</script></html>",
    ),
    "/inline-nonce": (
        200,
        {"Content-Type": "text/html", "Content-Security-Policy": "script-src 'nonce-r4nd0m'"},
        '<html><script nonce="r4nd0m">alert(1)</script></html>',
    ),
    "/cookies": (200, {"Set-Cookie": f"sid={COOKIE_SECRET}; SameSite=None; Path=/"}, "ok"),
    "/go": (302, {"Location": "/ok"}, ""),
    "/mixed": (200, {"Content-Type": "text/html"}, '<script src="http://cdn.example/lib.js"></script>'),
}


class Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str]
    away: str = ""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, headers: dict[str, str], body: str) -> None:
        data = body.encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/away":
            return self._send(302, {"Location": self.away}, "")
        self._send(*ROUTES.get(self.path, (404, {}, "not found")))

    def do_OPTIONS(self) -> None:
        self.hits.append("OPTIONS " + self.path)
        if self.path == "/api/open":
            return self._send(
                204,
                {
                    "Access-Control-Allow-Origin": APP,
                    "Access-Control-Allow-Methods": "GET, POST, PUT",
                    "Access-Control-Allow-Headers": "content-type, authorization",
                },
                "",
            )
        self._send(405, {}, "")


def serve(host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> tuple[int, list[str], callable]:
    hits: list[str] = []
    handler = type("H", (Handler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], hits, lambda: (server.shutdown(), server.server_close())


@pytest.fixture(scope="module")
def web() -> Iterator[tuple[int, list[str], list[str], int]]:
    other_port, other_hits, stop_other = serve("127.0.0.2")
    port, hits, stop = serve()
    Handler.away = f"http://127.0.0.2:{other_port}/"
    yield port, hits, other_hits, other_port
    stop()
    stop_other()


LOCAL = AllowList.parse("localhost, 127.0.0.1")


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


# --- the allow-list -------------------------------------------------------------------------------


def test_allow_list_parses_globs_urls_and_networks():
    allow = AllowList.parse("*.example.com, api.test:8443 https://staging.example.org/api/* 10.0.0.0/8")
    assert allow.hosts == ("*.example.com", "api.test:8443")
    assert allow.urls == ("https://staging.example.org/api/*",)
    assert allow.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    for bad in ("ftp://x.example.com/*", "exa%mple", "host:port", "<script>"):
        with pytest.raises(ValueError):
            AllowList.parse(bad)


@pytest.mark.parametrize(
    ("url", "allow", "needle"),
    [
        ("https://example.com/", "", "probes are off"),
        ("https://evil.example.net/", "*.example.com", "not in DEVDIAG_ALLOW_PROBES"),
        ("https://user:pw@api.example.com/", "*.example.com", "credentials"),
        ("ftp://files.example.com/", "*.example.com", "only http"),
        ("http://127.0.0.1:9/", "*", "non-public address"),
        ("http://localhost:9/", "*", "non-public address"),  # a glob matched, DNS said loopback
        ("http://[::1]:9/", "*", "non-public address"),
        ("http://169.254.169.254/latest/meta-data/", "*", "non-public address"),  # cloud metadata
        ("http://localhost:9/", "localhost:10", "not in DEVDIAG_ALLOW_PROBES"),
        ("http://localhost:9/other", "http://localhost:9/api/*", "not in DEVDIAG_ALLOW_PROBES"),
    ],
)
def test_refused_before_any_connection(url, allow, needle):
    with pytest.raises(ProbeRefused, match=needle):
        probe(url, AllowList.parse(allow), timeout=2)


@pytest.mark.parametrize("allow", ["localhost", "127.0.0.0/8", "http://localhost:{port}/api/*", "localhost:{port}"])
def test_private_addresses_need_an_explicit_entry(web, allow):
    port = web[0]
    report = probe(f"http://localhost:{port}/api/open", AllowList.parse(allow.format(port=port)), timeout=3)
    assert report.http_status == 200


# --- HTTP checks ----------------------------------------------------------------------------------


def test_a_healthy_page_has_no_findings(web):
    report = probe(f"http://127.0.0.1:{web[0]}/ok", LOCAL, timeout=3)
    assert report.findings == []
    checks = {c.name: c for c in report.checks}
    assert checks["http"].status == "ok" and checks["cors"].status == "skipped"
    assert "default-src 'self'" in checks["csp"].detail


def test_cors_allowed_origin_passes_and_preflight_passes(web):
    report = probe(f"http://127.0.0.1:{web[0]}/api/open", LOCAL, timeout=3, origin=APP, method="PUT")
    assert report.findings == []
    assert {c.name: c.status for c in report.checks}["preflight"] == "ok"


def test_cors_missing_header_and_failing_preflight(web):
    report = probe(f"http://127.0.0.1:{web[0]}/api/closed", LOCAL, timeout=3, origin=APP)
    assert codes(report) == ["CORS_BLOCKED", "CORS_PREFLIGHT_FAILED"]
    assert APP in report.findings[0].evidence and "405" in report.findings[1].evidence
    assert "OPTIONS /api/closed" in web[1]


def test_framing_checks_use_the_embedding_origin(web):
    denied = probe(f"http://127.0.0.1:{web[0]}/embed-deny", LOCAL, timeout=3, origin=APP)
    assert "FRAME_EMBED_BLOCKED" in codes(denied) and "DENY" in denied.findings[0].evidence
    allowed = probe(f"http://127.0.0.1:{web[0]}/embed-ok", LOCAL, timeout=3, origin=APP)
    assert "FRAME_EMBED_BLOCKED" not in codes(allowed)


def test_inline_script_against_csp(web):
    assert codes(probe(f"http://127.0.0.1:{web[0]}/inline", LOCAL, timeout=3)) == ["CSP_INLINE_SCRIPT_BLOCKED"]
    assert codes(probe(f"http://127.0.0.1:{web[0]}/inline-nonce", LOCAL, timeout=3)) == []


def test_cookie_attributes_are_checked_and_values_never_shown(web):
    report = probe(f"http://127.0.0.1:{web[0]}/cookies", LOCAL, timeout=3)
    assert codes(report) == ["COOKIE_REJECTED"]
    assert "sid" in report.findings[0].evidence and "SameSite=None without Secure" in report.findings[0].evidence
    assert COOKIE_SECRET not in json.dumps([c.__dict__ for c in report.checks])


def test_redirects_followed_on_the_same_host_only(web):
    port, _, other_hits, _ = web
    same = probe(f"http://127.0.0.1:{port}/go", LOCAL, timeout=3)
    assert same.final_url == f"http://127.0.0.1:{port}/ok" and same.http_status == 200
    away = probe(f"http://127.0.0.1:{port}/away", AllowList.parse("127.0.0.0/8"), timeout=3)
    assert away.http_status == 302 and other_hits == []
    assert any(c.name == "redirect" and "not followed" in c.detail for c in away.checks)


def test_timeout_bounds_the_probe(web):
    started = time.perf_counter()
    report = probe(f"http://127.0.0.1:{web[0]}/slow", LOCAL, timeout=0.5)
    assert codes(report) == ["REQUEST_TIMEOUT"]
    assert time.perf_counter() - started < 2.0


def test_connection_refused_and_dns_failure():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert codes(probe(f"http://127.0.0.1:{closed}/", LOCAL, timeout=2)) == ["CONNECTION_REFUSED"]
    started = time.perf_counter()
    report = probe("http://no-such-host.invalid/", AllowList.parse("*.invalid"), timeout=2)
    assert codes(report) in (["DNS_RESOLUTION_FAILED"], ["REQUEST_TIMEOUT"])
    assert time.perf_counter() - started < 4


# --- TLS ------------------------------------------------------------------------------------------


class Pki:
    """A test CA and leaf certificates, written as PEM files (cryptography)."""

    def __init__(self, directory: Path) -> None:
        x509 = pytest.importorskip("cryptography.x509")
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.x509, self.hashes, self.serialization, self.ec = x509, hashes, serialization, ec
        self.dir = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "DevDiag test CA")])
        self.ca_name = name
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def leaf(self, label: str, *, dns: str = "localhost", expired: bool = False, self_signed: bool = False):
        x509 = self.x509
        key = self.ec.generate_private_key(self.ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, dns)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=10))
            .not_valid_after(now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .sign(key if self_signed else self.ca_key, self.hashes.SHA256())
        )
        cert_file, key_file = self.dir / f"{label}.pem", self.dir / f"{label}.key"
        cert_file.write_bytes(cert.public_bytes(self.serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                self.serialization.Encoding.PEM,
                self.serialization.PrivateFormat.PKCS8,
                self.serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Iterator[dict[str, int]]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    servers = {
        label: serve(context=pki.leaf(label, **options))
        for label, options in {
            "valid": {},
            "expired": {"expired": True},
            "wrong-host": {"dns": "other.example"},
            "self-signed": {"self_signed": True},
        }.items()
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_CERT_FILE", str(pki.ca_file))  # the probe trusts the test CA, as a corporate CA
        yield {label: port for label, (port, _, _) in servers.items()}
    for _, _, stop in servers.values():
        stop()


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("valid", []),
        ("expired", ["TLS_CERT_EXPIRED"]),
        ("wrong-host", ["TLS_HOSTNAME_MISMATCH"]),
        ("self-signed", ["TLS_CERT_UNTRUSTED"]),
    ],
)
def test_tls_certificate_problems(tls, server, expected):
    report = probe(f"https://localhost:{tls[server]}/ok", LOCAL, timeout=3)
    assert codes(report) == expected
    tls_check = next(c for c in report.checks if c.name == "tls")
    assert ("expires" in tls_check.detail) if not expected else (tls_check.status == "fail")
    assert report.http_status == 200  # headers are still read, over an unverified connection


def test_headers_checked_behind_a_bad_certificate_and_mixed_content(tls):
    report = probe(f"https://localhost:{tls['expired']}/embed-deny", LOCAL, timeout=3, origin=APP)
    assert codes(report)[0] == "TLS_CERT_EXPIRED" and "FRAME_EMBED_BLOCKED" in codes(report)
    mixed = probe(f"https://localhost:{tls['valid']}/mixed", LOCAL, timeout=3)
    assert codes(mixed) == ["MIXED_CONTENT"] and "http://cdn.example/lib.js" in mixed.findings[0].evidence


# --- through diagnose -----------------------------------------------------------------------------


def test_diagnose_probes_allowed_urls_and_merges_findings(pg, web, tmp_path):
    settings = ServerSettings(
        tenant=f"probe-{uuid.uuid4().hex[:8]}",
        environment="linux/python-3.12",
        database=DatabaseTarget(pg),
        spool_dir=tmp_path / "spool",
        allow_probes=LOCAL,
        probe_timeout_s=3,
    )
    server, app = build_server(settings, rng=random.Random(1))
    error = (
        f"Access to fetch at 'http://127.0.0.1:{web[0]}/api/closed' from origin '{APP}' has been blocked by CORS "
        "policy: No 'Access-Control-Allow-Origin' header is present on the requested resource."
    )

    async def go():
        async with Client(server) as client:
            return (
                await client.call_tool(
                    "diagnose", {"error_text": error, "url": f"http://127.0.0.1:{web[0]}/api/closed"}
                )
            ).structured_content

    try:
        result = asyncio.run(go())
    finally:
        app.recorder.close()
    found = {f["code"]: f for f in result["findings"]}
    assert set(found) == {"CORS_BLOCKED", "CORS_PREFLIGHT_FAILED"}
    assert len(found["CORS_BLOCKED"]["evidence"]) == 2  # the pasted message and what the probe saw
    assert result["probe"]["status"] == "done" and result["probe"]["http_status"] == 200
    assert any(c["name"] == "preflight" and c["status"] == "fail" for c in result["probe"]["checks"])
    assert result["recorded"] == "database"
