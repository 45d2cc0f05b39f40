"""URL probes against HTTP(S) servers started on loopback by the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import ipaddress
import json
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from mcp.client import Client

from mcp_devdiag import probes
from mcp_devdiag.probes import AllowList, ProbeRefused, check_origin, parse_url, probe
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
    hosts: ClassVar[list[str]] = []  # the Host header of every request
    locations: ClassVar[dict[str, str]] = {}  # path -> Location of a 302, set once the ports are known

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
        self.hosts.append(self.headers.get("Host", ""))
        if self.path == "/slow":
            time.sleep(3)
        if self.path in self.locations:
            return self._send(302, {"Location": self.locations[self.path]}, "")
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
    Handler.locations = {
        "/away": f"http://127.0.0.2:{other_port}/",
        "/scheme-and-port": f"https://127.0.0.1:{other_port}/ok",  # same host, another scheme and port
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
        "/to-credentials": f"http://user:pw@127.0.0.1:{port}/ok",
        "/outside": "/admin",
        "/loop": "/loop",
    }
    yield port, hits, other_hits, other_port
    stop()
    stop_other()


LOCAL = AllowList.parse("localhost, 127.0.0.1")


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


@pytest.fixture(autouse=True)
def attempts(monkeypatch) -> list[tuple[str, int]]:
    """Every connection a probe opens. One to anything but loopback fails the test before a packet leaves,
    so a test can never reach 169.254.x.x or any other host, even when the code under test is wrong."""
    seen: list[tuple[str, int]] = []
    real = probes._open_socket

    def guarded(address, port: int, timeout: float) -> socket.socket:
        seen.append((str(address), port))
        if not _loopback(str(address)):
            raise AssertionError(f"a probe tried to connect to {address}:{port}")
        return real(address, port, timeout)

    monkeypatch.setattr(probes, "_open_socket", guarded)
    return seen


@pytest.fixture(autouse=True)
def lookups(monkeypatch) -> list[str]:
    """Every name a probe asks DNS for. Only localhost is resolved (from /etc/hosts): no test sends a
    DNS query anywhere, whatever the code under test asks for."""
    seen: list[str] = []
    real = probes._getaddrinfo

    def recording(host: str, *args, **kwargs):
        seen.append(host)
        if host != "localhost":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(probes, "_getaddrinfo", recording)
    return seen


def fake_dns(monkeypatch, *answers: list[str]) -> list[str]:
    """Answer the probe's lookups from ``answers`` in turn (no DNS traffic); returns the names asked."""
    asked: list[str] = []
    queue = list(answers)

    def answer(host: str, port: int, *args, **kwargs):
        asked.append(host)
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(probes, "_getaddrinfo", answer)
    return asked


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


# --- the allow-list -------------------------------------------------------------------------------


def test_allow_list_parses_globs_urls_and_networks():
    allow = AllowList.parse("*.example.com, api.test:8443 https://staging.example.org/api/* 10.0.0.0/8")
    assert allow.hosts == ("*.example.com", "api.test:8443")
    assert allow.urls == ("https://staging.example.org/api/*",)
    assert allow.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    bad_entries = (
        "ftp://x.example.com/*",
        "exa%mple",
        "host:port",
        "<script>",
        "https://user@x.example.com/*",
        "https://x.example.com:99999/",
        "*.example.com:0",
        "https://*.example.com/a\\b",
    )
    for bad in bad_entries:
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
        ("http://169.254.169.254/latest/meta-data/", "*", "never go"),  # cloud metadata
        ("http://localhost:9/", "localhost:10", "not in DEVDIAG_ALLOW_PROBES"),
        ("http://localhost:9/other", "http://localhost:9/api/*", "not in DEVDIAG_ALLOW_PROBES"),
        ("https://evil.test/.example.com/", "https://*.example.com/*", "not in DEVDIAG_ALLOW_PROBES"),
        ("https://evil.test/?.example.com/", "https://*.example.com/*", "not in DEVDIAG_ALLOW_PROBES"),
        ("http://a.example.com/", "https://*.example.com/*", "not in DEVDIAG_ALLOW_PROBES"),
        ("https://a.example.com:8443/", "https://*.example.com/*", "not in DEVDIAG_ALLOW_PROBES"),
    ],
)
def test_refused_before_any_connection(url, allow, needle, attempts):
    with pytest.raises(ProbeRefused, match=needle) as refused:
        probe(url, AllowList.parse(allow), timeout=2)
    assert attempts == [] and "\n" not in str(refused.value)


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


