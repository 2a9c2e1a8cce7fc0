"""Redaction, escaping and the export-path scrubber, as functions (the end-to-end checks are
in test_secrets_e2e.py and test_hostile_headers.py)."""

from __future__ import annotations

import logging

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Status, StatusCode

from otel_integration._escape import bounded, escape_controls
from otel_integration._log_safety import make_safe
from otel_integration._redaction import Redactor, normalise
from otel_integration._scrubbing import Scrubber
from otel_integration._server.shield import decode_header_item

REDACTOR = Redactor(["otp"])


@pytest.mark.parametrize(
    "name",
    ["token", "TOKEN", "%74oken", "auth_token", "authToken", "accessToken", "access-token", "ACCESS.TOKEN",
     "api-key", "apiKey", "x-api-key", "private_token", "client_secret", "password", "pwd", "sig", "Signature",
     "X-Amz-Signature", "X-Amz-Credential", "X-Goog-Signature", "AWSAccessKeyId", "code", "key", "session",
     "sessionid", "PHPSESSID", "jwt", "refresh_token", "id_token", "otp", "O%54P"],
)
def test_a_secret_parameter_in_any_spelling_is_redacted(name: str) -> None:
    assert REDACTOR.query(f"page=2&{name}=s3cret&q=x") == f"page=2&{name}=REDACTED&q=x"


@pytest.mark.parametrize("name", ["page", "tokenizer", "keyword", "q", "state", "codec", "sort_key"])
def test_ordinary_parameters_are_kept(name: str) -> None:
    assert REDACTOR.query(f"{name}=v") == f"{name}=v"


def test_urls_lose_credentials_and_secret_parameters_of_query_and_fragment() -> None:
    url = REDACTOR.url("https://user:pw@api.example/v1?page=2&access_token=abc;sig=x#access_token=frag&state=1")
    assert url == "https://REDACTED:REDACTED@api.example/v1?page=2&access_token=REDACTED;sig=REDACTED" \
                  "#access_token=REDACTED&state=1"
    assert REDACTOR.url("http://h/p#section-2") == "http://h/p#section-2"
    assert REDACTOR.url("http://h/p") == "http://h/p"


def test_urls_inside_messages_are_redacted() -> None:
    message = "Client error '404 Not Found' for url 'http://h:1/p?token=abc&a=1'\nsee https://docs.example/x"
    assert REDACTOR.text(message) == (
        "Client error '404 Not Found' for url 'http://h:1/p?token=REDACTED&a=1'\nsee https://docs.example/x"
    )


def test_names_are_compared_normalised() -> None:
    assert normalise("Access-Token") == normalise("access_token") == normalise("%61ccess.token") == "accesstoken"


@given(name=st.sampled_from(["token", "api_key", "accessToken", "otp"]), value=st.text(
    alphabet=st.characters(blacklist_characters="&;#", blacklist_categories=("Cs",)), min_size=1))
def test_the_value_of_a_secret_parameter_never_survives(name: str, value: str) -> None:
    assert REDACTOR.query(f"{name}={value}") == f"{name}=REDACTED"


def test_control_characters_are_escaped_and_values_bounded() -> None:
    assert escape_controls("a\r\nFORGED\x00\x1b[31m\u2028\u202e é") == "a\\x0d\\x0aFORGED\\x00\\x1b[31m\\u2028\\u202e é"
    text = "plain"
    assert escape_controls(text) is text
    assert bounded("x" * 300) == "x" * 256 + "...[44 more characters]"


@given(st.binary(max_size=64))
def test_header_bytes_decode_without_raising_or_inventing_characters(raw: bytes) -> None:
    text = decode_header_item(raw)
    assert "\r" not in text or b"\r" in raw
    assert "\n" not in text or b"\n" in raw
    assert "\x1b" not in text or b"\x1b" in raw


def test_decoding_keeps_valid_utf8_and_writes_invalid_bytes_as_escapes() -> None:
    assert decode_header_item("h\u00e9".encode()) == "h\u00e9"
    assert decode_header_item(b"\xff\\x\\r\\n") == "\\xff\\x\\r\\n"  # text, not a line break


# --- the scrubber ---------------------------------------------------------------------------


def span(attributes: dict[str, object], name: str = "GET", events: tuple[Event, ...] = (),
         status: Status = Status(StatusCode.UNSET)) -> ReadableSpan:
    return ReadableSpan(name=name, attributes=BoundedAttributes(attributes=attributes, immutable=True),
                        events=events, status=status)


