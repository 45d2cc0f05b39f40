"""URL probes: an HTTP(S) look at CORS, CSP, X-Frame-Options, cookies and TLS for ``diagnose``.

Safety first, because the URL comes from a model that reads untrusted text:

- only URLs matching ``DEVDIAG_ALLOW_PROBES`` are probed (empty list: probes off). The URL and each
  entry are parsed and matched part by part (scheme, host, port, path), so no glob crosses a part;
- the URL and ``origin`` are checked first: no control characters, whitespace, credentials, or more
  than 2,048 characters; a numeric host in any IPv4 spelling (``2852039166``, ``0xa9fea9fe``,
  ``0251.0376.0251.0376``, ``169.254.43518``) is read as the address it names;
- cloud-metadata, link-local and other special-purpose addresses are never contacted, in any
  encoding (IPv4-mapped or -compatible, NAT64, 6to4, Teredo), whatever the allow-list says;
- other non-global addresses (loopback, private, CGNAT, ULA) only when the allow-list names them
  *explicitly*: a host or URL entry without wildcards in its host, or a CIDR such as ``10.0.0.0/8``;
- the host is resolved once and every address is vetted; the connection goes to the vetted address
  itself (Host header and TLS name stay the URL's host), so a second DNS answer cannot swap it;
- every redirect hop is vetted like the first URL (scheme, host, port, path, address). Only hops on
  the same host are followed: the same port, or http:80 <-> https:443; at most 5;
- one deadline bounds the whole probe: DNS, connect, TLS, every read and write, all hops;
- requests carry no cookies or credentials; response bodies are read up to 256 KiB.

Findings are catalog codes with the evidence seen (cookie values never appear in it); every
check, passed or not, is reported too. Extra trust anchors (a corporate CA): ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import math
import re
import socket
import ssl
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer  # what RawIOBase.readinto takes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_BODY = 256 * 1024
MAX_REDIRECTS = 5
MAX_URL_CHARS = 2048
CERT_WARN_DAYS = 14
USER_AGENT = "mcp-devdiag-probe/1"
DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = (301, 302, 303, 307, 308)
_GLOB_CHARS = set("*?[")
_URL_EXAMPLE = "give one URL such as https://api.example.com/health"
_ORIGIN_SHAPE = (
    "a valid origin is scheme://host[:port] with no path, e.g. https://app.example.com or http://localhost:3000"
)

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
    """The URL may not be probed; the message (one line) says why and what to change."""


# --- the address guard ----------------------------------------------------------------------------

# Never contacted, whatever DEVDIAG_ALLOW_PROBES says: no diagnosis needs them, and metadata services
# hand out credentials to whoever asks from inside the machine.
_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("169.254.0.0/16", "link-local, where cloud metadata services live (169.254.169.254)"),
        ("fe80::/10", "IPv6 link-local"),
        ("fd00:ec2::254/128", "the AWS IPv6 metadata service"),
        ("168.63.129.16/32", "the Azure wireserver"),
        ("192.0.0.0/24", "IETF special-purpose, where Oracle Cloud metadata lives (192.0.0.192)"),
        ("100.100.100.200/32", "the Alibaba Cloud metadata service"),
        ("0.0.0.0/8", "'this network' (0.0.0.0 reaches the local host)"),
        ("::/128", "the unspecified address"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
# Non-public although Python 3.11's is_global may say otherwise (NAT64 local use, Teredo/ORCHID,
# documentation, benchmarking, 6to4 relays, CGNAT): they need an explicit allow-list entry.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "64:ff9b:1::/48",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "100::/64",
        "100.64.0.0/10",
        "192.88.99.0/24",
        "198.18.0.0/15",
    )
)
# Names of metadata services: refused before any DNS lookup (the resolved address is checked too).
_DENIED_NAMES = (
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
    "metadata.packet.net",
)
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def _in(address: IPAddress, network: IPNetwork) -> bool:
    return address.version == network.version and address in network


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, translated, compatible, NAT64, 6to4, Teredo."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    value, packed = int(address), address.packed
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    found: list[ipaddress.IPv4Address] = []
    if _in(address, _MAPPED) or _in(address, _TRANSLATED) or _in(address, _NAT64):
        found.append(low32)
    if _in(address, _COMPATIBLE) and value > 1:  # :: and ::1 are IPv6's own
        found.append(low32)
    if _in(address, _NAT64_LOCAL):
        # RFC 6052 puts a /48 prefix's IPv4 around the u octet (bits 64-71, zero); some use /96 too.
        rfc6052 = packed[6:8] + packed[9:11]
        found += [ipaddress.IPv4Address(rfc6052)] if packed[8] == 0 and any(rfc6052) else []
        found += [low32] if int(low32) else []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client), the client already de-obfuscated
    return found


def _forms(address: IPAddress) -> list[IPAddress]:
    return [address, *embedded_ipv4(address)]


def denied_reason(address: IPAddress) -> str | None:
    """Why ``address`` may never be probed (checked in every encoding), or None."""
    for form in _forms(address):
        for network, why in _DENIED:
            if _in(form, network):
                return f"{address} is {why}" if form == address else f"{address} carries {form}, {why}"
    return None


def is_public(address: IPAddress) -> bool:
    """Globally reachable? An address that embeds IPv4 is as public as every IPv4 it carries."""
    embedded = embedded_ipv4(address)
    if embedded and not _in(address, _NAT64_LOCAL):
        return all(_plainly_public(v4) for v4 in embedded)
    return _plainly_public(address)


def _plainly_public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast and not any(_in(address, n) for n in _NOT_PUBLIC)


def _denied_name(host: str) -> bool:
    return any(host == name or ("." in name and host.endswith("." + name)) for name in _DENIED_NAMES)


# --- URLs and origins -----------------------------------------------------------------------------

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMERIC_LABEL = re.compile(r"\d+|0x[0-9a-f]*")


def _shown(text: str, limit: int = 60) -> str:
    """User text quoted for a one-line message: escaped, and cut."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _refuse_junk(text: str, what: str, hint: str) -> None:
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if char in "\r\n":
            kind = "a line break"
        elif category == "Cc":
            kind = f"the control character U+{ord(char):04X}"
        elif char.isspace() or category.startswith("Z"):
            kind = "a space"
        elif category == "Cf":
            kind = f"the invisible character U+{ord(char):04X}"
        else:
            continue
        raise ProbeRefused(f"the {what} contains {kind} at position {position}: {hint}, on one line with no spaces")