def test_diagnose_refuses_a_bad_origin_in_one_line(pg, web, tmp_path, attempts):
    settings = ServerSettings(
        tenant=f"probe-{uuid.uuid4().hex[:8]}",
        environment="linux/python-3.12",
        database=DatabaseTarget(pg),
        spool_dir=tmp_path / "spool",
        allow_probes=LOCAL,
        probe_timeout_s=3,
    )
    server, app = build_server(settings, rng=random.Random(1))
    url = f"http://127.0.0.1:{web[0]}/api/open"

    async def go():
        async with Client(server) as client:
            alone = await client.call_tool("diagnose", {"url": url, "origin": f"{APP}\r\nX-Injected: 1"})
            with_text = await client.call_tool(
                "diagnose", {"error_text": "TypeError: Failed to fetch", "url": url, "origin": f"{APP}/page"}
            )
            return alone, with_text

    try:
        alone, with_text = asyncio.run(go())
    finally:
        app.recorder.close()
    message = " ".join(getattr(c, "text", "") for c in alone.content)
    assert alone.is_error and "line break" in message and "scheme://host[:port]" in message
    assert "\n" not in message.strip()
    probe_result = with_text.structured_content["probe"]
    assert probe_result["status"] == "refused" and "scheme://host[:port]" in probe_result["detail"]
    assert attempts == []


# --- the address guard: metadata and special-purpose addresses ----------------------------------

METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254./",  # trailing dot
    "http://2852039166/",  # decimal
    "http://0xa9fea9fe/",  # hex
    "http://0xA9.0xFE.0xA9.0xFE/",
    "http://169.254.43518/",  # short forms
    "http://169.43518/".replace("43518", str(254 * 65536 + 43518)),
    "http://0251.0376.0251.0376/",  # octal
    "http://0251.254.0xa9.0376/",  # mixed
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated (SIIT)
    "http://[::169.254.169.254]/",  # IPv4-compatible
    "http://[64:ff9b::169.254.169.254]/",  # NAT64 well-known prefix
    "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64 local-use prefix, /96 layout
    "http://[64:ff9b:1:a9fe:a9:fe00::]/",  # NAT64 local-use prefix, RFC 6052 /48 layout
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
    "http://[2001:0:101:101::5601:5601]/",  # Teredo, client 169.254.169.254 (obfuscated)
    "http://[2001:0:a9fe:a9fe::]/",  # Teredo, server 169.254.169.254
    "http://169.254.170.2/v2/credentials",  # ECS task credentials
    "http://[fe80::1]/",
    "http://[fe80::a9fe:a9fe]/",
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS IPv6 IMDS
    "http://168.63.129.16/machine?comp=goalstate",  # Azure wireserver
    "http://[::ffff:168.63.129.16]/",
    "http://192.0.0.192/opc/v2/instance/",  # Oracle Cloud
    "http://100.100.100.200/latest/meta-data/",  # Alibaba Cloud
    "http://[64:ff9b::100.100.100.200]/",
    "http://0.0.0.0:9/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "https://169.254.169.254:443/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.Google.Internal./",
    "http://metadata.goog/",
    "http://metadata/computeMetadata/v1/",
    "http://instance-data/latest/",
    "http://instance-data.ec2.internal/",
]
EVERYTHING_ALLOWED = [
    "*",
    "*://*:*/*",
    "0.0.0.0/0, ::/0",
    # even when named exactly: no diagnosis needs them
    "169.254.0.0/16, fe80::/10, fd00:ec2::254, 168.63.129.16, 192.0.0.192, 100.100.100.200, "
    "metadata.google.internal, metadata.goog, metadata, instance-data, 0.0.0.0/8, 224.0.0.0/4, 240.0.0.0/4, ::/128",
]


