"""Mask secrets in pasted error text before it is stored or echoed back.

Design rules:
- keep the key name, URL scheme/user and well-known token prefixes so the text stays diagnosable
  (``postgres://app:[REDACTED]@db``, ``ghp_[REDACTED]``);
- never match ordinary error wording (e.g. "password authentication failed", "Unexpected token");
- idempotent: every rule skips values that are already ``[REDACTED]``;
- linear time on any input: a 1 MB paste in well under 0.5 s, twice the text in twice the time
  (``benchmarks/redaction.py``). Python's ``re`` backtracks and holds the GIL, so every rule keeps to
  these (``tests/python/test_redaction.py`` checks 1 and 2 on the parse tree of every pattern):
  1. its pattern starts with a literal (or a small set of first characters), so ``re`` skips to the
     candidates at C speed; guards on what comes before are lookbehinds placed after that literal;
  2. every repeat is possessive or bounded, and cannot run past the next place where a match could
     start (its class leaves out a character of the trigger, or it is tempered with ``(?!trigger)``),
     so the characters scanned by all failed attempts add up to about one pass over the text;
  3. after a long run a pattern does not fail on a lookahead: it matches, and the replacement decides
     to keep the text (so "token=ghp_[REDACTED]" is not rescanned from every later position);
  4. case-insensitive rules run case-sensitively on an ASCII-lower-cased copy of the text (``re``'s
     IGNORECASE costs ~10x), and the replacement is cut from the original text at the same offsets;
  5. multi-line shapes (PEM blocks, ``mysql ... -p``) are small scanners, one pass each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MASK = "[REDACTED]"
_NOT_MASKED = r"(?!\[REDACTED\])"
_NOT_MASKED_LOW = r"(?!\[redacted\])"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# A replacement: a template (``\1`` groups) or a function; on lower-cased rules a function of the match on
# the lower-cased copy and the original text, returning None to keep the matched text as it is.
Replacement = str | Callable[[re.Match[str]], str]
LowerReplacement = Callable[[re.Match[str], str], str | None]


@dataclass(frozen=True)
class _Rule:
    triggers: tuple[str, ...]  # lower-case literals; the rule is skipped when none is in the text
    pattern: re.Pattern[str] | None = None  # run on the original text
    repl: Replacement = MASK
    lower: re.Pattern[str] | None = None  # run on the lower-cased copy, with lower_repl
    lower_repl: LowerReplacement | None = None
    scan: Callable[[str], str] | None = None  # a one-pass scanner over the whole text
    lower_scan: Callable[[str, str], str] | None = None  # the same, given the lower-cased copy too


def _c(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _keep_groups(*groups: int) -> LowerReplacement:
    """Original text of ``groups``, then the mask: the lower-cased rules' ``\\1[REDACTED]``."""
    return lambda m, text: "".join(text[m.start(g) : m.end(g)] for g in groups) + MASK