def _ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host names, read as browsers and inet_aton read it (2852039166,
    0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518); None for a host name."""
    parts = host.split(".")
    if not _NUMERIC_LABEL.fullmatch(parts[-1]):
        return None
    invalid = ProbeRefused(f"the host {_shown(host)} ends in a number but is not an IPv4 address: {_URL_EXAMPLE}")
    if len(parts) > 4:
        raise invalid
    numbers = []
    for part in parts:
        if re.fullmatch(r"0x[0-9a-f]*", part):
            numbers.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]+", part):
            numbers.append(int(part, 8))
        elif re.fullmatch(r"0|[1-9]\d*", part):
            numbers.append(int(part))
        else:
            raise invalid
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise invalid
    return ipaddress.IPv4Address(sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last)


def _canonical_host(host: str, bracketed: bool) -> str:
    """Lower case, no trailing dot, IPv4 as a dotted quad, IPv6 compressed (without brackets)."""
    if bracketed:
        try:
            if "%" in host:
                raise ValueError
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ProbeRefused(
                f"[{_shown(host)}] is not an IPv6 address (zone ids are refused): {_URL_EXAMPLE}"
            ) from None
    if not host.isascii():
        raise ProbeRefused(f"the host {_shown(host)} is not ASCII: write it in its xn-- (punycode) form")
    host = host.lower()
    host = host[:-1] if host.endswith(".") else host  # example.com. is example.com: one name, one check
    v4 = _ipv4_loose(host)
    if v4 is not None:
        return str(v4)
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ProbeRefused(f"the host {_shown(host)} is not a valid host name: {_URL_EXAMPLE}")
    return host


def _ascii(text: str) -> str:
    return "".join(c if c.isascii() else quote(c, safe="") for c in text)


def _canonical_path(path: str) -> str:
    """The path with dot segments resolved (as the server would), also when written %2e."""
    segments = _ascii(path or "/").split("/")[1:]
    out: list[str] = []
    for position, segment in enumerate(segments):
        decoded = unquote(segment)
        if decoded in (".", ".."):
            if decoded == ".." and out:
                out.pop()
            if position == len(segments) - 1:
                out.append("")
            continue
        # Some servers decode %2F or read \ as / before resolving: a ../ hidden so escapes a path glob.
        if {".", ".."} & set(re.split(r"[/\\]", decoded)) and re.search(r"[/\\]", decoded):
            raise ProbeRefused("the URL path hides a ./ or ../ behind %2F or %5C: give the path without it")
        out.append(segment)
    return "/" + "/".join(out)


def parse_url(raw: str) -> SplitResult:
    """A probe-able URL in canonical form (host as above, dot segments resolved, no fragment), or
    ProbeRefused saying in one line what is wrong with it."""
    if len(raw) > MAX_URL_CHARS:
        raise ProbeRefused(
            f"the URL is {len(raw):,} characters, more than {MAX_URL_CHARS:,}: give the address without its long query"
        )
    text = raw.strip(" ")
    _refuse_junk(text, "URL", _URL_EXAMPLE)
    if "\\" in text:
        raise ProbeRefused("the URL contains a backslash, which browsers and servers read differently: write / instead")
    if "://" not in text:
        text = "https://" + text
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        raise ProbeRefused(f"the URL is not valid: {_URL_EXAMPLE}") from None
    if url.scheme not in DEFAULT_PORTS:
        raise ProbeRefused(f"only http:// and https:// URLs can be probed, not {_shown(url.scheme, 20)}://")
    if "@" in url.netloc:
        raise ProbeRefused("the URL carries credentials: remove the user:password@ part (probes never log in)")
    if not url.hostname:
        raise ProbeRefused(f"the URL has no host: {_URL_EXAMPLE}")
    host = _canonical_host(url.hostname, url.netloc.startswith("["))
    if port == 0:
        raise ProbeRefused("port 0 cannot be probed: give the port the server listens on, 1-65535")
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    return SplitResult(url.scheme, netloc, _canonical_path(url.path), _ascii(url.query), "")


_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[^/?#@:\[\]\\]+)(?::(\d{1,5}))?/?")


def check_origin(origin: str) -> str:
    """The calling page's origin in canonical form (lower case, no trailing /), or ProbeRefused whose
    one-line message says what a valid origin looks like. ``null`` (file:// pages) is valid."""
    if len(origin) > MAX_URL_CHARS:
        raise ProbeRefused(f"the origin is {len(origin):,} characters: {_ORIGIN_SHAPE}")
    text = origin.strip(" ")
    _refuse_junk(text, "origin", _ORIGIN_SHAPE)
    if text.lower() == "null":
        return "null"
    match = _ORIGIN.fullmatch(text.lower())
    if not match:
        raise ProbeRefused(f"the origin {_shown(text)} is not valid: {_ORIGIN_SHAPE}")
    scheme, host, port = match.groups()
    try:
        host = _canonical_host(host.strip("[]"), host.startswith("["))
    except ProbeRefused:
        raise ProbeRefused(f"the origin {_shown(text)} has no valid host: {_ORIGIN_SHAPE}") from None
    if port is not None and not 0 < int(port) < 65536:
        raise ProbeRefused(f"the origin {_shown(text)} has port {port}, outside 1-65535: {_ORIGIN_SHAPE}")
    return f"{scheme}://" + (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")


def effective_port(url: SplitResult) -> int:
    return url.port or DEFAULT_PORTS.get(url.scheme, 443)


def normalize(url: SplitResult) -> str:
    host = (url.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}{url.path or '/'}" + (f"?{url.query}" if url.query else "")


def _where(url: SplitResult) -> str:
    """scheme://host:port/path for messages: no query, which may carry a token."""
    return f"{url.scheme}://{url.netloc}{url.path[:100]}"


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# --- allow-list -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One allow-list entry, matched part by part against a parsed, canonical URL."""

    scheme: str  # http, https or * (host entries)
    host: str  # host glob, lower case; an IPv6 literal without brackets
    port: int | Literal["*"] | None  # None: the URL scheme's default port
    path: str | None  # URL entries: a glob where only * is special (it may span /); None: any path

    def matches(self, url: SplitResult) -> bool:
        if self.scheme != "*" and self.scheme != url.scheme:
            return False
        if self.port != "*" and effective_port(url) != (self.port or DEFAULT_PORTS[url.scheme]):
            return False
        return _host_matches(self.host, url.hostname or "") and (self.path is None or _path_matches(self.path, url))

    @property
    def exact_host(self) -> bool:
        return not (_GLOB_CHARS & set(self.host))


def _host_matches(glob: str, host: str) -> bool:
    if ":" in host:  # an IPv6 literal: named only by * or by itself
        return glob in ("*", host)
    # The host is validated to letters, digits, . _ -, so a glob cannot reach past it (no / @ : ? #).
    return bool(_HOSTNAME.fullmatch(host)) and fnmatchcase(host, glob)


@lru_cache(maxsize=256)
def _path_regex(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(map(re.escape, glob.split("*"))), re.DOTALL)


def _path_matches(glob: str, url: SplitResult) -> bool:
    target = url.path + (f"?{url.query}" if url.query else "")
    if _path_regex(glob).fullmatch(target):
        return True
    return bool(_path_regex(glob.rstrip("/")).fullmatch(target.rstrip("/")))  # /api/ names /api too


_HOST_ENTRY = re.compile(r"([a-z0-9*?.\[\]_-]+)(?::(\d{1,5}))?")
_URL_ENTRY = re.compile(
    r"(?P<scheme>[^:/]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9*?.\[\]_-]+)(?::(?P<port>\d{1,5}|\*))?(?P<path>/[^#\\]*)?",
    re.IGNORECASE,
)


def _port(text: str, entry: str) -> int:
    if not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: port {text} is outside 1-65535")
    return int(text)


@lru_cache(maxsize=256)
def _rule(entry: str) -> _Rule:
    """Parse one host or URL entry (CIDRs are parsed by AllowList.parse); ValueError says what to write."""
    if "://" not in entry:
        match = _HOST_ENTRY.fullmatch(entry.lower())
        if not match:
            raise ValueError(
                f"{entry!r} is not a host glob, URL glob or CIDR: write e.g. *.example.com, "
                "https://staging.example.com/*, or 10.0.0.0/8"
            )
        return _Rule("*", match[1].rstrip("."), _port(match[2], entry) if match[2] else "*", None)
    scheme = entry.split("://", 1)[0].lower()
    if scheme not in {"http", "https", "*"}:
        raise ValueError(f"{entry!r}: only http:// and https:// URLs can be probed")
    match = _URL_ENTRY.fullmatch(entry)
    if not match:
        raise ValueError(
            f"{entry!r} is not a URL glob: write scheme://host[:port|:*]/path, e.g. https://*.example.com/api/* "
            "(no user@, query-free globs: * in the host stays within the host)"
        )
    host = match["host"].lower()
    if host.startswith("["):
        try:
            host = ipaddress.IPv6Address(host[1:-1]).compressed
        except ValueError:
            raise ValueError(f"{entry!r}: {host} is not an IPv6 address") from None
    port_text = match["port"]
    port: int | Literal["*"] | None = "*" if port_text == "*" else _port(port_text, entry) if port_text else None
    return _Rule(scheme, host.rstrip("."), port, match["path"] or "")


@dataclass(frozen=True)
class AllowList:
    """``DEVDIAG_ALLOW_PROBES``: host globs (``*.example.com``, ``api.test:8443``), URL globs
    (``https://staging.example.com/api/*``) and CIDRs (``10.0.0.0/8``), comma or space separated.

    A host entry allows any scheme and, without a port, any port. A URL entry allows its scheme (``*``
    for both), its port (default: the scheme's; ``:*`` any) and its path glob, in which ``*`` matches
    anything (the query too); ``*`` in any host glob matches host characters only."""

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
                _rule(entry)  # raises ValueError with what to write
                head, sep, path = entry.partition("://")
                authority, slash, path = path.partition("/")
                urls.append(f"{head.lower()}{sep}{authority.lower()}{slash}{path}")  # the path keeps its case
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            _rule(entry)
            hosts.append(entry.lower())
        return cls(tuple(hosts), tuple(urls), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.urls or self.networks)

    def describe(self) -> str:
        return ", ".join([*self.hosts, *self.urls, *map(str, self.networks)]) or "(empty: probes off)"

    def _matching(self, url: SplitResult) -> list[_Rule]:
        return [rule for rule in map(_rule, (*self.hosts, *self.urls)) if rule.matches(url)]

    def in_networks(self, address: IPAddress) -> bool:
        return any(_in(form, net) for form in _forms(address) for net in self.networks)

    def permits(self, url: SplitResult) -> bool:
        """Does an entry name this (canonical) URL? CIDRs name literal addresses in them, any port."""
        if self._matching(url):
            return True
        literal = _literal_ip(url.hostname or "")
        return literal is not None and self.in_networks(literal)

    def explicitly_permits(self, url: SplitResult, address: IPAddress) -> bool:
        """May this non-public address be contacted? Only when named without wildcards."""
        if self.in_networks(address):
            return True
        host = url.hostname or ""
        return any(rule.exact_host and rule.host == host for rule in self._matching(url))


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


# The two doors to the network, module attributes so that tests can watch them: a test proves a
# refusal came before any connection, and fakes DNS answers, without sending a packet anywhere.
_getaddrinfo = socket.getaddrinfo


def _open_socket(address: IPAddress, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((str(address), port), timeout=timeout)


class _DeadlineReader(io.RawIOBase):
    """Reads that wait at most until the probe's deadline: a socket timeout is per call, so a server
    trickling a byte at a time would otherwise hold the probe for as long as it likes."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        sock = self._owner.sock
        sock.settimeout(self._owner.deadline.left())
        return sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.release()


class _DeadlineSocket:
    """What http.client needs of a socket (sendall, makefile, close), bound by the deadline. Like a
    socket, it stays open until its reader is closed too (http.client closes the connection first)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self.sock, self.deadline = sock, deadline
        self._readers = 0
        self._closing = False

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.deadline.left())  # sendall's timeout covers the whole call
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def release(self) -> None:
        self._readers -= 1
        if self._closing and self._readers <= 0:
            self.sock.close()

    def close(self) -> None:
        self._closing = True
        if self._readers <= 0:
            self.sock.close()


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a vetted address; Host header and TLS name stay the URL's host."""

    def __init__(self, host: str, port: int, address: IPAddress, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.left())
        self._address = address
        self._deadline = deadline

    def _socket(self) -> socket.socket:
        why = denied_reason(self._address)
        if why:  # the last line of defence: _vet refuses these long before
            raise ProbeRefused(f"{why}: probes never go there")
        sock = _open_socket(self._address, self.port, self._deadline.left())
        sock.settimeout(self._deadline.left())
        return sock

    def connect(self) -> None:
        self.sock = _DeadlineSocket(self._socket(), self._deadline)


class _PinnedHTTPS(_PinnedHTTP):
    def __init__(self, host: str, port: int, address: IPAddress, deadline: _Deadline, context: ssl.SSLContext):
        super().__init__(host, port, address, deadline)
        self._context = context

    def connect(self) -> None:
        raw = self._socket()
        try:
            raw.settimeout(self._deadline.left())  # the handshake's timeout covers the whole handshake
            tls = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.sock = _DeadlineSocket(tls, self._deadline)


def _resolve(host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    # getaddrinfo has no timeout of its own: wait for it on a worker thread.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(_getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout=deadline.left())
    finally:
        pool.shutdown(wait=False)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "no address")
    return addresses


def _vet(
    url: SplitResult, allow: AllowList, deadline: _Deadline, addresses: list[IPAddress] | None = None
) -> list[IPAddress]:
    """The addresses ``url`` may be probed at, or ProbeRefused. ``addresses``: those already resolved
    for this host (a redirect hop), so that no second DNS answer is ever asked for."""
    host = url.hostname or ""
    never = "probes never go to metadata, link-local or special-purpose addresses, whatever DEVDIAG_ALLOW_PROBES says"
    if _denied_name(host):
        raise ProbeRefused(f"{host} is a cloud metadata service: {never}")
    literal = _literal_ip(host)
    why = denied_reason(literal) if literal is not None else None
    if why:
        raise ProbeRefused(f"{why}: {never}")
    refused = ProbeRefused(
        f"{_where(url)} is not in DEVDIAG_ALLOW_PROBES ({allow.describe()}): add the host (api.example.com, "
        "api.example.com:8443) or a URL glob (https://api.example.com/*)"
    )
    permitted = allow.permits(url)
    if not permitted and not allow.networks:
        raise refused
    if addresses is None:
        addresses = _resolve(host, effective_port(url), deadline)
    # A host no glob names is allowed when every address it resolves to is in a listed network.
    if not permitted and not all(allow.in_networks(a) for a in addresses):
        raise refused
    for address in addresses:
        why = denied_reason(address)
        if why:
            raise ProbeRefused(f"{host} resolves to {why}: {never}")
        if not is_public(address) and not allow.explicitly_permits(url, address):
            raise ProbeRefused(
                f"{host} resolves to the non-public address {address}: probes reach private, loopback and other "
                "non-public addresses only when DEVDIAG_ALLOW_PROBES names the host exactly or a CIDR holds it"
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
            try:
                body = resp.read(MAX_BODY) if method != "OPTIONS" else b""
            finally:
                resp.close()  # with conn.close() below, this closes the socket
            return _Response(resp.status, resp.headers, body)
        except ssl.SSLError:
            raise
        except (ConnectionRefusedError, ConnectionResetError) as error:
            last = error  # try the next address (e.g. ::1 before 127.0.0.1)
        finally:
            conn.close()
    raise last or ConnectionRefusedError("no address to connect to")


# --- the probe ------------------------------------------------------------------------------------


def probe(
    raw_url: str, allow: AllowList, *, timeout: float = 5.0, origin: str | None = None, method: str = "GET"
) -> ProbeReport:
    """Probe ``raw_url`` within ``timeout`` seconds in all. Raises ProbeRefused (one line) before any
    connection when the URL, the origin or the method may not be used."""
    if not allow:
        raise ProbeRefused("URL probes are off: set DEVDIAG_ALLOW_PROBES to the hosts you allow, e.g. *.example.com")
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    url = parse_url(raw_url)
    origin = check_origin(origin) if origin else None
    if not re.fullmatch(r"[A-Za-z]{1,20}", method):
        raise ProbeRefused(f"the method {_shown(method, 20)} is not an HTTP method: give e.g. GET, POST or PUT")
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
    except TimeoutError:
        report.find("REQUEST_TIMEOUT", f"{report.url} did not answer within {timeout:g}s", "http")
    except ConnectionRefusedError:
        report.find("CONNECTION_REFUSED", f"connection to {url.hostname}:{effective_port(url)} refused", "http")
    except ProbeRefused as refused:
        report.check("http", "fail", str(refused))
    except (OSError, http.client.HTTPException, ValueError) as error:
        report.check("http", "fail", f"{type(error).__name__}: {error}"[:300].replace("\n", " "))
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
            report.check(
                "tls",
                "warn" if days < CERT_WARN_DAYS else "ok",
                f"certificate valid, expires {expires:%Y-%m-%d} ({days} days)",
            )
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
            assert isinstance(conn.sock, _DeadlineSocket)
            return conn.sock.sock
        except (ConnectionRefusedError, ConnectionResetError) as error:
            last = error
    raise last or ConnectionRefusedError("no address to connect to")


def _not_after(cert: dict | None) -> datetime | None:
    if not cert or "notAfter" not in cert:
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), tz=UTC)


def _redirect_refusal(
    current: SplitResult, target: SplitResult, allow: AllowList, deadline: _Deadline, addresses: list[IPAddress]
) -> str | None:
    """Why a redirect hop is not followed, or None. The hop is vetted like the first URL (allow-list
    scheme, host, port and path; the address guard), against the addresses already vetted."""
    if target.hostname != current.hostname:
        return "another host: probes stay on the host they were given"
    port, target_port = effective_port(current), effective_port(target)
    upgrade = port == DEFAULT_PORTS[current.scheme] and target_port == DEFAULT_PORTS[target.scheme]
    if port != target_port and not upgrade:
        return "another port: only the same port, or http:80 <-> https:443, is followed"
    try:
        _vet(target, allow, deadline, addresses)
    except ProbeRefused as refused:
        return str(refused)
    return None


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
    for hop in range(MAX_REDIRECTS + 1):
        location = resp.headers.get("Location")
        if resp.status not in _REDIRECTS or not location:
            return resp, url
        if hop == MAX_REDIRECTS:
            report.check("redirect", "warn", f"more than {MAX_REDIRECTS} redirects: stopped at {normalize(url)}")
            return resp, url
        try:
            target = parse_url(urljoin(normalize(url), location))
        except ProbeRefused as refused:
            report.check("redirect", "warn", f"{resp.status} to an unusable Location, not followed: {refused}")
            return resp, url
        why_not = _redirect_refusal(url, target, allow, deadline, addresses)
        if why_not:
            report.check("redirect", "warn", f"{resp.status} to {_where(target)} not followed: {why_not}")
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