@pytest.mark.parametrize("allow", EVERYTHING_ALLOWED, ids=["star", "url-star", "all-cidrs", "named"])
@pytest.mark.parametrize("url", METADATA_URLS)
def test_metadata_and_special_addresses_are_refused_in_every_spelling(url, allow, attempts, lookups):
    with pytest.raises(ProbeRefused, match="never go") as refused:
        probe(url, AllowList.parse(allow), timeout=2)
    assert "\n" not in str(refused.value)
    assert attempts == [] and lookups == []  # refused before DNS, before any connection


@pytest.mark.parametrize(
    "answer",
    [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::",
        "fe80::1",
        "fd00:ec2::254",
        "168.63.129.16",
        "192.0.0.192",
        "100.100.100.200",
        "0.0.0.0",
    ],
)
def test_a_name_that_resolves_to_a_metadata_address_is_refused(monkeypatch, attempts, answer):
    asked = fake_dns(monkeypatch, ["93.184.215.14", answer])  # one public answer does not make it safe
    allow = AllowList.parse("*.example.com, imds.example.com, 0.0.0.0/0, ::/0")
    with pytest.raises(ProbeRefused, match=r"imds\.example\.com resolves to .* never go"):
        probe("http://imds.example.com/", allow, timeout=2)
    assert asked == ["imds.example.com"] and attempts == []


@pytest.mark.parametrize("allow", ["*", "*://*:*/*", "*.example.com"])
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://127.1:9/",
        "http://2130706433:9/",
        "http://0x7f000001:9/",
        "http://0177.0.0.1:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://[::1]:9/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # CGNAT
        "http://198.18.0.1/",  # benchmarking
        "http://[fc00::1]/",  # ULA
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[64:ff9b::10.0.0.1]/",  # NAT64 of a private address
        "http://[64:ff9b:1::8.8.8.8]/",  # NAT64 local use: a private translator
        "http://[2001:db8::1]/",
    ],
)
def test_wildcards_never_reach_non_public_addresses(url, allow, attempts):
    with pytest.raises(ProbeRefused, match=r"non-public address|not in DEVDIAG_ALLOW_PROBES"):
        probe(url, AllowList.parse(allow), timeout=2)
    assert attempts == []


@pytest.mark.parametrize("answer", ["127.0.0.1", "10.1.2.3", "::ffff:192.168.0.1", "2002:c0a8:1::", "fc00::1"])
def test_a_wildcard_host_resolving_to_a_private_address_is_refused(monkeypatch, attempts, answer):
    fake_dns(monkeypatch, [answer])
    with pytest.raises(ProbeRefused, match="resolves to the non-public address"):
        probe("https://intranet.example.com/", AllowList.parse("*.example.com"), timeout=2)
    assert attempts == []


def test_numeric_spellings_reach_the_address_they_name_when_allowed(web, attempts):
    port = web[0]
    for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1."):
        report = probe(f"http://{host}:{port}/ok", AllowList.parse("127.0.0.0/8"), timeout=3)
        assert report.http_status == 200 and report.url == f"http://127.0.0.1:{port}/ok"
    assert {address for address, _ in attempts} == {"127.0.0.1"}


def test_the_name_is_resolved_once_and_the_vetted_address_is_connected(web, monkeypatch, attempts):
    port = web[0]
    # A rebinding DNS server: loopback (allowed, as named) first, the metadata service afterwards.
    asked = fake_dns(monkeypatch, ["127.0.0.1"], ["169.254.169.254"])
    Handler.hosts.clear()
    report = probe(f"http://rebind.test:{port}/go", AllowList.parse("rebind.test"), timeout=3, origin=APP)
    assert report.http_status == 200 and report.final_url == f"http://rebind.test:{port}/ok"
    assert asked == ["rebind.test"]  # one lookup for the GET, the redirect hop and the preflight
    assert len(attempts) == 3 and {address for address, _ in attempts} == {"127.0.0.1"}
    assert set(Handler.hosts) == {f"rebind.test:{port}"}  # the Host header stays the URL's host


