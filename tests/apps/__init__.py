"""Tiny services for the end-to-end tests (run under opentelemetry-instrument + uvicorn)."""
