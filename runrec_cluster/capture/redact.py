"""What user text may reach a record: secret redaction, and no control characters in names.
See docs/security.md.

Redaction happens before anything is written. Three kinds of rule, applied to environment
variables, command lines, config values (given, default, generated; backend options; metric
values), git remote URLs and the message and traceback of a job's exception:

- **Names.** A value whose *name* (environment variable, config key, ``--flag``, ``name=value``
  inside text) says it holds a secret is replaced as a whole. Names are split into words
  (``AWS_SECRET_ACCESS_KEY``, ``apiKey``, ``X-Api-Key``); *strong* words (password, secret,
  credential, api key, private key, connection string, ...) redact any value, *weak* ones
  (a final ``token``, ``key``, ``auth``, ``cookie``, ``sig``) only strings, and never the
  ML names that merely contain them (``max_tokens``, ``eos_token``, ``sort_key``). A name that
  describes a secret (``password_file``, ``token_url``) is not one.
- **Value shapes.** Substrings with the shape of a well-known credential (GitHub, GitLab,
  Slack, OpenAI, Anthropic, Hugging Face, Stripe, npm, PyPI, AWS key ids, Google API keys,
  JWTs, PEM/OpenSSH private keys, ``Authorization:`` headers, ``Bearer`` tokens) are replaced
  wherever they appear, whatever the name. Bare hex (commit hashes, sha256 digests) and run
  ids are never a shape: a W&B key (40 hex) is caught by its name.
- **URLs.** ``scheme://user:password@host`` loses its user and password.

Configuration, from ``[tool.runrec.redact]`` in the nearest ``pyproject.toml`` / ``runrec.toml``
above the current directory and from environment variables (read by ``runrec_cluster.settings``,
under the same rules as every setting)::

    [tool.runrec.redact]
    secret_names = ["^corp_", "pin$"]          # regexes, searched in names (any case)
    secret_values = ["corp-[0-9a-f]{32}"]      # regexes, replaced anywhere in text
    not_secret = ["max_key", "*_token_id"]     # names (globs, any case) the built-in
                                               # name rules must leave alone

``RUNREC_REDACT_NAMES``, ``RUNREC_REDACT_VALUES``, ``RUNREC_REDACT_NOT_SECRET``: one pattern,
or a JSON list of patterns (``RUNREC_REDACT_NOT_SECRET`` also takes comma-separated names).
Files and variables add up. Precedence: your ``secret_names`` and ``secret_values`` always
apply; ``not_secret`` exempts a name from the *built-in* name rules only, so a name matched by
your own ``secret_names`` stays secret, and a value with a credential's shape is redacted under
any name. A broken rule (bad regex, unknown key) refuses the submit with ``ConfigError``.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runrec_cluster import settings
from runrec_cluster.errors import ConfigError

REDACTED = "[redacted]"


# -- names ------------------------------------------------------------------------------------

# joined words (``AWS_SECRET_ACCESS_KEY`` -> ``awssecretaccesskey``) containing one of these
_STRONG_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    "apikey",
    "privatekey",
    "accesskey",
    "secretkey",
    "accountkey",
    "signingkey",
    "encryptionkey",
    "masterkey",
    "accesstoken",
    "refreshtoken",
    "authtoken",
    "apitoken",
    "bearertoken",
    "sessiontoken",
    "sessionkey",
    "sastoken",
    "connectionstring",
    "authorization",
)
_STRONG_WORDS = frozenset({"pass", "pwd", "passwords", "signature", "otp", "totp"})
# a final word that holds a secret when the value is a string
_WEAK_LAST = frozenset({"token", "key", "keys", "auth", "cookie", "cookies", "sig"})
# ... unless the word before it makes it an ML name (special tokens, dict and sort keys)
_NOT_SECRET_BEFORE = {
    "token": frozenset(
        "eos bos pad unk sep cls mask special start end stop sos eot eom boi eoi begin image img "
        "audio video vision text max min num n first last next prev new added additional extra "
        "decoder encoder placeholder dummy sentinel null default prefix suffix boundary separator "
        "class label register think answer".split()
    ),
    "key": frozenset(
        "sort cache label labels text image img input output target metric monitor primary "
        "foreign dict column col field feature group partition random rng prng seed data dataset "
        "batch hash lookup join index audio video id name map sample shard split state score "
        "attr attribute value query attn attention mask caption prompt response answer question "
        "context instruction embedding tensor hot config json yaml file node rank frame track "
        "merge order unique composite row record entry item lang language".split()
    ),
}
_NOT_SECRET_BEFORE["keys"] = _NOT_SECRET_BEFORE["key"]
# a last word that makes the name describe a secret, not hold one (``password_file``)
_DESCRIBES = frozenset(
    "file files path dir directory env var name names len length min max count size prompt "
    "hint policy required enabled enable disabled expiry expires ttl type kind mode format "
    "endpoint url uri host port header".split()
)
# names that hold a directory, not a password
_NOT_SECRET_NAMES = frozenset({"pwd", "oldpwd"})


def _words(name: str) -> list[str]:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    return [w for w in re.split(r"[^A-Za-z0-9]+", s.lower()) if w]


@functools.lru_cache(maxsize=4096)
def _builtin_kind(name: str) -> str | None:
    """``"strong"``, ``"weak"`` or None for a name, by the built-in rules."""
    words = _words(name)
    if not words or name.lower() in _NOT_SECRET_NAMES:
        return None
    if len(words) > 1 and words[-1] in _DESCRIBES:
        return None
    joined = "".join(words)
    if any(p in joined for p in _STRONG_PARTS) or any(w in _STRONG_WORDS for w in words):
        return "strong"
    last = words[-1]
    if last in _WEAK_LAST:
        before = words[-2] if len(words) > 1 else ""
        if before in _NOT_SECRET_BEFORE.get(last, ()):
            return None
        return "weak"
    return None


# -- value shapes -----------------------------------------------------------------------------

# shapes of well-known credentials (fake examples in tests/reliability/test_secrets.py)
SECRET_VALUE_RES = [
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|$)"
    ),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}"),
    re.compile(r"\bgl(?:pat|dt|rt|cbt|ptt|ft|imt|oas|soat|agent)-[A-Za-z0-9_\-]{20,}"),  # GitLab
    re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z0-9]{16}\b"),
    re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\bxapp-[0-9]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bsk-(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{20,}"),  # OpenAI, Anthropic
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face
    re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),  # Stripe
    re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
    re.compile(r"\bpypi-[A-Za-z0-9_\-]{50,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"),  # Google API key
    re.compile(r"\bya29\.[0-9A-Za-z_\-]{20,}"),  # Google OAuth access token
    re.compile(r"\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),  # SendGrid
    re.compile(r"\bdapi[0-9a-f]{32}\b"),  # Databricks
    re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
]
_SHAPES_RE = re.compile("|".join(f"(?:{rx.pattern})" for rx in SECRET_VALUE_RES))
# ``Authorization: Bearer x`` (the scheme goes too), and a bare ``Bearer x``
_HEADER_RE = re.compile(
    r"(?i)\b((?:proxy-)?authorization)(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
    r"(?:(?:bearer|basic|token|digest|negotiate|apikey)\s+)?[^\s\"',;\\]+"
)
_BEARER_RE = re.compile(r"\b([Bb]earer\s+)[A-Za-z0-9._~+/=\-]{12,}")
# ``name=value``, ``name: value``, ``"name": "value"`` inside text (URL queries, connection
# strings, JSON, YAML, ``--flag=value``)
_NAMED_RE = re.compile(
    r"(?<![A-Za-z0-9_])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,80})(?P<q1>\\?[\"']?)\s*[:=]\s*"
    r"(?:(?P<q2>\\?[\"'])(?P<qval>.*?)(?P=q2)|(?P<bval>[\[{][^\]}\n]*[\]}])"
    r"|(?P<val>[^\s\"',;&}\])\[{][^\s\"',;&}\])]*))"
)
_URL_CRED_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#\"'<>]*@")
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


# -- configurable rules -----------------------------------------------------------------------


class _Memo(dict[str, Any]):
    """key -> ``compute(key)``, computed at the first lookup of a key (at most ``_MEMO_MAX``
    keys, then forgotten all at once)."""

    def __init__(self, compute: Callable[[str], Any]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, key: str) -> Any:
        got = self._compute(key)
        if len(self) >= _MEMO_MAX:
            self.clear()
        self[key] = got
        return got


@dataclass(frozen=True)
class Rules:
    """The rules beyond the built-in ones: from ``[tool.runrec.redact]`` and the environment."""

    secret_names: tuple[re.Pattern[str], ...] = ()
    secret_values: tuple[re.Pattern[str], ...] = ()
    not_secret: tuple[str, ...] = ()  # lowercased globs
    sources: tuple[str, ...] = ()
    # caches (equality, hash and repr ignore them): the rules never change, so what they say
    # about a name or a text never does either. ``kinds[name]`` is ``kind(name)``, for loops
    # over many names (config.entries): a dict lookup, computed and remembered when missing
    kinds: _Memo = field(init=False, repr=False, compare=False)
    _texts: _Memo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # frozen: the caches are set once, here
        object.__setattr__(self, "kinds", _Memo(self._kind))
        object.__setattr__(self, "_texts", _Memo(lambda t: _redact_text(t, self, urls=True)))

    def kind(self, name: str) -> str | None:
        """``"strong"`` (any value is secret), ``"weak"`` (string values are) or None;
        remembered per name (a sweep asks about the same few config keys thousands of times)."""
        return self.kinds[name]

    def text(self, text: str) -> str:
        """``redact_text(text, self)``: credential shapes, secret ``name=value`` pairs and URL
        credentials replaced. Remembered per text up to ``_TEXT_MEMO_LEN`` characters (a
        sweep's string config values repeat from run to run; the result depends only on the
        text and these rules)."""
        if type(text) is not str or len(text) > _TEXT_MEMO_LEN:  # a str subclass: as it is
            return _redact_text(text, self, urls=True)
        return self._texts[text]

    def _kind(self, name: str) -> str | None:
        if any(rx.search(name) for rx in self.secret_names):
            return "strong"
        low = name.lower()
        if any(fnmatch.fnmatchcase(low, g) for g in self.not_secret):
            return None
        return _builtin_kind(name)


_MEMO_MAX = 8192  # names, and texts, remembered per Rules (then forgotten all at once)
_TEXT_MEMO_LEN = 256  # longer texts (tracebacks, command lines) are not remembered

BUILTIN = Rules()


def _patterns(items: list[str], where: str, key: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for p in items:
        try:
            out.append(re.compile(p, re.IGNORECASE if key == "secret_names" else 0))
        except re.error as exc:
            raise ConfigError(
                f"redaction rule {key} = {p!r} in {where} is not a valid regular expression "
                f"({exc}). Fix the pattern (Python `re` syntax)."
            ) from None
    return tuple(out)


def load_rules(start: str | None = None, environ: Mapping[str, str] | None = None) -> Rules:
    """The configured rules for a project directory (default: the current one); the files and
    variables are read by ``runrec_cluster.settings``."""
    names: list[re.Pattern[str]] = []
    values: list[re.Pattern[str]] = []
    allow: list[str] = []
    sources = []
    for where, t in settings.redact_sources(start or os.getcwd(), environ):
        sources.append(where)
        names += _patterns(t.get("secret_names", []), where, "secret_names")
        values += _patterns(t.get("secret_values", []), where, "secret_values")
        allow += [g.lower() for g in t.get("not_secret", [])]
    return Rules(tuple(names), tuple(values), tuple(allow), tuple(sources))


_cache: dict[Any, tuple[Any, Rules, float]] = {}
_REDACT_VARS = tuple(settings.REDACT_VARS.values())
RECHECK_S = 1.0  # how often the config files are looked for again (a sweep redacts thousands
# of values in a second; a file edited between two submissions is seen by the second)


def active_rules() -> Rules:
    """``load_rules()`` for the current directory and environment, read again when a config
    file appears, changes or goes."""
    get = os.environ.get
    key = (os.getcwd(), *[get(v) for v in _REDACT_VARS])
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and now - hit[2] < RECHECK_S:
        return hit[1]
    cwd = key[0]
    sig = []
    for p in settings.find_config_files(cwd):
        try:
            st = os.stat(p)
            sig.append((p, st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append((p, 0, 0))
    if hit is not None and hit[0] == sig:
        _cache[key] = (sig, hit[1], now)
        return hit[1]
    rules = load_rules(cwd)
    if len(_cache) > 32:
        _cache.clear()
    _cache[key] = (sig, rules, now)
    return rules


# -- names and labels ------------------------------------------------------------------------

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_printable(what: str, value: Any) -> Any:
    """``value``, or ``ConfigError`` when it is a string holding a control character (NUL,
    newline, escape...). Run names, tags, artifact names and dataset labels are data, never
    paths; but they are shown in terminals and tables, where a control character could hide
    or forge output (a newline makes a fake row, an escape sequence rewrites the screen)."""
    if isinstance(value, str):
        m = _CONTROL_RE.search(value)
        if m:
            raise ConfigError(
                f"{what} {value!r} contains the control character {m.group(0)!r} at position "
                f"{m.start()}; names and labels are shown in terminals and tables, where it could "
                "hide or forge output. Use printable text."
            )
    return value


# -- applying them ----------------------------------------------------------------------------


def is_secret_name(name: str, rules: Rules | None = None) -> bool:
    """Whether a value under ``name`` is treated as a secret (strings always; numbers only for
    strong names such as ``password``)."""
    return (rules or active_rules()).kind(name) is not None


def _hides(kind: str | None, value: Any) -> bool:
    if kind is None or value in (None, "", False, True):
        return False
    if kind == "weak":
        return isinstance(value, (str, bytes)) and not (
            isinstance(value, str) and _NUMBER_RE.match(value)
        )
    return True


def redact_text(text: str, rules: Rules | None = None) -> str:
    """Replace credential-shaped substrings, secret ``name=value`` pairs and URL credentials in
    free text."""
    return (rules or active_rules()).text(text)


def _redact_text(text: str, r: Rules, *, urls: bool) -> str:
    out = text
    if urls and "://" in out:
        out = _URL_CRED_RE.sub(lambda m: m.group(1) + REDACTED + "@", out)
    out = _SHAPES_RE.sub(REDACTED, out)
    for rx in r.secret_values:
        out = rx.sub(REDACTED, out)
    low = out.lower()
    if "authorization" in low:
        out = _HEADER_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, out)
    if "bearer" in low:
        out = _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, out)
    if "=" not in out and ":" not in out:
        return out

    # a pair whose name is not secret is skipped by its name only: its "value" may hold the
    # next pair (``https://host/x?token=...``)
    pieces = []
    pos = 0
    while (m := _NAMED_RE.search(out, pos)) is not None:
        # the value: quoted, a bracketed list or map on one line (hidden whole; an empty
        # one has nothing to hide), or a bare word
        group = "qval" if m.group("q2") is not None else "bval" if m.group("bval") else "val"
        val = m.group(group)
        if group == "bval" and not val[1:-1].strip():
            val = ""
        if val and not val.startswith(REDACTED[:-1]) and _hides(r.kind(m.group("name")), val):
            start, end = m.span(group)
            pieces += [out[pos:start], REDACTED]
            pos = end
        else:
            pieces.append(out[pos : m.end("name")])
            pos = m.end("name")
    pieces.append(out[pos:])
    return "".join(pieces)


_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")


def strip_url_credentials(url: str, rules: Rules | None = None) -> str:
    """``https://user:tok@host/x`` -> ``https://host/x`` (an https user alone is often a
    token); ``ssh://git@host/x`` and scp-style ``git@host:x`` keep their password-less ssh user;
    secret-looking query values and credential shapes are redacted."""
    r = rules or active_rules()
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_text(url, r, urls=True)
    if parts.scheme and "@" in parts.netloc:
        user, _, host = parts.netloc.rpartition("@")
        if parts.scheme.lower() in _SSH_SCHEMES and ":" not in user:
            return _redact_text(url, r, urls=False)
        url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return _redact_text(url, r, urls=True)


def redact_value(name: str, value: Any, rules: Rules | None = None) -> Any:
    """Redact a named value (env var, config key): the whole value if the name says it is a
    secret, credential-shaped substrings otherwise; recurses into dicts and lists."""
    r = rules or active_rules()
    t = type(value)
    if t is int or t is float or t is bool or value is None:  # the common case, first
        return REDACTED if _hides(r.kind(name), value) else value
    if t is str:  # the next most common: remembered per text (Rules.text)
        return REDACTED if _hides(r.kind(name), value) else r.text(value)
    if not isinstance(value, (dict, list, tuple)) and _hides(r.kind(name), value):
        return REDACTED
    if isinstance(value, str):
        return _redact_text(value, r, urls=True)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v, r) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(name, v, r) for v in value)
    return value


def flags(name: str, value: Any, rules: Rules | None = None) -> bool:
    """Whether ``redact_value(name, value)`` would change a single value (not a dict, list or
    tuple: those are walked by the caller, as ``redact_value`` walks them): the name says it is
    a secret, or a string holds a credential's shape or a URL with a password. Used to keep such
    values out of the store's pickled calls (``capture.withhold``)."""
    r = rules or active_rules()
    t = type(value)
    if t is int or t is float or t is bool or value is None:
        return _hides(r.kind(name), value)
    if _hides(r.kind(name), value):
        return True
    return isinstance(value, str) and r.text(value) != value


def redact_argv(argv: list[str], rules: Rules | None = None) -> list[str]:
    """``--password x``, ``--token=x`` and credential-shaped arguments are redacted (the value
    after a secret flag unless it is itself a ``--flag``)."""
    r = rules or active_rules()
    out: list[str] = []
    hide_kind: str | None = None
    for arg in argv:
        if hide_kind is not None and not arg.startswith("--"):
            out.append(REDACTED if _hides(hide_kind, arg) else redact_text(arg, r))
            hide_kind = None
            continue
        hide_kind = None
        if arg.startswith("-") and len(arg) > 1:
            flag, eq, val = arg.partition("=")
            kind = r.kind(flag.lstrip("-"))
            if kind is not None:
                if eq:
                    out.append(f"{flag}={REDACTED}" if _hides(kind, val) else redact_text(arg, r))
                else:
                    out.append(arg)
                    hide_kind = kind
                continue
        out.append(redact_text(arg, r))
    return out