# --- the allow-list: globs match scheme, host, port and path separately ---------------------------


@pytest.mark.parametrize(
    ("allow", "url", "permitted"),
    [
        ("https://*.example.com/*", "https://evil.test/.example.com/", False),
        ("https://*.example.com/*", "https://evil.test/x.example.com/a", False),
        ("https://*.example.com/*", "https://evil.test/?.example.com/", False),
        ("https://*.example.com/*", "https://evil.test#.example.com/", False),
        ("https://*.example.com/*", "https://evil.test:443/.example.com", False),
        ("https://*.example.com/*", "https://a.example.com.evil.test/", False),
        ("https://*.example.com/*", "https://example.com/", False),
        ("https://*.example.com/*", "http://a.example.com/", False),  # scheme
        ("https://*.example.com/*", "https://a.example.com:8443/", False),  # port
        ("https://*.example.com/*", "https://a.example.com/", True),
        ("https://*.example.com/*", "https://a.b.example.com:443/x/y?z=1", True),
        ("*.example.com", "https://evil.test/.example.com", False),
        ("*.example.com", "http://a.example.com:8443/", True),  # a host entry: any scheme and port
        ("*.example.com:8443", "https://a.example.com/", False),
        ("*.example.com:8443", "https://a.example.com:8443/", True),
        ("*://api.example.com/*", "http://api.example.com/x", True),
        ("*://api.example.com/*", "https://api.example.com/x", True),
        ("*://api.example.com/*", "http://api.example.com:8080/x", False),
        ("http://localhost:*/api/*", "http://localhost:5173/api/x", True),
        ("http://localhost:*/api/*", "http://localhost:5173/admin", False),
        ("https://api.example.com/api/*", "https://api.example.com/api/../admin", False),
        ("https://api.example.com/api/*", "https://api.example.com/api/%2e%2e/admin", False),
        ("https://api.example.com/api/*", "https://api.example.com/api/./v1/users?id=1", True),
        ("https://api.example.com/api/", "https://api.example.com/api", True),
        ("https://api.example.com/API/*", "https://api.example.com/api/x", False),  # paths keep their case
        ("https://api.example.com", "https://api.example.com/", True),
        ("https://api.example.com", "https://api.example.com/other", False),
        ("http://[::1]:8080/*", "http://[0:0::1]:8080/x", True),
        ("*", "http://[2606:4700::1]/", True),
        ("*.example.com", "http://[2606:4700::1]/", False),
        ("api.example.com", "http://API.Example.com./", True),
    ],
)
def test_globs_match_scheme_host_port_and_path_separately(allow, url, permitted):
    assert AllowList.parse(allow).permits(parse_url(url)) is permitted


# --- redirects: every hop vetted like the first URL -----------------------------------------------

PUBLIC = [ipaddress.ip_address("93.184.215.14")]


@pytest.mark.parametrize(
    ("allow", "current", "target", "refusal"),
    [
        ("*.example.com", "https://a.example.com/", "https://a.example.com/next", None),
        ("*.example.com", "http://a.example.com/", "https://a.example.com/", None),  # http:80 -> https:443
        ("*.example.com", "https://a.example.com/", "http://a.example.com:22/", "another port"),
        ("*.example.com", "http://a.example.com/", "https://a.example.com:8443/", "another port"),
        ("*.example.com", "http://a.example.com:8080/", "https://a.example.com/", "another port"),
        ("*.example.com", "http://a.example.com:8080/", "https://a.example.com:8443/", "another port"),
        ("http://*.example.com/*", "http://a.example.com/", "https://a.example.com/", "not in DEVDIAG_ALLOW"),
        ("https://a.example.com/api/*", "https://a.example.com/api/x", "https://a.example.com/admin", "not in"),
        ("*.example.com", "https://a.example.com/", "https://b.example.com/", "another host"),
        ("*", "http://a.example.com/", "http://169.254.169.254/", "another host"),
    ],
)
def test_every_redirect_hop_is_vetted_like_the_first_url(allow, current, target, refusal):
    why = probes._redirect_refusal(
        parse_url(current), parse_url(target), AllowList.parse(allow), probes._Deadline(2), PUBLIC
    )
    assert why is None if refusal is None else refusal in why