# ---------------------------------------------------------------------------------------- PEM keys
_PEM_BEGIN = _c(r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = _c(r"-----END (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
# The body of a key cut off before its END line: whole lines or space-separated runs of base64 (real or
# JSON-escaped breaks), or the encryption headers; the error line that follows a pasted key stays readable.
_PEM_BODY = _c(
    r"(?:(?:\r?\n|\\r\\n|\\n|[ \t])[ \t]*+(?:(?:Proc-Type|DEK-Info|Comment): [^\r\n\\]*+|[A-Za-z0-9+/=]*+)"
    r"(?=[ \t\"',]|\r?\n|\\[rn]|$))*+"
)


def _mask_pem(text: str) -> str:
    """Mask each block's body up to its END line or, when no END comes before the next BEGIN, its
    base64 body. One pass over the BEGIN and END lines: no BEGIN searches the rest of the text."""
    begins = list(_PEM_BEGIN.finditer(text))
    if not begins:
        return text
    ends = [m.start() for m in _PEM_END.finditer(text)]
    out: list[str] = []
    pos = j = 0
    for i, begin in enumerate(begins):
        if begin.start() < pos:
            continue
        limit = begins[i + 1].start() if i + 1 < len(begins) else len(text)
        while j < len(ends) and ends[j] < begin.end():
            j += 1
        if j < len(ends) and ends[j] <= limit:
            body_end = ends[j]
        else:
            body = _PEM_BODY.match(text, begin.end(), limit)
            body_end = body.end() if body else begin.end()
        body_text = text[begin.end() : body_end]
        out.append(text[pos : begin.end()])
        out.append(MASK if body_text.strip() not in ("", MASK) else body_text)
        pos = body_end
    out.append(text[pos:])
    return "".join(out)


# ---------------------------------------------------------------------------------------- prefixed tokens
# Token shapes with a fixed, well-known prefix: (literal head, rest of the prefix, body, triggers). The
# prefix stays visible. The head is a literal so `re` jumps to it; the guard that no token character
# comes before it is a lookbehind after it. The body is possessive and checked for a token-character
# boundary after it.
_PREFIXED_TOKENS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("github_pat_", "", r"[A-Za-z0-9_]{22,}+", ("github_pat_",)),
    ("gh", r"[pousr]_", r"[A-Za-z0-9]{30,}+", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    # GitLab: personal, deploy, runner, pipeline trigger, CI build, OAuth secret, feed, incoming mail, SCIM,
    # agent and feature-flag client tokens, then legacy runner registration tokens
    (
        "gl",
        r"(?:pat|dt|rt|ptt|cbt|oas|ft|imt|soat|agent|ffct)-",
        r"[A-Za-z0-9_-]{20,}+",
        ("glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "gloas-", "glft-", "glimt-", "glsoat-", "glagent-", "glffct-"),
    ),
    ("GR1348941", "", r"[A-Za-z0-9_-]{20,}+", ("gr1348941",)),
    ("xox", r"[abposre]-", r"[A-Za-z0-9-]{10,}+", ("xox",)),
    ("xapp-", "", r"[A-Za-z0-9-]{20,}+", ("xapp-",)),
    ("sk_", r"(?:live|test)_", r"[A-Za-z0-9]{10,}+", ("k_live_", "k_test_")),
    ("rk_", r"(?:live|test)_", r"[A-Za-z0-9]{10,}+", ("k_live_", "k_test_")),
    ("whsec_", "", r"[A-Za-z0-9]{20,}+", ("whsec_",)),
    ("sk-", r"(?:ant-(?:api\d{1,3}-|admin\d{1,3}-)?|proj-|svcacct-|admin-)?", r"[A-Za-z0-9_-]{20,}+", ("sk-",)),
    ("npm_", "", r"[A-Za-z0-9]{36}", ("npm_",)),
    ("AIza", "", r"[0-9A-Za-z_-]{35}", ("aiza",)),
    ("GOCSPX-", "", r"[A-Za-z0-9_-]{20,}+", ("gocspx-",)),
    ("ya29.", "", r"[A-Za-z0-9_-]{20,}+", ("ya29.",)),
    ("SG.", "", r"[A-Za-z0-9_-]{16,}+\.[A-Za-z0-9_-]{16,}+", ("sg.",)),
    ("hf_", "", r"[A-Za-z0-9]{30,}+", ("hf_",)),
    ("pypi-", "", r"[A-Za-z0-9_-]{50,}+", ("pypi-",)),
    ("shp", r"(?:at|ss|ca|pa)_", r"[a-fA-F0-9]{32}", ("shp",)),
    ("do", r"[opr]_v1_", r"[a-f0-9]{64}", ("doo_v1_", "dop_v1_", "dor_v1_")),
    ("dapi", "", r"[a-f0-9]{32}(?:-\d)?", ("dapi",)),
    ("key-", "", r"[0-9a-f]{32}", ("key-",)),  # Mailgun
    ("SK", "", r"[0-9a-fA-F]{32}", ("sk",)),  # Twilio API key SID
    *((head, "", r"[A-Z0-9]{16}", (head.lower(),)) for head in ("AKIA", "ASIA", "ABIA", "ACCA")),  # AWS key ids
    ("hv", r"[sbr]\.", r"[A-Za-z0-9_-]{24,}+", ("hvs.", "hvb.", "hvr.")),  # HashiCorp Vault
    # legacy Vault service token: exactly 24 characters that mix upper case, lower case and digits
    ("s.", "", r"(?=[a-z0-9]{0,23}[A-Z])(?=[A-Za-z]{0,23}[0-9])(?=[A-Z0-9]{0,23}[a-z])[A-Za-z0-9]{24}", ("s.",)),
    ("AGE-SECRET-KEY-1", "", r"[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}", ("age-secret-key-1",)),
    ("dckr_", r"(?:pat|oat)_", r"[A-Za-z0-9_-]{24,}+", ("dckr_pat_", "dckr_oat_")),  # Docker Hub
    ("dp.", r"(?:pt|st|sa|ct|scim|audit)\.", r"[A-Za-z0-9_.-]{40,}+", ("dp.",)),  # Doppler
    ("ops_", "", r"[A-Za-z0-9+/=_-]{40,}+", ("ops_",)),  # 1Password service account
    ("HRKU-", "", r"[A-Za-z0-9_-]{30,}+", ("hrku-",)),  # Heroku
    ("lin_", r"(?:api|oauth)_", r"[A-Za-z0-9]{32,}+", ("lin_api_", "lin_oauth_")),  # Linear
    ("PMAK-", "", r"[A-Za-z0-9-]{40,}+", ("pmak-",)),  # Postman
    ("pul-", "", r"[a-f0-9]{40}", ("pul-",)),  # Pulumi
    ("glsa_", "", r"[A-Za-z0-9_]{32,}+", ("glsa_",)),  # Grafana service account
    ("glc_", "", r"[A-Za-z0-9+/=_-]{32,}+", ("glc_",)),  # Grafana Cloud
    ("sntry", r"[su]_", r"[A-Za-z0-9+/=_-]{40,}+", ("sntrys_", "sntryu_")),  # Sentry
    ("NR", r"(?:AK|II|JS|AA|IQ)-", r"[A-Za-z0-9]{20,}+", ("nrak-", "nrii-", "nrjs-", "nraa-", "nriq-")),  # New Relic
    ("AT", r"(?:ATT|CTT|OA)", r"[A-Za-z0-9_=-]{50,}+", ("atatt", "atctt", "atoa")),  # Atlassian
    ("ddg_", "", r"[A-Za-z0-9_-]{16,}+", ("ddg_",)),  # DevDiag team tokens: everything after ddg_
]


def _prefixed_rule(head: str, rest: str, body: str, triggers: tuple[str, ...]) -> _Rule:
    # One pattern per head: a pattern that starts with one literal is searched at C speed, while an
    # alternation of 40 heads costs ~0.1 us per character.
    pattern = _c(f"({re.escape(head)}(?<![A-Za-z0-9_.-]{re.escape(head)}){rest}){_NOT_MASKED}{body}(?![A-Za-z0-9_-])")
    return _Rule(triggers, pattern, rf"\1{MASK}")


# ---------------------------------------------------------------------------------------- key=value
# Values of these keys are secrets, whatever the surrounding syntax (env, DSN, JSON, YAML, query).
# The keyword must end the key (DB_PASSWORD, accessToken, "client_secret"); any prefix stays untouched.
# A bare "pass" or "auth" is too common in prose: only DB_PASS / db.pass / PASS, and "auth" / _auth.
# Written in lower case: it runs on the lower-cased copy.
_SECRET_KEYWORDS = (  # a trie: a flat alternation tries each of 20 keywords at every p, s, t, a...
    r"pass(?:word|wd|phrase|(?<![a-z0-9]pass))|p(?:rivate[_-]?key(?:[_-]?id)?|wd)|"
    r"s(?:ecret(?:[_-]?key(?:[_-]?base)?)?|ig(?:nature)?|ubscription[_-]?key)|token(?<!unexpected token)|"
    r"a(?:pi[_-]?key|cc(?:ess|ount)[_-]?key|uth(?:[_-]?key|(?<=[\"'_]auth))|pp[_-]?key)|"
    r"(?:license|master|encryption)[_-]?key"
)
_KEY_VALUE = _c(
    r"(?P<key>(?:" + _SECRET_KEYWORDS + r")(?:\\?[\"'])?)"
    r"(?P<sep>[ \t]{0,8}+(?:=|:(?!//))[ \t]{0,8}+)(?!=)" + _NOT_MASKED_LOW + r"(?!/)"  # PWD=/home/... is a path
    r"(?P<val>"
    # Quoted strings: a failed scan ends at the next unescaped quote, which is where the next quoted value
    # would start (a value's quote follows '=', ':' or a blank, never a backslash), so no bound is needed.
    r"\"(?:[^\"\\\n]|\\.)++\""  # JSON/shell string, escapes included
    r"|\\\"[^\"\\\n]++\\\""  # a JSON string inside a JSON string: \"value\"
    r"|'[^'\n]++'"
    # connection strings (ADO.NET, ODBC, JDBC): Password=two words; runs to the ';'
    r"|(?:(?<==)|(?<== ))[^\s;=&\"'<>][^;=&\"'<>\r\n]{0,255}+(?=;)"
    r"|[^\s,;&\"'<>(){}\[\]]++)"
)
_NOT_SECRET_VALUES = frozenset({"true", "false", "null", "none", "nil", "undefined"})


def _mask_key_values(text: str, low: str) -> str:
    """The key=value rule over the lower-cased copy. A flood of short pairs makes the per-match cost
    count (a 1 MB paste of "pwd=a;" is 166,000 matches), hence a tight loop and numbered groups."""
    pieces: list[str] = []
    append = pieces.append
    last = 0
    for m in _KEY_VALUE.finditer(low):
        start, end = m.span()
        val_start = m.start(3)
        # Judged here rather than by a failing lookahead, so that no later start rescans the value:
        # "token=ghp_" + MASK is already masked, and "password: null" is no secret.
        if low.startswith("[redacted]", end) or (end - val_start < 10 and low[val_start:end] in _NOT_SECRET_VALUES):
            continue
        after_separator = start > 0 and low[start - 1] in "_.-"
        bare_pass = m.end(1) - start <= 5 and low.startswith("pass", start) and not after_separator
        if bare_pass and text[start : start + 4] != "PASS":
            continue  # "tests pass: 12", not PASS=... or DB_PASS=...
        first = low[val_start]
        if first in "\"'":
            quote = first
        elif first == "\\" and low.startswith('\\"', val_start):
            quote = '\\"'
        else:
            quote = ""
        append(text[last:val_start])
        append(f"{quote}{MASK}{quote}" if quote else MASK)
        last = end
    if not pieces:
        return text
    append(text[last:])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------- cookies
_COOKIE_ATTRIBUTES = frozenset(
    {"path", "domain", "expires", "max-age", "samesite", "secure", "httponly", "partitioned", "priority"}
)


def _mask_cookies(m: re.Match[str], text: str) -> str:
    # Keep cookie names and attributes (SameSite/Secure matter for diagnosis), hide the values.
    parts = []
    for part in text[m.start(2) : m.end(2)].split(";"):
        name, eq, val = part.partition("=")
        if eq and name.strip().lower() not in _COOKIE_ATTRIBUTES and val.strip() and val.strip() != MASK:
            part = f"{name}={MASK}"
        parts.append(part)
    return text[m.start(1) : m.end(1)] + ";".join(parts)


# ---------------------------------------------------------------------------------------- mysql -pSECRET
_MYSQL = _c(r"mysql(?<![A-Za-z0-9_]mysql)(?:dump|admin|import|sh)?\b")
_MYSQL_P = _c(r"-p(?<=\s-p)" + _NOT_MASKED + r"(?!\s)[^\s]++")


def _mask_mysql(text: str) -> str:
    """``-pSECRET`` after a mysql command on the same line; each line is scanned once, whatever the
    number of "mysql" words on it."""
    out: list[str] = []
    pos = 0
    for m in _MYSQL.finditer(text):
        if m.start() < pos:
            continue
        end = text.find("\n", m.end())
        end = len(text) if end == -1 else end
        out.append(text[pos : m.end()])
        out.append(_MYSQL_P.sub(f"-p{MASK}", text[m.end() : end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


# ---------------------------------------------------------------------------------------- URL credentials
# scheme://user:password@host. The password may hold '/' and '@' (postgresql://app:ab/cd+ef@db): it ends
# at the last '@' before the host. A port and a path (http://host:3000/@vite/client) is no password.
_URL_CREDENTIALS = _c(
    r"(://)(?<=[A-Za-z0-9]://)([^\s:/@'\"<>\[\]]{0,256}+:)(?!\d{1,5}(?:[/?#]|$))"
    + _NOT_MASKED
    # tempered with (?!://): a failed attempt never scans past the next URL
    + r"(?:(?!://)[^\s'\"@<>]){1,1024}+(?:@[^\s'\"@<>/?#]{0,256}+(?=@))*+@"
)
# Sentry DSNs (and other 32-hex keys in the user part): https://<key>@o1.ingest.sentry.io/2
_URL_HEX_USER = _c(r"(://)(?<=[A-Za-z0-9]://)" + _NOT_MASKED + r"[0-9a-f]{32}(?=[:@])")


_RULES: tuple[_Rule, ...] = (
    _Rule(("private key",), scan=_mask_pem),
    # PuTTY .ppk: the private lines and their MAC
    _Rule(
        ("private-lines",),
        _c(
            r"(Private-Lines:[ \t]{0,8}+\d{1,4}[ \t]{0,8}+(?:\r?\n|\\r?\\n))" + _NOT_MASKED + r"[A-Za-z0-9+/=]{1,256}+"
            r"(?=[\r\n]|\\[rn]|$)(?:(?:\r?\n|\\r?\\n)[A-Za-z0-9+/=]{1,256}+(?=[\r\n]|\\[rn]|$))*+"
        ),
        rf"\1{MASK}",
    ),
    _Rule(("private-mac",), _c(r"(Private-MAC:[ \t]{0,8}+)" + _NOT_MASKED + r"[0-9a-fA-F]{20,128}+"), rf"\1{MASK}"),
    _Rule(("://",), _URL_CREDENTIALS, rf"\1\2{MASK}@"),
    _Rule(("://",), _URL_HEX_USER, rf"\1{MASK}"),
    # Authorization / Proxy-Authorization headers, keep the scheme word
    _Rule(
        ("authorization",),
        lower=_c(
            r"(authorization(?<![a-z0-9_]authorization)[\"']?[ \t]{0,8}+[:=][ \t]{0,8}+[\"']?"
            r"(?:(?:bearer|basic|token|digest|bot|apikey|aws4-hmac-sha256|negotiate|sswss?|geniekey|splunk|key)"
            r"[ \t]{1,8}+)?+)" + _NOT_MASKED_LOW + r"[^\s\"',]++"
        ),
        lower_repl=_keep_groups(1),
    ),
    # a bare bearer token (must contain a digit so prose such as "Bearer authentication" survives)
    _Rule(
        ("bearer",),
        lower=_c(
            r"(bearer(?<![a-z0-9_]bearer)[ \t]{1,8}+)" + _NOT_MASKED_LOW + r"(?=[a-z._~+/=-]*+\d)[a-z0-9._~+/=-]{8,}+"
        ),
        lower_repl=_keep_groups(1),
    ),
    _Rule(
        ("cookie",),
        lower=_c(r"(cookie(?<![a-z0-9_]cookie)[\"']?[ \t]{0,8}+:[ \t]{0,8}+[\"']?)([^\n\"']++)"),
        lower_repl=_mask_cookies,
    ),
    _Rule(
        ("eyj",), _c(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{5,}+\.eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]{10,}+"), MASK
    ),
    # Telegram bot token <bot id>:<secret>: keep the bot id, mask the secret after the colon
    _Rule((":aa",), _c(r":AA(?<=\d{6}:AA)[A-Za-z0-9_-]{30,40}+(?![A-Za-z0-9_-])"), f":{MASK}"),
    # Terraform Cloud / Enterprise: <14 character id>.atlasv1.<secret>
    _Rule(
        ("atlasv1",),
        _c(r"(\.atlasv1\.)(?<=[A-Za-z0-9]{14}\.atlasv1\.)" + _NOT_MASKED + r"[A-Za-z0-9_=-]{40,}+"),
        rf"\1{MASK}",
    ),
    # Azure AD (Entra) client secrets: three characters, a digit, "Q~", then 31-34 more
    _Rule(
        ("q~",),
        _c(r"(Q~)(?<=[A-Za-z0-9_~.-]{3}\dQ~)[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])"),
        rf"\1{MASK}",
    ),
    *(_prefixed_rule(*token) for token in _PREFIXED_TOKENS),
    # Slack / Discord webhook URLs carry the secret in the path
    _Rule(
        ("hooks.slack",),
        _c(r"(https://hooks\.slack\.com/services/)" + _NOT_MASKED + r"[A-Za-z0-9/]++"),
        rf"\1{MASK}",
    ),
    _Rule(
        ("/api/webhooks/",),
        _c(r"(https://discord(?:app)?\.com/api/webhooks/\d{1,24}+/)" + _NOT_MASKED + r"[A-Za-z0-9_-]++"),
        rf"\1{MASK}",
    ),
    # curl -u user:password, mysql -pPASSWORD, --password VALUE, openssl -passin pass:VALUE
    _Rule(
        ("-u", "--user"),
        _c(
            r"((?:-u(?<![^\s]-u)|--user(?<![^\s]--user))[ \t]{1,8}+['\"]?[^\s:'\"]{1,256}+:)"
            + _NOT_MASKED
            + r"[^\s'\"]++"
        ),
        rf"\1{MASK}",
    ),
    _Rule(("mysql",), scan=_mask_mysql),
    _Rule(
        ("--pass", "--token", "--api-key", "--secret", "--client-secret"),
        _c(
            r"(--(?<=\s--)(?:password|passwd|pass|token|api-key|secret|client-secret)(?:=|[ \t]{1,8}+))"
            + _NOT_MASKED
            # "glrt-[REDACTED]" is already masked (its prefix kept): the run stops at "[" and fails there
            + r"[^\s-][^\s\[]*+(?!\[)"
        ),
        rf"\1{MASK}",
    ),
    _Rule(("-pass",), _c(r"(-pass(?<=\s-pass)(?:in|out)?[ \t]{1,8}+pass:)" + _NOT_MASKED + r"[^\s]++"), rf"\1{MASK}"),
    _Rule(("pass", "secret", "token", "key", "sig", "pwd", "auth"), lower_scan=_mask_key_values),
)


def _lower(text: str) -> str:
    low = text.lower()
    # A few characters change length when lower-cased (U+0130); offsets must match the original.
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _sub_lower(pattern: re.Pattern[str], repl: LowerReplacement, text: str, low: str) -> str:
    pieces: list[str] = []
    last = 0
    for m in pattern.finditer(low):
        new = repl(m, text)
        if new is not None:
            pieces.append(text[last : m.start()])
            pieces.append(new)
            last = m.end()
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def redact(text: str) -> str:
    """Return `text` with secrets replaced by [REDACTED]; safe to apply more than once."""
    low = _lower(text)
    for rule in _RULES:
        if not any(t in low for t in rule.triggers):
            continue
        if rule.scan is not None:
            new = rule.scan(text)
        elif rule.lower_scan is not None:
            new = rule.lower_scan(text, low)
        elif rule.lower is not None and rule.lower_repl is not None:
            new = _sub_lower(rule.lower, rule.lower_repl, text, low)
        else:
            assert rule.pattern is not None
            new = rule.pattern.sub(rule.repl, text)
        if new is not text and new != text:
            text, low = new, _lower(new)
    return text