SCRUBBER = Scrubber(REDACTOR)


def test_a_clean_span_is_exported_as_it_is() -> None:
    clean = span({"url.full": "http://h/p?page=1", "http.request.method": "GET", "db.statement": "SELECT\n1"})
    assert SCRUBBER.span(clean) is clean


def test_request_attributes_are_redacted_and_escaped_other_attributes_untouched() -> None:
    attributes = BoundedAttributes(maxlen=4, attributes={}, immutable=False)
    for key, value in {
        "url.query": "token=abc&q=1", "user_agent.original": "ua\r\nFORGED", "db.statement": "SELECT\n1",
        "http.request.header.x_forwarded": ("a\x1b", "b"), "url.full": "http://h/p?x=1#id_token=t",
    }.items():
        attributes[key] = value
    original = ReadableSpan(name="GET /a\nb", attributes=attributes)
    scrubbed = SCRUBBER.span(original)
    assert dict(scrubbed.attributes or {}) == {
        "user_agent.original": "ua\\x0d\\x0aFORGED",
        "db.statement": "SELECT\n1",  # not from a request: multi-line SQL stays multi-line
        "http.request.header.x_forwarded": ("a\\x1b", "b"),
        "url.full": "http://h/p?x=1#id_token=REDACTED",
    }  # url.query was the one dropped (maxlen 4)...
    assert scrubbed.dropped_attributes == 1  # ...and the count of dropped attributes is kept
    assert scrubbed.name == "GET /a\\x0ab"


def test_exception_events_and_status_descriptions_are_redacted() -> None:
    event = Event("exception", {"exception.message": "for url 'http://h/?token=abc'",
                                "exception.stacktrace": "Traceback...\nHTTPStatusError: for url 'http://h/?token=abc'"})
    scrubbed = SCRUBBER.span(span({}, events=(event,), status=Status(StatusCode.ERROR, "http://h/?token=abc")))
    (out,) = scrubbed.events
    assert "abc" not in repr(dict(out.attributes or {})) and "token=REDACTED" in out.attributes["exception.message"]  # type: ignore[index]
    assert scrubbed.status.description == "http://h/?token=REDACTED"


# --- log records ----------------------------------------------------------------------------


def record(name: str, msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]
    make_safe(made)
    return made


def test_opentelemetry_records_quote_request_values_escaped_and_bounded() -> None:
    made = record("opentelemetry.baggage.propagation", "Invalid baggage entry: `%s` (%d)", "a\r\nFORGED" + "x" * 300, 3)
    message = made.getMessage()
    assert "\n" not in message and "\\x0d\\x0aFORGED" in message and "more characters" in message
    assert message.endswith("(3)")  # numbers stay numbers


def test_httpx_info_line_loses_credentials_and_tokens() -> None:
    made = record("httpx", 'HTTP Request: %s %s "%s %d %s"', "GET", httpx.URL("http://u:p@h/x?token=abc&a=1"),
                  "HTTP/1.1", 200, "OK")
    assert made.getMessage() == 'HTTP Request: GET http://REDACTED:REDACTED@h/x?token=REDACTED&a=1 "HTTP/1.1 200 OK"'


@pytest.mark.parametrize("logger", ["uvicorn.access", "werkzeug", "gunicorn.access"])
def test_access_log_queries_are_redacted(logger: str) -> None:
    made = record(logger, '%s - "%s"', "127.0.0.1:5", "GET /r?access_token=zz&q=1 HTTP/1.1")
    assert made.getMessage() == '127.0.0.1:5 - "GET /r?access_token=REDACTED&q=1 HTTP/1.1"'
    atoms = record(logger, "%(q)s", {"q": "token=zz&q=1"})
    assert atoms.getMessage() == "token=REDACTED&q=1"


def test_a_logged_raise_for_status_traceback_is_redacted() -> None:
    try:
        httpx.Response(404, request=httpx.Request("GET", "http://h/p?token=abc")).raise_for_status()
    except httpx.HTTPStatusError:
        import sys

        made = record("app", "boom", exc_info=sys.exc_info())
    text = logging.Formatter().format(made)
    assert "token=REDACTED" in text and "abc" not in text


def test_other_records_are_left_alone() -> None:
    made = record("app", "user said %s", "a\nb")
    assert made.getMessage() == "user said a\nb"
    assert made.exc_text is None
