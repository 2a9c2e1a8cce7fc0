"""Telemetry and resilience never take the user's request down."""

from __future__ import annotations

import logging

import httpx


def test_a_bad_per_request_override_sends_the_request_unprotected_and_logs_once(instrument, fault_server, caplog):
    instrument()
    with caplog.at_level(logging.ERROR, logger="otel_integration.transport"):
        with httpx.Client() as client:
            for _ in range(3):
                response = client.get(fault_server.url + "/ok", extensions={"otel_integration": {"attempts": "many"}})
                assert response.status_code == 200
    assert len([r for r in caplog.records if "sending it unprotected" in r.getMessage()]) == 1


def test_a_failing_before_send_hook_does_not_fail_the_request(instrument, fault_server):
    instrumented = instrument()

    def broken(request: httpx.Request, downstream: object) -> None:
        raise RuntimeError("bug in a hook")

    instrumented.layer.add_before_send(broken)
    assert httpx.get(fault_server.url + "/ok").status_code == 200
