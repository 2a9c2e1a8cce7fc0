"""The retry log: one informative line per downstream, rate-bounded, instead of one per retry.

stamina logs a WARNING for every retry it schedules, naming only the
exception (for ours, the internal `AttemptOutcome`): thousands of lines when a
downstream fails under load. The call core logs instead, on the
``otel_integration.retries`` logger, at most one WARNING per downstream every
`INTERVAL` seconds, with what an operator needs: method, downstream, reason,
attempt, wait, request ID, and how many retries went unlogged since the last
line. `StaminaLogFilter` (on the ``stamina`` logger) drops stamina's own
lines for our retries; the application's own stamina retries log as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otel_integration._client.downstreams import Downstream

INTERVAL = 10.0  # seconds between two retry lines for one downstream

_logger = logging.getLogger("otel_integration.retries")


def retrying(
    downstream: Downstream,
    now: float,
    *,
    method: str,
    reason: str,
    attempt: int,
    attempts: int,
    wait: float,
    request_id: tuple[str] | None,
) -> None:
    """A retry was scheduled: log it, or count it for the next line."""
    last = downstream.retry_log_at
    if last is not None and 0 <= now - last < INTERVAL:
        downstream.retries_unlogged += 1
        return
    unlogged, downstream.retries_unlogged = downstream.retries_unlogged, 0
    downstream.retry_log_at = now
    _logger.warning(
        "otel-integration: retrying %s to %s after %s (attempt %d of %d failed), in %.2f s; request_id=%s%s",
        method, downstream.key, reason, attempt, attempts, wait, request_id[0] if request_id else "-",
        f"; {unlogged} more retries to {downstream.key} since the last such line" if unlogged else "",
    )


class StaminaLogFilter(logging.Filter):
    """Drops stamina's per-retry line when the retry is ours (logged by `retrying` instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(getattr(record, "stamina.caused_by", "")).startswith("AttemptOutcome(")


STAMINA_LOG_FILTER = StaminaLogFilter()
