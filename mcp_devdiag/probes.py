"""URL probes: an HTTP(S) look at CORS, CSP, X-Frame-Options, cookies and TLS for ``diagnose``.

Safety first, because the URL comes from a model that reads untrusted text:

- only URLs matching ``DEVDIAG_ALLOW_PROBES`` are probed (empty list: probes off);
- the host is resolved once and every address is vetted; private, loopback, link-local and other
  non-global addresses are refused unless the allow-list names them *explicitly* (a host or URL
  entry without wildcards in its host, or a CIDR such as ``10.0.0.0/8``). The connection then goes
  to the vetted address itself, so a second DNS answer cannot swap it (DNS rebinding);
- redirects are followed only on the same host and port (at most 5); another host is reported,
  not visited; credentials in the URL are refused; one overall deadline bounds the probe;
- requests carry no cookies or credentials; response bodies are read up to 256 KiB.

Findings are catalog codes with the evidence seen (cookie values never appear in it); every
check, passed or not, is reported too. Extra trust anchors (a corporate CA): ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Literal
from urllib.parse import SplitResult, urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_BODY = 256 * 1024
MAX_REDIRECTS = 5
CERT_WARN_DAYS = 14
USER_AGENT = "mcp-devdiag-probe/1"
_GLOB_CHARS = set("*?[")

# OpenSSL verify codes -> catalog problem.
_TLS_CODES = {
    10: "TLS_CERT_EXPIRED",  # certificate has expired
    62: "TLS_HOSTNAME_MISMATCH",  # hostname mismatch
    64: "TLS_HOSTNAME_MISMATCH",  # IP address mismatch
}
PROBE_CODES = frozenset(
    {
        "CORS_BLOCKED",
        "CORS_PREFLIGHT_FAILED",
        "FRAME_EMBED_BLOCKED",
        "CSP_INLINE_SCRIPT_BLOCKED",
        "MIXED_CONTENT",
        "COOKIE_REJECTED",
        "TLS_CERT_EXPIRED",
        "TLS_CERT_UNTRUSTED",
        "TLS_HOSTNAME_MISMATCH",
        "CONNECTION_REFUSED",
        "REQUEST_TIMEOUT",
        "DNS_RESOLUTION_FAILED",
    }
)


class ProbeRefused(Exception):
    """The URL may not be probed; the message says why and what to change."""


# --- allow-list -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowList:
    """``DEVDIAG_ALLOW_PROBES``: host globs (``*.example.com``, ``api.test:8443``), URL globs
    (``https://staging.example.com/api/*``) and CIDRs (``10.0.0.0/8``), comma or space separated."""

    hosts: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        hosts: list[str] = []
        urls: list[str] = []
        networks: list[IPNetwork] = []
        for entry in re.split(r"[,\s]+", text.strip()):
            if not entry:
                continue
            if "://" in entry:
                scheme = entry.split("://", 1)[0].lower()
                if scheme not in {"http", "https", "*"}:
                    raise ValueError(f"{entry!r}: only http:// and https:// URLs can be probed")
                urls.append(entry.lower())
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"[A-Za-z0-9*?.\[\]_-]+(:\d{1,5})?", entry):
                raise ValueError(
                    f"{entry!r} is not a host glob, URL glob or CIDR: write e.g. *.example.com, "
                    "https://staging.example.com/*, or 10.0.0.0/8"
                )
            hosts.append(entry.lower())
        return cls(tuple(hosts), tuple(urls), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.urls or self.networks)

    def describe(self) -> str:
        return ", ".join([*self.hosts, *self.urls, *map(str, self.networks)]) or "(empty: probes off)"

    def _host_entries(self, url: SplitResult) -> list[str]:
        """Host parts of the entries that match ``url``."""
        host, port = (url.hostname or "").lower(), effective_port(url)
        matched = []
        for entry in self.hosts:
            pattern, _, entry_port = entry.partition(":")
            if fnmatchcase(host, pattern) and (not entry_port or int(entry_port) == port):
                matched.append(pattern)
        normalized = normalize(url)
        for entry in self.urls:
            if fnmatchcase(normalized, entry) or fnmatchcase(normalized.rstrip("/"), entry.rstrip("/")):
                host_part = re.match(r"^[^:]+://(\[[^\]]*\]|[^/:]*)", entry)
                matched.append(host_part.group(1).strip("[]") if host_part else "*")
        return matched

    def permits(self, url: SplitResult) -> bool:
        if self._host_entries(url):
            return True
        literal = _literal_ip(url.hostname or "")
        return literal is not None and any(literal in net for net in self.networks)

    def explicitly_permits(self, url: SplitResult, address: IPAddress) -> bool:
        """May this non-global address be contacted? Only when named without wildcards."""
        if any(address in net for net in self.networks):
            return True
        host = (url.hostname or "").lower()
        return any(entry == host and not (_GLOB_CHARS & set(entry)) for entry in self._host_entries(url))


