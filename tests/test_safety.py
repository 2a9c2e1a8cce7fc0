"""Telemetry and resilience never take the user's request down."""

from __future__ import annotations

import logging

import httpx


def test_a_bad_per_request_override_is_ignored_with_one_warning_and_the_call_stays_protected(
    instrument, fault_server, caplog
):
    instrument()
    with caplog.at_level(logging.WARNING, logger="otel_integration.retries"):
        with httpx.Client() as client:
            for _ in range(3):
                response = client.get(
                    fault_server.url + "/flaky/o?fail=1", extensions={"otel_integration": {"attempts": "many"}}
                )
                assert response.status_code == 200
    warnings = [r for r in caplog.records if "bad per-request override" in r.getMessage()]
    assert len(warnings) == 1 and "attempts='many'" in warnings[0].getMessage()
    assert len(fault_server.requests_to("/flaky/o")) == 4  # still retried: 503 then 200, then 200, 200


def test_a_failing_before_send_hook_does_not_fail_the_request(instrument, fault_server, caplog):
    instrumented = instrument()

    def broken(request: httpx.Request, downstream: object) -> None:
        raise RuntimeError("bug in a hook")

    instrumented.layer.before_send_hooks.append(broken)
    with caplog.at_level(logging.ERROR, logger="otel_integration.retries"):
        for _ in range(2):
            assert httpx.get(fault_server.url + "/ok").status_code == 200
    assert len([r for r in caplog.records if "sending it unprotected" in r.getMessage()]) == 1
