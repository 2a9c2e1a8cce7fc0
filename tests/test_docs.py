"""The docs state what the code does: generated tables are current, numbers match the constants."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from otel_integration import _export_gate, _shutdown
from otel_integration._client import budget, retry_log
from otel_integration._client.breaker import shared
from otel_integration._settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_the_configuration_table_is_generated_from_the_settings():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_numbers_the_readme_gives_are_the_codes():
    settings = Settings()
    assert budget.TTL == 10.0 and "sliding 10 s window" in README
    reserve = settings.retry_budget_min_per_second * budget.TTL
    assert reserve == 100 and "at most 100 plus 20 % of its calls" in README
    assert retry_log.INTERVAL == 10.0 and "at most every 10 s on the `otel_integration.retries` logger" in README
    assert shared.INTERVAL == 0.5 and "adopts the others' every 0.5 s" in README
    assert shared.RETRY_BACKOFF == 5.0 and "Redis is retried every 5 s" in README


def test_the_stopping_numbers_the_readme_gives_are_the_codes():
    section = README[README.index("## Stopping and a missing collector"):README.index("## In a service")]
    assert _shutdown.FLUSH_BUDGET == 5.0 and "flushed within 5 s" in section
    assert _export_gate.RETRY_AFTER == 5.0 and "would retry) for 5 s" in section and "tried again every 5 s" in section
    assert sorted(_export_gate.UNAVAILABLE_STATUSES) == [429, 502, 503, 504] and "429, 502, 503 or 504" in section
    assert _export_gate.CONNECT_TIMEOUT == 1.0 and "caps connecting\nat 1 s" in section
    assert _export_gate.UNPROVEN_TIMEOUT == 2.0 and "answering at 2 s" in section
    assert _export_gate.EXIT_BUDGET == 2.0 and "one try within 2 s" in section


def test_the_reliability_table_counts_what_the_tests_send():
    from otel_integration._escape import MAX_LOGGED_LENGTH
    from tests import test_hostile_headers, test_redaction, test_secrets_e2e, test_tracecontext

    table = (REPO / "docs" / "reliability.md").read_text()
    assert f"| {len(test_tracecontext.TRACEPARENT_CASES)} cases: missing, valid" in table
    assert f"| {len(test_tracecontext.FLAGS_CASES)} cases: sampled" in table
    assert f"| {len(test_tracecontext.TRACESTATE_CASES)} cases: without" in table
    assert f"then {test_hostile_headers.FUZZ_EXAMPLES} fuzzed requests" in table
    headers = len(test_hostile_headers.TELEMETRY_HEADERS) + len(test_hostile_headers.EXTRA_FUZZED_HEADERS)
    assert f"in up to {test_hostile_headers.MAX_FUZZED_HEADERS} of {headers} headers" in table
    spellings = next(m for m in test_redaction.test_a_secret_parameter_in_any_spelling_is_redacted.pytestmark
                     if m.name == "parametrize").args[1]
    assert f"{len(spellings)} spellings" in table
    for spelling in test_secrets_e2e.SPELLINGS:
        assert f"`{spelling}`" in table
    assert f"cut to {MAX_LOGGED_LENGTH} characters" in table


def test_the_cache_numbers_the_readme_gives_are_the_codes():
    from otel_integration._client import cache

    section = README[README.index("### Response caching"):README.index("### Errors")]
    assert cache.MEMORY_MAX_SIZE == 64 * 1024 * 1024 and "at most 64 MiB" in section
    assert Settings().cache_max_stale == 300.0 and "(300 s; 0 turns this off)" in section
    assert Settings().cache_ttl == 0.0 and "0 by default" in section
    assert sorted(cache.STALE_STATUSES) == [500, 502, 503, 504] and "500, 502, 503\n  or 504" in section
