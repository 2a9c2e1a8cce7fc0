"""The X-Request-ID propagator: validation, extraction order, injection, generation."""

from __future__ import annotations

import re
import uuid

import pytest
from opentelemetry import context as otel_context

from otel_integration._propagation import (
    RequestIdPropagator,
    get_request_id,
    new_request_id,
    set_request_id,
    valid_request_id,
)

propagator = RequestIdPropagator("X-Request-ID", ("X-Request-ID", "X-Correlation-ID", "X-Trace-ID"))


@pytest.mark.parametrize(
    "value",
    ["abc", "req-1", "a.b:c_d-e", "A" * 128, str(uuid.uuid4()), b"bytes-ok"],
)
def test_valid_ids(value):
    expected = value.decode() if isinstance(value, bytes) else value
    assert valid_request_id(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "A" * 129, "x" * 70_000, "a b", "a\r\nSet-Cookie: x", "a\nb", "nul\x00", "caf\u00e9", "ü", "a/b", "<script>",
     "a;b", b"\xff\xfe", None, 42],
)
def test_invalid_ids_are_absent(value):
    assert valid_request_id(value) is None


def test_extract_takes_first_valid_candidate_header_in_order():
    carrier = {"x-correlation-id": ["corr-1"], "x-trace-id": ["trace-1"]}
    ctx = propagator.extract(carrier)
    assert get_request_id(ctx) == "corr-1"


def test_extract_skips_invalid_values_and_headers():
    carrier = {"x-request-id": ["bad value", "a" * 200], "x-correlation-id": ["\r\n"], "x-trace-id": ["good-1"]}
    assert get_request_id(propagator.extract(carrier)) == "good-1"


def test_extract_tries_each_value_of_a_repeated_header():
    assert get_request_id(propagator.extract({"X-Request-ID": ["bad value", "ok-2"]})) == "ok-2"


def test_extract_nothing_valid_leaves_context_without_id():
    ctx = propagator.extract({"x-request-id": ["\x00"], "x-trace-id": ["é"]})
    assert get_request_id(ctx) is None


def test_inject_uses_the_current_id():
    carrier: dict[str, str] = {}
    token = otel_context.attach(set_request_id("current-1"))
    try:
        propagator.inject(carrier)
    finally:
        otel_context.detach(token)
    assert carrier == {"X-Request-ID": "current-1"}


def test_inject_generates_a_uuid4_when_absent():
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    assert uuid.UUID(carrier["X-Request-ID"]).version == 4


def test_configured_header_names():
    custom = RequestIdPropagator("X-Corr", ("X-Corr",))
    assert custom.fields == {"X-Corr"}
    carrier: dict[str, str] = {}
    custom.inject(carrier, set_request_id("id-9"))
    assert carrier == {"X-Corr": "id-9"}
    assert get_request_id(custom.extract({"x-corr": ["id-10"]})) == "id-10"


def test_default_construction_reads_settings(monkeypatch):
    monkeypatch.setenv("OTEL_INTEGRATION_REQUEST_ID_HEADER", "X-Correlation-ID")
    assert RequestIdPropagator().header == "X-Correlation-ID"


def test_registered_as_entry_point_for_otel_propagators():
    from opentelemetry.util._importlib_metadata import entry_points

    (entry_point,) = entry_points(group="opentelemetry_propagator", name="xrequestid")
    assert entry_point.load() is RequestIdPropagator


def test_new_ids_are_unique_uuid4_in_hex_form():
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", value) and uuid.UUID(value).version == 4
        assert uuid.UUID(value).hex == value and valid_request_id(value) == value


def test_inject_during_a_transport_attempt_leaves_the_transports_header_alone():
    from otel_integration._client.tracing import AttemptInfo, current_attempt

    carrier = {"X-Request-ID": "call-1"}  # what the transport put on the request
    token = current_attempt.set(AttemptInfo(0, "http.request.header.x-request-id", ("call-1",), None))
    try:
        propagator.inject(carrier)
    finally:
        current_attempt.reset(token)
    assert carrier == {"X-Request-ID": "call-1"}
