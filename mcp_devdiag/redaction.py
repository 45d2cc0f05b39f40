"""Mask secrets in pasted error text before it is stored or echoed back.

Design rules:
- keep the key name, URL scheme/user and well-known token prefixes so the text stays diagnosable
  (``postgres://app:[REDACTED]@db``, ``ghp_[REDACTED]``);
- never match ordinary error wording (e.g. "password authentication failed", "Unexpected token");
- idempotent: every rule skips values that are already ``[REDACTED]``;
- fast on big pastes: each rule names literal triggers, and its regex only runs on the lines that
  contain one (Python regexes cost ~0.1 us per character scanned).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MASK = "[REDACTED]"
_NOT_MASKED = r"(?!\[REDACTED\])"
_MAX_TRIGGER_HITS = 200  # beyond this many trigger lines, one pass over the whole text is cheaper

Replacement = str | Callable[[re.Match[str]], str]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    repl: Replacement
    triggers: tuple[str, ...]  # lower-case; every match lies on a line containing one of them
    whole_text: bool = False  # multi-line rule: run over the whole text when triggered


def _c(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


# ---------------------------------------------------------------------------------------- PEM keys
_PEM_BLOCK = _c(
    r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"
    r"(?:.*?(-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)|(?:\\n|[\r\n]|[A-Za-z0-9+/=])*)",
    re.DOTALL,
)


def _mask_pem(m: re.Match[str]) -> str:
    # A pasted key may be cut off before its END line; mask the whole base64 body either way.
    return f"{m.group(1)}{MASK}{m.group(2) or ''}"


# ---------------------------------------------------------------------------------------- prefixed tokens
# Token shapes with a fixed, well-known prefix: (prefix regex, body regex, literal triggers).
_PREFIXED_TOKENS: list[tuple[str, str, tuple[str, ...]]] = [
    (r"github_pat_", r"[A-Za-z0-9_]{22,}", ("github_pat_",)),
    (r"gh[pousr]_", r"[A-Za-z0-9]{30,}", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    (r"glpat-", r"[A-Za-z0-9_-]{20,}", ("glpat-",)),
    (r"xox[abposr]-", r"[A-Za-z0-9-]{10,}", ("xox",)),
    (r"(?:sk|rk)_(?:live|test)_", r"[A-Za-z0-9]{10,}", ("k_live_", "k_test_")),
    (r"whsec_", r"[A-Za-z0-9]{20,}", ("whsec_",)),
    (r"sk-ant-(?:api\d+-|admin\d+-)?", r"[A-Za-z0-9_-]{20,}", ("sk-",)),
    (r"sk-(?:proj-|svcacct-|admin-)?", r"[A-Za-z0-9_-]{20,}", ("sk-",)),
    (r"npm_", r"[A-Za-z0-9]{36}", ("npm_",)),
    (r"AIza", r"[0-9A-Za-z_-]{35}", ("aiza",)),
    (r"GOCSPX-", r"[A-Za-z0-9_-]{20,}", ("gocspx-",)),
    (r"ya29\.", r"[A-Za-z0-9_-]{20,}", ("ya29.",)),
    (r"SG\.", r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}", ("sg.",)),
    (r"hf_", r"[A-Za-z0-9]{30,}", ("hf_",)),
    (r"pypi-", r"[A-Za-z0-9_-]{50,}", ("pypi-",)),
    (r"shp(?:at|ss|ca|pa)_", r"[a-fA-F0-9]{32}", ("shp",)),
    (r"dop_v1_", r"[a-f0-9]{64}", ("dop_v1_",)),
    (r"dapi", r"[a-f0-9]{32}", ("dapi",)),
    (r"key-", r"[0-9a-f]{32}", ("key-",)),  # Mailgun
    (r"SK", r"[0-9a-fA-F]{32}", ("sk",)),  # Twilio API key SID
    (r"(?:AKIA|ASIA|ABIA|ACCA)", r"[A-Z0-9]{16}", ("akia", "asia", "abia", "acca")),  # AWS access key id
]
_PREFIXED_RE = _c(
    r"(?<![A-Za-z0-9_-])("
    + "|".join(f"(?:{prefix}){_NOT_MASKED}{body}" for prefix, body, _ in _PREFIXED_TOKENS)
    + r")(?![A-Za-z0-9_-])"
)
_PREFIX_ONLY = [re.compile(prefix) for prefix, _, _ in _PREFIXED_TOKENS]


def _mask_prefixed(m: re.Match[str]) -> str:
    token = m.group(1)
    for prefix in _PREFIX_ONLY:
        pm = prefix.match(token)
        if pm:
            return pm.group(0) + MASK
    return MASK


# ---------------------------------------------------------------------------------------- key=value
# Values of these keys are secrets, whatever the surrounding syntax (env, DSN, JSON, YAML, query).
# The keyword must end the key (DB_PASSWORD, accessToken, "client_secret"); any prefix stays untouched.
_SECRET_KEYWORDS = (
    r"password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"account[_-]?key|auth[_-]?key|signature|sig|secret[_-]?key(?:[_-]?base)?|pwd"
)
_KEY_VALUE = _c(
    r"(?<!unexpected )(?P<key>(?:" + _SECRET_KEYWORDS + r")[\"']?)"
    r"(?P<sep>\s*(?:=|:(?!//))\s*)" + _NOT_MASKED + r"(?!/)"  # PWD=/home/... is a directory, not a password
    # possessive + lookahead: leave "ghp_[REDACTED]" (already masked by a prefix rule) alone
    r"(?P<val>\"(?:[^\"\\\n]|\\.)+\"|'[^'\n]+'|[^\s,;&\"'<>(){}\[\]]++(?!\[REDACTED\]))",
    re.IGNORECASE,
)


def _mask_key_value(m: re.Match[str]) -> str:
    val = m.group("val")
    quote = val[0] if val[0] in "\"'" else ""
    return f"{m.group('key')}{m.group('sep')}{quote}{MASK}{quote}"


# ---------------------------------------------------------------------------------------- cookies
_COOKIE_ATTRIBUTES = frozenset(
    {"path", "domain", "expires", "max-age", "samesite", "secure", "httponly", "partitioned", "priority"}
)


def _mask_cookies(value: str) -> str:
    # Keep cookie names and attributes (SameSite/Secure matter for diagnosis), hide the values.
    parts = []
    for part in value.split(";"):
        name, eq, val = part.partition("=")
        if eq and name.strip().lower() not in _COOKIE_ATTRIBUTES and val.strip() and val.strip() != MASK:
            part = f"{name}={MASK}"
        parts.append(part)
    return ";".join(parts)


_RULES: tuple[_Rule, ...] = (
    _Rule(_PEM_BLOCK, _mask_pem, ("private key",), whole_text=True),
    # scheme://user:password@host -> keep user and host
    _Rule(
        _c(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)" + _NOT_MASKED + r"[^\s'\"/]+(@)", re.I), rf"\1{MASK}\2", ("://",)
    ),
    # Authorization / Proxy-Authorization headers, keep the scheme word
    _Rule(
        _c(
            r"(\b(?:Proxy-)?Authorization[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Basic|Token|Digest|Bot|ApiKey|"
            r"AWS4-HMAC-SHA256|Negotiate)\s+)?+)" + _NOT_MASKED + r"[^\s\"',]+",
            re.I,
        ),
        rf"\1{MASK}",
        ("authorization",),
    ),
    # a bare bearer token (must contain a digit so prose such as "Bearer authentication" survives)
    _Rule(
        _c(r"\b(Bearer\s+)" + _NOT_MASKED + r"(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{8,}", re.I),
        rf"\1{MASK}",
        ("bearer",),
    ),
    _Rule(
        _c(r"(\b(?:Set-)?Cookie[\"']?\s*:\s*[\"']?)([^\n\"']+)", re.I),
        lambda m: m.group(1) + _mask_cookies(m.group(2)),
        ("cookie",),
    ),
    _Rule(_c(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"), MASK, ("eyj",)),
    _Rule(_PREFIXED_RE, _mask_prefixed, tuple(dict.fromkeys(t for _, _, ts in _PREFIXED_TOKENS for t in ts))),
    # Slack / Discord webhook URLs carry the secret in the path
    _Rule(
        _c(r"(https://hooks\.slack\.com/services/)" + _NOT_MASKED + r"[A-Za-z0-9/]+"), rf"\1{MASK}", ("hooks.slack",)
    ),
    _Rule(
        _c(r"(https://discord(?:app)?\.com/api/webhooks/\d+/)" + _NOT_MASKED + r"[A-Za-z0-9_-]+"),
        rf"\1{MASK}",
        ("/api/webhooks/",),
    ),
    # curl -u user:password, mysql -pPASSWORD, --password VALUE
    _Rule(
        _c(r"((?:^|\s)(?:-u|--user)\s+['\"]?[^\s:'\"]+:)" + _NOT_MASKED + r"[^\s'\"]+"), rf"\1{MASK}", ("-u", "--user")
    ),
    _Rule(_c(r"(\bmysql(?:dump)?\b[^\n]*?\s-p)" + _NOT_MASKED + r"(?!\s)[^\s]+"), rf"\1{MASK}", ("mysql",)),
    _Rule(_c(r"(\s--password(?:=|\s+))" + _NOT_MASKED + r"[^\s-][^\s]*"), rf"\1{MASK}", ("--password",)),
    _Rule(_KEY_VALUE, _mask_key_value, ("pass", "secret", "token", "key", "sig", "pwd")),
)


def _trigger_lines(text: str, low: str, triggers: tuple[str, ...]) -> list[tuple[int, int]] | None:
    """Merged (start, end) spans of the lines holding a trigger; None when there are too many."""
    spans: list[tuple[int, int]] = []
    for trigger in triggers:
        at = low.find(trigger)
        while at != -1:
            if len(spans) >= _MAX_TRIGGER_HITS:
                return None
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end == -1 else end
            spans.append((start, end))
            at = low.find(trigger, end)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _apply(rule: _Rule, text: str) -> str:
    low = text.lower()
    if not any(t in low for t in rule.triggers):
        return text
    lines = None if rule.whole_text or len(low) != len(text) else _trigger_lines(text, low, rule.triggers)
    if lines is None:
        return rule.pattern.sub(rule.repl, text)
    pieces: list[str] = []
    last = 0
    for start, end in lines:
        pieces.append(text[last:start])
        pieces.append(rule.pattern.sub(rule.repl, text[start:end]))
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def redact(text: str) -> str:
    """Return `text` with secrets replaced by [REDACTED]; safe to apply more than once."""
    for rule in _RULES:
        text = _apply(rule, text)
    return text