def test_a_redirect_hop_gets_the_address_guard(attempts):
    # The same host, vetted again for the hop's URL: its entry no longer names the loopback address.
    allow = AllowList.parse("http://127.0.0.1:8080/api/*, http://*:8080/*")
    loopback = [ipaddress.ip_address("127.0.0.1")]
    current, target = parse_url("http://127.0.0.1:8080/api/x"), parse_url("http://127.0.0.1:8080/admin")
    assert probes._redirect_refusal(current, target, allow, probes._Deadline(2), loopback) is not None
    assert "non-public" in probes._redirect_refusal(current, target, allow, probes._Deadline(2), loopback)


@pytest.mark.parametrize(
    ("path", "allow", "needle"),
    [
        ("/scheme-and-port", "127.0.0.1", "another port"),
        ("/to-metadata", "127.0.0.1, *", "another host"),
        ("/to-credentials", "127.0.0.1", "credentials"),
        ("/outside", "http://127.0.0.1:{port}/outside", "not in DEVDIAG_ALLOW_PROBES"),
    ],
)
def test_redirects_that_fail_the_checks_are_reported_not_followed(web, attempts, path, allow, needle):
    port, hits = web[0], web[1]
    report = probe(f"http://127.0.0.1:{port}{path}", AllowList.parse(allow.format(port=port)), timeout=3)
    assert report.http_status == 302 and report.final_url == f"http://127.0.0.1:{port}{path}"
    redirect = next(c for c in report.checks if c.name == "redirect")
    assert redirect.status == "warn" and "not followed" in redirect.detail and needle in redirect.detail
    assert {a for a in attempts} == {("127.0.0.1", port)} and "/admin" not in hits


def test_redirects_stop_after_five_hops(web, attempts):
    port, hits = web[0], web[1]
    before = hits.count("/loop")
    report = probe(f"http://127.0.0.1:{port}/loop", LOCAL, timeout=3)
    assert hits.count("/loop") - before == 1 + probes.MAX_REDIRECTS
    assert report.http_status == 302
    assert any(c.status == "warn" and "more than 5 redirects" in c.detail for c in report.checks)


# --- the deadline: DNS, connect, TLS, headers and body together ------------------------------------


