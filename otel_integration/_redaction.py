"""Secrets out of URLs: what the distro applies to every span it records or annotates.

The upstream instrumentations remove credentials (``user:password@``) and a
few signature parameters; they keep tokens such as ``?access_token=``.
"""

from __future__ import annotations

import re

from opentelemetry.util.http import redact_url

# Query parameters whose values are replaced by REDACTED (case-insensitive),
# in addition to the upstream list (AWSAccessKeyId, Signature, sig, X-Goog-Signature).
SENSITIVE_QUERY_PARAMETERS = (
    "access_token", "api_key", "apikey", "auth", "client_secret", "code", "id_token", "key",
    "password", "passwd", "pwd", "refresh_token", "secret", "session", "sessionid", "sig",
    "signature", "token", "x-amz-credential", "x-amz-security-token", "x-amz-signature",
)
_SENSITIVE_QUERY = re.compile(
    r"(?i)(^|[?&;])((?:%s)=)[^&;#]*" % "|".join(re.escape(p) for p in SENSITIVE_QUERY_PARAMETERS)
)


def redact_query(query: str) -> str:
    """`a=1&token=abc` -> `a=1&token=REDACTED`."""
    return _SENSITIVE_QUERY.sub(r"\1\2REDACTED", query)


def redact_url_secrets(url: str) -> str:
    """Credentials and secret-looking query parameters removed from `url`."""
    url = redact_url(url) or url
    if "?" not in url:
        return url
    base, _, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    return f"{base}?{redact_query(query)}{hash_}{fragment}"