def effective_port(url: SplitResult) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def normalize(url: SplitResult) -> str:
    host = (url.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}{url.path or '/'}" + (f"?{url.query}" if url.query else "")


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeFinding:
    code: str
    evidence: str


@dataclass(frozen=True)
class Check:
    name: str
    status: Literal["ok", "warn", "fail", "skipped"]
    detail: str


@dataclass
class ProbeReport:
    url: str
    final_url: str | None = None
    http_status: int | None = None
    findings: list[ProbeFinding] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, status: Literal["ok", "warn", "fail", "skipped"], detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    def find(self, code: str, evidence: str, check: str) -> None:
        self.findings.append(ProbeFinding(code, evidence))
        self.check(check, "fail", evidence)


@dataclass
class _Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


# --- connections ----------------------------------------------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.total = seconds

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer within {self.total:g}s")
        return remaining


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a vetted address; Host header and TLS name stay the URL's host."""

    def __init__(self, host: str, port: int, address: IPAddress, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.left())
        self._address = address
        self._deadline = deadline

    def _socket(self) -> socket.socket:
        sock = socket.create_connection((str(self._address), self.port), timeout=self._deadline.left())
        sock.settimeout(self._deadline.left())
        return sock

    def connect(self) -> None:
        self.sock = self._socket()