class Trickler:
    """A raw TCP server on 127.0.0.1 that answers a byte every 0.2 s (headers or body), or never."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.mode == "silent":
                    self.stop.wait(15)
                    return
                conn.recv(65536)
                if self.mode == "body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n")
                    drip = b"<p>" + b"x" * 72
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    drip = b"X-Slow: " + b"a" * 67  # 15 s of header, if nobody stops reading
                for byte in drip:
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize(("mode", "scheme"), [("headers", "http"), ("body", "http"), ("silent", "https")])
def test_the_timeout_bounds_trickled_headers_bodies_and_handshakes(mode, scheme, attempts):
    server = Trickler(mode)
    try:
        started = time.perf_counter()
        report = probe(f"{scheme}://127.0.0.1:{server.port}/", AllowList.parse("127.0.0.1"), timeout=1.0)
        took = time.perf_counter() - started
    finally:
        server.close()
    assert codes(report) == ["REQUEST_TIMEOUT"]
    assert took < 1.0 + 0.3, f"{mode}: the probe took {took:.2f}s with a 1 s timeout"


# --- bad URLs and origins: one line, before any connection ----------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://127.0.0.1/\r\nX-Injected: 1", "line break"),
        ("http://127.0.0.1/a\nb", "line break"),
        ("http://127.0.0.1/a b", "a space"),
        ("http://127.0.0.1/\u00a0", "a space"),
        ("http://127.0.0.1/\x00", "control character U\\+0000"),
        ("http://127.0.0.1/\x7f", "control character U\\+007F"),
        ("\thttp://127.0.0.1/", "control character U\\+0009"),
        ("http://127.0.0.1/\x85", "control character U\\+0085"),
        ("http://exa\u200bmple.com/", "invisible character U\\+200B"),
        ("http://example.com/\u202e", "invisible character U\\+202E"),
        ("http://127.0.0.1/" + "a" * 2100, "2,048"),
        ("https://user:pw@127.0.0.1/", "credentials"),
        ("https://@127.0.0.1/", "credentials"),
        ("https://127.0.0.1\\@evil.test/", "backslash"),
        ("https://exa%6dple.com/", "not a valid host"),
        ("https://b\u00fccher.example/", "xn--"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("http://256.1.1.1/", "not an IPv4"),
        ("http://1.2.3.4.5/", "not an IPv4"),
        ("http://08.1.1.1/", "not an IPv4"),
        ("http://foo.123/", "not an IPv4"),
        ("http://127.0.0.1:0/", "port 0"),
        ("http://127.0.0.1:99999/", "not valid"),
        ("https://api.example.com/api/..%2fadmin", "%2F"),
        ("javascript:alert(1)", "not valid"),
        ("file:///etc/passwd", "only http"),
        ("gopher://127.0.0.1:6379/_INFO", "only http"),
    ],
)
def test_bad_urls_are_refused_in_one_line(url, needle, attempts, lookups):
    with pytest.raises(ProbeRefused, match=needle) as refused:
        probe(url, AllowList.parse("*, 127.0.0.0/8"), timeout=2)
    message = str(refused.value)
    assert not any(c in message for c in "\r\n\x00\x85") and len(message) < 300
    assert attempts == [] and lookups == []


@pytest.mark.parametrize(
    "origin",
    [
        f"{APP}\r\nX-Injected: 1",
        f"{APP}\n",
        f"{APP}\t",
        "http://app .test",
        f"{APP}/path",
        f"{APP}?x=1",
        f"{APP}#x",
        "app.test",
        "http://user@app.test",
        "javascript:alert(1)",
        "http://app.test:99999",
        "http://[::1",
        "http://",
        "*",
        "http://app.test\u200b",
        "x" * 3000,
    ],
)
def test_bad_origins_are_refused_in_one_line(web, origin, attempts):
    with pytest.raises(ProbeRefused, match=r"scheme://host\[:port\]") as refused:
        probe(f"http://127.0.0.1:{web[0]}/api/open", LOCAL, timeout=2, origin=origin)
    message = str(refused.value)
    assert "\n" not in message and "\r" not in message and len(message) < 300
    assert attempts == []


@pytest.mark.parametrize(
    ("origin", "canonical"),
    [
        (APP, APP),
        (f"{APP}/", APP),
        ("HTTP://App.Test:8080", "http://app.test:8080"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("chrome-extension://abcdefghijklmnop", "chrome-extension://abcdefghijklmnop"),
        ("null", "null"),
    ],
)
def test_valid_origins_are_accepted_in_canonical_form(origin, canonical):
    assert check_origin(origin) == canonical


def test_the_timeout_bounds_a_slow_dns_answer(monkeypatch, attempts):
    def slow(host: str, port: int, *args, **kwargs):
        time.sleep(3)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(probes, "_getaddrinfo", slow)
    started = time.perf_counter()
    report = probe("http://slow-dns.test/", AllowList.parse("slow-dns.test"), timeout=0.5)
    assert codes(report) == ["REQUEST_TIMEOUT"] and time.perf_counter() - started < 0.5 + 0.3
    assert attempts == []
