"""What the three example services share: plain FastAPI, plain logging, plain httpx.

Nothing here knows about OpenTelemetry. Run under ``opentelemetry-instrument``, the
otel-integration distro adds trace context, X-Request-ID, retries and circuit breakers
to every httpx call, and request_id / trace_id / span_id to every log record.
"""

from __future__ import annotations

import logging
import os
import time

from fastapi import FastAPI, Request


def service_url(name: str) -> str:
    """Where a downstream lives: ``EXTRACT_URL``, ``CATALOG_URL``, ... (12-factor style)."""
    return os.environ[f"{name.upper()}_URL"].rstrip("/")


def create_app(name: str, title: str) -> tuple[FastAPI, logging.Logger]:
    app = FastAPI(title=title)
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)

    @app.get("/livez")
    def livez() -> dict:
        return {"status": "alive", "service": name}

    return app, logger


def log_requests(app: FastAPI, logger: logging.Logger) -> None:
    """One log line per request. Call it last: the last middleware added is the outermost,
    so the line is written for every request, also those another middleware answered."""

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        # One line per request; the distro adds request_id/trace_id/span_id to the record.
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            logger.info(
                "%s %s -> %d in %.1f ms",
                request.method,
                request.url.path,
                status,
                (time.perf_counter() - started) * 1000,
            )