class _PinnedHTTPS(_PinnedHTTP):
    def __init__(self, host: str, port: int, address: IPAddress, deadline: _Deadline, context: ssl.SSLContext):
        super().__init__(host, port, address, deadline)
        self._context = context

    def connect(self) -> None:
        raw = self._socket()
        try:
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _resolve(host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    # getaddrinfo has no timeout of its own: wait for it on a worker thread.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout=deadline.left())
    finally:
        pool.shutdown(wait=False)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _vet(url: SplitResult, allow: AllowList, deadline: _Deadline) -> list[IPAddress]:
    refused = ProbeRefused(
        f"{url.hostname} is not in DEVDIAG_ALLOW_PROBES ({allow.describe()}): add the host, "
        "e.g. DEVDIAG_ALLOW_PROBES=*.example.com"
    )
    permitted = allow.permits(url)
    if not permitted and not allow.networks:
        raise refused
    addresses = _resolve(url.hostname or "", effective_port(url), deadline)
    # A host no glob names is allowed when every address it resolves to is in a listed network.
    if not permitted and not all(any(_unmapped(a) in net for net in allow.networks) for a in addresses):
        raise refused
    for address in addresses:
        plain = _unmapped(address)
        if not plain.is_global and not allow.explicitly_permits(url, plain):
            raise ProbeRefused(
                f"{url.hostname} resolves to the non-public address {plain}: probes reach private, loopback and "
                f"link-local addresses only when DEVDIAG_ALLOW_PROBES names the host exactly or a CIDR holds it"
            )
    return addresses


def _request(
    url: SplitResult,
    addresses: list[IPAddress],
    deadline: _Deadline,
    context: ssl.SSLContext | None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> _Response:
    last: OSError | None = None
    for address in addresses:
        if url.scheme == "https":
            assert context is not None
            conn: _PinnedHTTP = _PinnedHTTPS(url.hostname or "", effective_port(url), address, deadline, context)
        else:
            conn = _PinnedHTTP(url.hostname or "", effective_port(url), address, deadline)
        try:
            target = (url.path or "/") + (f"?{url.query}" if url.query else "")
            conn.request(method, target, headers={"User-Agent": USER_AGENT, "Accept": "*/*", **(headers or {})})
            resp = conn.getresponse()
            body = resp.read(MAX_BODY) if method != "OPTIONS" else b""
            return _Response(resp.status, resp.headers, body)
        except ssl.SSLError:
            raise
        except (ConnectionRefusedError, ConnectionResetError) as error:
            last = error  # try the next address (e.g. ::1 before 127.0.0.1)
        finally:
            conn.close()
    raise last or ConnectionRefusedError("no address to connect to")


# --- the probe ------------------------------------------------------------------------------------


def parse_url(raw: str) -> SplitResult:
    """A probe-able URL or ProbeRefused saying what is wrong with it."""
    text = raw.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ProbeRefused("the URL is not valid: give e.g. https://api.example.com/health") from None
    if url.scheme not in {"http", "https"}:
        raise ProbeRefused(f"only http:// and https:// URLs can be probed, not {url.scheme}://")
    if not url.hostname:
        raise ProbeRefused("the URL has no host: give e.g. https://api.example.com/health")
    if url.username or url.password:
        raise ProbeRefused("the URL carries credentials: remove the user:password@ part (probes never log in)")
    return url


def probe(
    raw_url: str, allow: AllowList, *, timeout: float = 5.0, origin: str | None = None, method: str = "GET"
) -> ProbeReport:
    """Probe ``raw_url``. Raises ProbeRefused before any connection when it may not be probed."""
    if not allow:
        raise ProbeRefused("URL probes are off: set DEVDIAG_ALLOW_PROBES to the hosts you allow, e.g. *.example.com")
    url = parse_url(raw_url)
    report = ProbeReport(url=normalize(url))
    deadline = _Deadline(timeout)
    try:
        addresses = _vet(url, allow, deadline)
    except socket.gaierror as error:
        report.find("DNS_RESOLUTION_FAILED", f"DNS lookup of {url.hostname} failed: {error.strerror}", "dns")
        return report
    except (FutureTimeout, TimeoutError):
        report.find("REQUEST_TIMEOUT", f"DNS lookup of {url.hostname} took longer than {timeout:g}s", "dns")
        return report
    report.check("dns", "ok", f"{url.hostname} -> {', '.join(map(str, addresses))}")
    try:
        _run_checks(report, url, addresses, allow, deadline, origin, method)
    except ProbeRefused as refused:
        report.check("redirect", "skipped", str(refused))
    except TimeoutError:
        report.find("REQUEST_TIMEOUT", f"{report.url} did not answer within {timeout:g}s", "http")
    except ConnectionRefusedError:
        report.find("CONNECTION_REFUSED", f"connection to {url.hostname}:{effective_port(url)} refused", "http")
    except (OSError, http.client.HTTPException) as error:
        report.check("http", "fail", f"{type(error).__name__}: {error}"[:300])
    return report


def _run_checks(
    report: ProbeReport,
    url: SplitResult,
    addresses: list[IPAddress],
    allow: AllowList,
    deadline: _Deadline,
    origin: str | None,
    method: str,
) -> None:
    context = _tls_check(report, url, addresses, deadline) if url.scheme == "https" else None
    headers = {"Origin": origin} if origin else {}
    resp, url = _get_following(report, url, addresses, allow, deadline, context, headers)
    report.final_url, report.http_status = normalize(url), resp.status
    report.check("http", "warn" if resp.status >= 400 else "ok", f"GET {normalize(url)} -> {resp.status}")
    html = _is_html(resp)
    _csp_checks(report, resp, origin, url, html)
    _cookie_checks(report, resp, url)
    if url.scheme == "https" and html:
        _mixed_content_check(report, resp)
    if origin:
        _cors_checks(report, resp, url, addresses, deadline, context, origin, method)
    else:
        report.check("cors", "skipped", "no calling origin given (pass origin, or the error text's 'from origin')")


def _tls_check(
    report: ProbeReport, url: SplitResult, addresses: list[IPAddress], deadline: _Deadline
) -> ssl.SSLContext:
    """Verify the certificate; on failure report it and continue unverified, to still read headers."""
    verified = ssl.create_default_context()
    sock = None
    try:
        sock = _tls_connect(url, addresses, deadline, verified)
        cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        expires = _not_after(cert)
        if expires is not None:
            days = (expires - datetime.now(UTC)).days
            status = "warn" if days < CERT_WARN_DAYS else "ok"
            report.check("tls", status, f"certificate valid, expires {expires:%Y-%m-%d} ({days} days)")
        else:
            report.check("tls", "ok", "certificate valid")
        return verified
    except ssl.SSLCertVerificationError as error:
        code = _TLS_CODES.get(error.verify_code, "TLS_CERT_UNTRUSTED")
        report.find(code, f"TLS verification of {url.hostname} failed: {error.verify_message}", "tls")
    except ConnectionRefusedError:
        raise
    except ssl.SSLError as error:
        report.check("tls", "fail", f"TLS handshake failed: {error.reason or error}")
    finally:
        if sock is not None:
            sock.close()
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return unverified


def _tls_connect(
    url: SplitResult, addresses: list[IPAddress], deadline: _Deadline, context: ssl.SSLContext
) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        conn = _PinnedHTTPS(url.hostname or "", effective_port(url), address, deadline, context)
        try:
            conn.connect()
            assert conn.sock is not None
            return conn.sock
        except (ConnectionRefusedError, ConnectionResetError) as error:
            last = error
    raise last or ConnectionRefusedError("no address to connect to")


def _not_after(cert: dict | None) -> datetime | None:
    if not cert or "notAfter" not in cert:
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), tz=UTC)


