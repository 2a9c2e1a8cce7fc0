"""Secrets out of URLs and messages: what the export path applies to every span and log record.

A parameter of a query string or of a URL fragment (``#access_token=``, the
OAuth implicit flow) is secret when its *normalised* name is one of
`SENSITIVE_NAMES`, ends with one of `SENSITIVE_SUFFIXES`, or is one of
``OTEL_INTEGRATION_REDACT_QUERY_PARAMS``. Normalising percent-decodes the
name, lowercases it and drops ``-``, ``_``, ``.`` and spaces, so ``token``,
``Token``, ``%74oken``, ``access_token``, ``accessToken``, ``access-token``
and ``ACCESS.TOKEN`` are one name. The value becomes ``REDACTED`` (the
semantic conventions' word for it); the name and the other parameters stay.

Credentials in the authority (``user:password@``) are removed by the upstream
`opentelemetry.util.http.redact_url`, which this builds on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from opentelemetry.util.http import redact_url

REDACTED = "REDACTED"

# Normalised (see `normalise`). The semantic conventions' defaults for url.query
# (AWSAccessKeyId, Signature, sig, X-Goog-Signature) are among them.
SENSITIVE_NAMES = frozenset({
    "accesskey", "auth", "authorization", "awsaccesskeyid", "code", "jwt", "key", "passcode", "session", "sig",
})
SENSITIVE_SUFFIXES = (
    "apikey", "credential", "credentials", "passwd", "password", "pwd", "secret", "sessid", "sessionid", "signature",
    "token",
)

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_DROPPED = str.maketrans("", "", "-_. ")


def normalise(name: str) -> str:
    """The form names are compared in: ``%74oken`` -> ``token``, ``Access-Token`` -> ``accesstoken``."""
    return unquote_plus(name).lower().translate(_DROPPED)


class Redactor:
    """Redaction with the built-in names plus `extra_names` (``OTEL_INTEGRATION_REDACT_QUERY_PARAMS``)."""

    def __init__(self, extra_names: Iterable[str] = ()) -> None:
        self.names = SENSITIVE_NAMES | {normalise(n) for n in extra_names}

    def sensitive(self, name: str) -> bool:
        key = normalise(name)
        return key in self.names or key.endswith(SENSITIVE_SUFFIXES)

    def query(self, query: str) -> str:
        """``a=1&token=abc`` -> ``a=1&token=REDACTED`` (also for a fragment of parameters)."""
        if "=" not in query:
            return query
        parts = re.split(r"([&;])", query)
        for i in range(0, len(parts), 2):
            name, equals, _ = parts[i].partition("=")
            if equals and self.sensitive(name):
                parts[i] = f"{name}={REDACTED}"
        return "".join(parts)

    def url(self, url: str) -> str:
        """Credentials, and secret parameters of the query and of the fragment, removed from `url`."""
        if "@" in url:
            url = redact_url(url) or url
        if "=" not in url:
            return url
        rest, hash_, fragment = url.partition("#")
        base, question, query = rest.partition("?")
        return f"{base}{question}{self.query(query)}{hash_}{self.query(fragment)}"

    def text(self, text: str) -> str:
        """Every URL inside a message (an exception's, a log line's) redacted."""
        if "://" not in text:
            return text
        return _URL.sub(lambda match: self.url(match.group()), text)


DEFAULT = Redactor()
