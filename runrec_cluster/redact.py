"""Secret redaction, applied before anything is written to a record.

Rules: a *name* (environment variable, config key, command-line flag) that looks like it holds
a secret has its value replaced; a *value* that has the shape of a well-known credential is
replaced wherever it appears; URLs lose their user and password.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"

SECRET_NAME_RE = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|"
    r"authorization|auth[_-]?token|(^|_)auth$|session[_-]?key|signature|(^|_)pwd$|_key$|^key$)",
    re.IGNORECASE,
)
# shapes of well-known credentials (fake examples are in the tests)
SECRET_VALUE_RES = [
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"github_pat_[A-Za-z0-9_]{40,}"),
    re.compile(r"glpat-[A-Za-z0-9_\-]{20,}"),  # GitLab
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}"),  # OpenAI-style keys
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"),  # JWT
]
_URL_CRED_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/@\s:]+)(:[^/@\s]*)?@")


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_RE.search(name))


def redact_text(text: str) -> str:
    """Replace credential-shaped substrings and URL credentials in free text."""
    out = _URL_CRED_RE.sub(lambda m: m.group(1) + REDACTED + "@", text)
    for rx in SECRET_VALUE_RES:
        out = rx.sub(REDACTED, out)
    return out


def strip_url_credentials(url: str) -> str:
    """``https://user:tok@host/x`` -> ``https://host/x``; scp-style ``git@host:x`` kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return redact_text(url)


def redact_value(name: str, value: Any) -> Any:
    """Redact a named value (env var, config key): whole value if the name is secret-looking,
    credential-shaped substrings otherwise; recurses into dicts and lists."""
    if (
        is_secret_name(name)
        and value not in (None, "", False, True)
        and not isinstance(value, (dict, list, tuple))
    ):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(name, v) for v in value)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """``--password x``, ``--token=x`` and credential-shaped arguments are redacted."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-"):
            flag, eq, val = arg.partition("=")
            if is_secret_name(flag.lstrip("-")):
                if eq:
                    out.append(f"{flag}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(redact_text(arg))
    return out
