"""`otel_integration.validate` (issue 14, part 2): a downstream's body against the caller's schema.

The responses come from real calls through the instrumented client: a real
server on 127.0.0.1 for the shape the test server answers, httpx's
`MockTransport` (a stand-in for the downstream, which is not ours) for bodies
the test chooses. The end-to-end case is the pipeline's drift phase
(`test_pipeline_e2e.py`).
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, TypeAdapter

import otel_integration
from otel_integration import IntegrationError, ValidationError, validate
from tests.peers import QuickFaultServer


class Echo(BaseModel):  # what the test server answers: {"path": ..., "headers": {...}}
    path: str
    headers: dict[str, str]


class Pages(BaseModel):
    path: int
    pages: int


class User(BaseModel):
    name: str
    password: int


class Account(BaseModel):
    user: User
    api_token: int
    pages: int


def answering(body: Any, **kwargs: Any) -> httpx.Client:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=content, **kwargs)))


def test_a_matching_body_is_parsed(instrument):
    instrument()
    with QuickFaultServer() as server, httpx.Client() as client:
        response = client.get(server.url + "/ok")
    echo = validate(response, Echo)
    assert isinstance(echo, Echo) and echo.path == "/ok"
    assert otel_integration.validate is validate


def test_every_failing_field_is_named_with_expected_and_got(instrument):
    instrument()
    with QuickFaultServer() as server, httpx.Client() as client:
        response = client.get(server.url + "/documents/7?token=s3cr3t")
    with pytest.raises(ValidationError) as caught:
        validate(response, Pages)
    error = caught.value
    assert isinstance(error, IntegrationError) and isinstance(error, ValueError)
    text = str(error)
    assert text.startswith(f"response of 127.0.0.1:{server.port} to GET /documents/7 does not match Pages (2 fields): ")
    assert 'path: expected Input should be a valid integer, unable to parse string as an integer, got string "/documents/7"' in text
    assert "pages: expected Field required, got missing" in text
    assert "s3cr3t" not in text
    assert error.method == "GET" and error.path == "/documents/7" and error.status == 200
    assert [location for location, _, _ in error.fields] == ["path", "pages"]
    assert error.attempts == 1 and error.request_id == response.request.headers["x-request-id"]


def test_values_of_secret_looking_fields_are_hidden(instrument):
    instrument()
    body = {"user": {"name": 5, "password": "hunter2"}, "api_token": "tok-123", "pages": "many"}
    with answering(body) as client:
        response = client.get("http://svc.test/account")
    with pytest.raises(ValidationError) as caught:
        validate(response, Account)
    text = str(caught.value)
    assert "hunter2" not in text and "tok-123" not in text
    assert "user.password: expected Input should be a valid integer" in text and "got string (hidden)" in text
    assert "api_token: expected" in text
    assert 'pages: expected Input should be a valid integer, unable to parse string as an integer, got string "many"' in text
    assert "user.name: expected Input should be a valid string, got number 5" in text


def test_control_characters_from_the_body_are_escaped_and_values_bounded(instrument):
    instrument()
    with answering({"path": "x\r\nFORGED line", "pages": "y" * 500}) as client:
        response = client.get("http://svc.test/")
    with pytest.raises(ValidationError) as caught:
        validate(response, Pages)
    text = str(caught.value)
    assert "\r" not in text and "\n" not in text and "FORGED" in text
    assert "y" * 100 not in text


def test_a_body_that_is_not_json(instrument):
    instrument()
    with answering(b"<html>oops</html>", headers={"content-type": "text/html"}) as client:
        response = client.get("http://svc.test/")
    with pytest.raises(ValidationError, match=r"\(body\): expected a JSON document, got 17 bytes of text/html"):
        validate(response, Pages)


def test_a_type_adapter_and_callables(instrument):
    instrument()
    with answering([1, "two", 3]) as client:
        response = client.get("http://svc.test/numbers")
    with pytest.raises(ValidationError, match=r"1: expected Input should be a valid integer.*got string \"two\""):
        validate(response, TypeAdapter(list[int]))
    assert validate(response, lambda data: len(data)) == 3
    with pytest.raises(ValidationError, match=r"missing: expected present, got missing"):
        validate(response, lambda data: {"a": 1}["missing"])
    with pytest.raises(ValidationError, match=r"\(body\): expected not three numbers, got array"):
        validate(response, _three_numbers_refused)


def _three_numbers_refused(data: Any) -> Any:
    raise ValueError("not three numbers")


def test_an_error_that_is_not_a_verdict_propagates_unchanged(instrument):
    instrument()
    with answering({}) as client:
        response = client.get("http://svc.test/")

    def broken(data: Any) -> Any:
        raise RuntimeError("a bug in the caller's parser")

    with pytest.raises(RuntimeError, match="a bug"):
        validate(response, broken)
    with pytest.raises(TypeError, match="schema must be"):
        validate(response, 42)


def test_telemetry_a_span_event_and_a_counter_by_downstream(instrument):
    port = 8081
    instrumented = instrument(services={"extract": f"extract.test:{port}"})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with answering({"path": "x"}) as client:
        response = client.get(f"http://extract.test:{port}/schema/1")
    with provider.get_tracer("caller").start_as_current_span("register"):
        with pytest.raises(ValidationError) as caught:
            validate(response, Pages)
    assert caught.value.downstream == "extract" and str(caught.value).startswith("response of extract to GET /schema/1")
    ((name, attributes),) = [(e.name, dict(e.attributes)) for e in exporter.get_finished_spans()[0].events]
    assert name == "http.client.response.validation_error"
    assert attributes["validation.schema"] == "Pages" and attributes["validation.field_count"] == 2
    assert attributes["validation.fields"] == ("path", "pages")
    assert attributes["server.address"] == "extract.test" and attributes["server.port"] == port
    assert instrumented.counter_total("http.client.response.validation_errors", peer_service="extract") == 1


def test_validation_error_pickles_with_its_fields(instrument):
    instrument()
    with answering({"path": "a"}) as client:
        response = client.get("http://svc.test/x")
    with pytest.raises(ValidationError) as caught:
        validate(response, Pages)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and copy.fields == caught.value.fields and copy.path == "/x"