def _get_following(
    report: ProbeReport,
    url: SplitResult,
    addresses: list[IPAddress],
    allow: AllowList,
    deadline: _Deadline,
    context: ssl.SSLContext | None,
    headers: dict[str, str],
) -> tuple[_Response, SplitResult]:
    resp = _request(url, addresses, deadline, context, headers=headers)
    for _ in range(MAX_REDIRECTS):
        location = resp.headers.get("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return resp, url
        target = parse_url(urljoin(normalize(url), location))
        same_host = (target.hostname or "").lower() == (url.hostname or "").lower()
        # An http -> https upgrade changes the port; any other port change is another server.
        same_server = same_host and (target.scheme != url.scheme or effective_port(target) == effective_port(url))
        if not same_server:
            report.check("redirect", "warn", f"{resp.status} to another host {normalize(target)}: not followed")
            return resp, url
        if not allow.permits(target):
            report.check("redirect", "warn", f"{resp.status} to {normalize(target)}, outside the allow-list")
            return resp, url
        report.check("redirect", "ok", f"{resp.status} -> {normalize(target)}")
        if target.scheme == "https" and context is None:
            context = ssl.create_default_context()
        url = target
        resp = _request(url, addresses, deadline, context, headers=headers)
    return resp, url


def _is_html(resp: _Response) -> bool:
    return "html" in (resp.headers.get("Content-Type") or "").lower()


# --- header checks --------------------------------------------------------------------------------


def _directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        tokens = part.split()
        if tokens:
            out.setdefault(tokens[0].lower(), tokens[1:])
    return out


def _origin_of(url: SplitResult) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{(url.hostname or '').lower()}{port}"


def _source_allows(sources: list[str], origin: str, self_origin: str) -> bool:
    origin_url = urlsplit(origin)
    for src in sources:
        s = src.lower()
        if s == "'none'":
            return False
        if s == "*" or (s == "'self'" and origin == self_origin) or s.rstrip("/") == origin:
            return True
        if s.endswith(":") and origin_url.scheme + ":" == s:
            return True
        if "*." in s:
            scheme, _, host = s.rpartition("://")
            if (not scheme or scheme == origin_url.scheme) and fnmatchcase(origin_url.netloc, host):
                return True
    return False


def _csp_checks(report: ProbeReport, resp: _Response, origin: str | None, url: SplitResult, html: bool) -> None:
    csp = ", ".join(resp.headers.get_all("Content-Security-Policy") or [])
    xfo = (resp.headers.get("X-Frame-Options") or "").strip()
    directives = _directives(csp.replace(",", ";")) if csp else {}
    report.check("csp", "ok" if csp else "warn", f"Content-Security-Policy: {csp[:300]}" if csp else "no CSP header")
    self_origin = _origin_of(url)
    ancestors = directives.get("frame-ancestors")
    if origin and origin.rstrip("/") != self_origin:
        embedder = origin.rstrip("/")
        if ancestors is not None and not _source_allows(ancestors, embedder, self_origin):
            report.find(
                "FRAME_EMBED_BLOCKED",
                f"frame-ancestors {' '.join(ancestors) or '(empty)'} does not allow {embedder}",
                "framing",
            )
        elif ancestors is None and xfo.upper() in {"DENY", "SAMEORIGIN"}:
            report.find("FRAME_EMBED_BLOCKED", f"X-Frame-Options: {xfo} forbids framing by {embedder}", "framing")
        else:
            report.check("framing", "ok", f"{embedder} may embed this page")
    else:
        detail = f"frame-ancestors {' '.join(ancestors)}" if ancestors is not None else f"X-Frame-Options: {xfo}"
        report.check("framing", "ok", detail if (ancestors is not None or xfo) else "no framing restrictions")
    scripts = directives.get("script-src", directives.get("default-src"))
    if scripts is not None and html:
        lowered = [s.lower() for s in scripts]
        allows_inline = "'unsafe-inline'" in lowered and not any(s.startswith(("'nonce-", "'sha")) for s in lowered)
        inline = re.search(rb"<script(?![^>]*\bsrc\s*=)[^>]*>\s*\S", resp.body, re.IGNORECASE)
        if inline and not allows_inline and not _nonce_matches(lowered, resp.body):
            report.find(
                "CSP_INLINE_SCRIPT_BLOCKED",
                f"the page has an inline <script> but script-src is {' '.join(scripts) or '(empty)'}",
                "inline-script",
            )


def _nonce_matches(sources: list[str], body: bytes) -> bool:
    nonces = [s[len("'nonce-") : -1] for s in sources if s.startswith("'nonce-")]
    return any(re.search(rb"<script[^>]*nonce=[\"']?" + re.escape(n.encode()), body, re.I) for n in nonces)


def _cookie_checks(report: ProbeReport, resp: _Response, url: SplitResult) -> None:
    cookies = resp.headers.get_all("Set-Cookie") or []
    problems = []
    for raw in cookies:
        name = raw.split("=", 1)[0].strip()[:64]
        attrs = {a.strip().split("=", 1)[0].lower(): a.strip() for a in raw.split(";")[1:]}
        samesite = attrs.get("samesite", "").split("=", 1)[-1].strip().lower() if "samesite" in attrs else None
        if samesite == "none" and "secure" not in attrs:
            problems.append(f"cookie {name}: SameSite=None without Secure (browsers reject it)")
        elif "secure" in attrs and url.scheme == "http" and url.hostname not in {"localhost", "127.0.0.1"}:
            problems.append(f"cookie {name}: Secure cookie set over http:// (browsers drop it)")
        elif name.startswith("__Host-") and ("secure" not in attrs or "domain" in attrs):
            problems.append(f"cookie {name}: __Host- prefix needs Secure, Path=/ and no Domain")
    if problems:
        report.find("COOKIE_REJECTED", "; ".join(problems), "cookies")
    else:
        report.check("cookies", "ok", f"{len(cookies)} Set-Cookie header(s), attributes consistent")


_INSECURE_REF = re.compile(
    rb"<(?:script|img|iframe|link|audio|video|source|embed)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?(http://[^\"'\s>]+)",
    re.IGNORECASE,
)


def _mixed_content_check(report: ProbeReport, resp: _Response) -> None:
    refs = [m.group(1).decode("ascii", "replace")[:200] for m in _INSECURE_REF.finditer(resp.body)]
    if refs:
        report.find("MIXED_CONTENT", f"HTTPS page loads {len(refs)} http:// resource(s), e.g. {refs[0]}", "mixed")
    else:
        report.check("mixed", "ok", "no http:// resources referenced")


def _cors_checks(
    report: ProbeReport,
    resp: _Response,
    url: SplitResult,
    addresses: list[IPAddress],
    deadline: _Deadline,
    context: ssl.SSLContext | None,
    origin: str,
    method: str,
) -> None:
    origin = origin.rstrip("/")
    acao = (resp.headers.get("Access-Control-Allow-Origin") or "").strip()
    creds = (resp.headers.get("Access-Control-Allow-Credentials") or "").strip().lower() == "true"
    if not acao:
        report.find("CORS_BLOCKED", f"GET with Origin {origin} got no Access-Control-Allow-Origin header", "cors")
    elif acao != "*" and acao.rstrip("/") != origin:
        report.find("CORS_BLOCKED", f"Access-Control-Allow-Origin is {acao}, not the calling origin {origin}", "cors")
    elif acao == "*" and creds:
        report.find("CORS_BLOCKED", "Access-Control-Allow-Origin '*' with credentials: browsers refuse it", "cors")
    else:
        report.check("cors", "ok", f"Access-Control-Allow-Origin: {acao}")
    preflight = _request(
        url,
        addresses,
        deadline,
        context,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method.upper(),
            "Access-Control-Request-Headers": "content-type",
        },
    )
    p_acao = (preflight.headers.get("Access-Control-Allow-Origin") or "").strip()
    methods = (preflight.headers.get("Access-Control-Allow-Methods") or "").upper()
    allow_headers = (preflight.headers.get("Access-Control-Allow-Headers") or "").lower()
    if not 200 <= preflight.status < 300:
        problem = f"OPTIONS preflight answered {preflight.status}"
    elif not p_acao or (p_acao != "*" and p_acao.rstrip("/") != origin):
        problem = f"OPTIONS preflight has Access-Control-Allow-Origin {p_acao or '(none)'} for {origin}"
    elif method.upper() not in {"GET", "HEAD", "POST"} and method.upper() not in methods and "*" not in methods:
        problem = f"OPTIONS preflight does not allow method {method.upper()} (allows {methods or 'none'})"
    elif "content-type" not in allow_headers and "*" not in allow_headers:
        problem = "OPTIONS preflight does not allow the Content-Type request header"
    else:
        problem = ""
    if problem:
        report.find("CORS_PREFLIGHT_FAILED", problem, "preflight")
    else:
        report.check("preflight", "ok", f"OPTIONS {preflight.status}, methods {methods or '(simple)'}")
