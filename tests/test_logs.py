"""Log correlation: record attributes, the default format, OTLP log attributes."""

from __future__ import annotations

import io
import logging
import logging.config
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from otel_integration import _logs as logs
from otel_integration import RequestIdMiddleware
from otel_integration._settings import Settings
from tests.test_server import is_uuid4, run_asgi

log = logging.getLogger("test.logs.app")


@pytest.fixture(autouse=True)
def _clean_logging() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    factory = logging.getLogRecordFactory()
    yield
    logs.uninstall()
    logging.setLogRecordFactory(factory)
    root.handlers[:] = handlers
    root.setLevel(level)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter(logs.DEFAULT_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


async def logging_app(scope: dict, receive: Any, send: Any) -> None:
    log.warning("inside the request")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_records_carry_ids_inside_a_request_and_empty_strings_outside() -> None:
    logs.install_record_factory()
    handler = ListHandler()
    log.addHandler(handler)
    try:
        log.warning("outside")
        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("server"):
            run_asgi(RequestIdMiddleware(logging_app), headers=[("X-Request-ID", "log-1")])
    finally:
        log.removeHandler(handler)
    outside, inside = handler.records
    assert (outside.request_id, outside.trace_id, outside.span_id) == ("", "", "")
    assert inside.request_id == "log-1"
    assert len(inside.trace_id) == 32 and len(inside.span_id) == 16
    assert "request_id=log-1" in handler.lines[1]
    assert "request_id= trace_id= span_id=" in handler.lines[0]


def test_every_logger_including_third_party_ones() -> None:
    logs.install_record_factory()
    handler = ListHandler()
    other = logging.getLogger("uvicorn.error")
    other.addHandler(handler)
    old_level = other.level
    other.setLevel(logging.INFO)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        other.info("from uvicorn's logger")
        await logging_app(scope, receive, send)

    try:
        run_asgi(RequestIdMiddleware(app), headers=[("X-Request-ID", "third-1")])
    finally:
        other.removeHandler(handler)
        other.setLevel(old_level)
    assert handler.records[0].request_id == "third-1"


@pytest.mark.parametrize("bad", [b"evil\r\nFAKE LOG LINE", b"x" * 10_000, "h\u00e9llo".encode()])
def test_log_lines_never_contain_a_raw_header(bad: bytes) -> None:
    logs.install_record_factory()
    handler = ListHandler()
    log.addHandler(handler)
    try:
        run_asgi(RequestIdMiddleware(logging_app), headers=[("X-Request-ID", bad)])
    finally:
        log.removeHandler(handler)
    (record,) = handler.records
    assert is_uuid4(record.request_id)
    assert "FAKE" not in handler.lines[0] and "xxxxxxxxxx" not in handler.lines[0] and "\u00e9" not in handler.lines[0]


def test_default_format_only_when_the_app_configured_nothing() -> None:
    root = logging.getLogger()
    root.handlers[:] = []
    stream = io.StringIO()
    handler = logs.install_default_format(stream)
    assert handler is not None and handler in root.handlers
    logs.install_record_factory()
    run_asgi(RequestIdMiddleware(logging_app), headers=[("X-Request-ID", "fmt-1")])
    assert "[request_id=fmt-1 trace_id=" in stream.getvalue() and "inside the request" in stream.getvalue()
    # uvicorn's dictConfig configures only its own loggers: the default stays
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "loggers": {"uvicorn": {}}})
    assert handler in root.handlers
    # the app configuring the root logger wins
    logging.basicConfig(format="%(message)s")
    assert handler not in root.handlers and len(root.handlers) == 1


def test_basic_config_without_a_format_gets_ours() -> None:
    """The issue's case: basicConfig(level=INFO), the most common set-up, lost the request ID."""
    root = logging.getLogger()
    root.handlers[:] = []
    logs.install(Settings())
    try:
        logging.basicConfig(level=logging.INFO)
        (handler,) = [h for h in root.handlers if not isinstance(h, logs._DefaultHandler)]
        assert handler.formatter is not None and handler.formatter._fmt == logs.DEFAULT_FORMAT
        root.handlers[:] = []
        logging.basicConfig(format="%(levelname)s %(message)s")  # the app's own format wins
        assert root.handlers[0].formatter._fmt == "%(levelname)s %(message)s"
        root.handlers[:] = []
        logging.basicConfig(style="{")  # another style: its default, not ours
        assert root.handlers[0].formatter._fmt == "{levelname}:{name}:{message}"
    finally:
        root.handlers[:] = []
        logs.uninstall()


def test_no_default_format_when_the_app_has_handlers() -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler()]
    assert logs.install_default_format(io.StringIO()) is None


def test_opentelemetry_logging_handler_does_not_count_as_app_configuration() -> None:
    root = logging.getLogger()
    root.handlers[:] = [LoggingHandler(logger_provider=LoggerProvider())]
    assert logs.install_default_format(io.StringIO()) is not None


def test_opt_out_leaves_the_ids_empty_and_adds_no_handler() -> None:
    from dataclasses import replace

    from opentelemetry import context

    from otel_integration._propagation import set_request_id

    handlers = list(logging.getLogger().handlers)
    logs.install(replace(Settings(), log_correlation=False))
    try:
        token = context.attach(set_request_id("opt-out-1"))
        try:
            record = logging.getLogger("app").makeRecord("app", logging.INFO, __file__, 1, "m", (), None)
        finally:
            context.detach(token)
        assert record.request_id == ""  # type: ignore[attr-defined]
        assert logging.getLogger().handlers == handlers
    finally:
        logs.uninstall()


def test_install_is_idempotent_and_uninstall_restores() -> None:
    before = logging.getLogRecordFactory()
    logs.install_record_factory()
    once = logging.getLogRecordFactory()
    logs.install_record_factory()
    assert logging.getLogRecordFactory() is once
    logs.uninstall_record_factory()
    assert logging.getLogRecordFactory() is before


def test_exported_otlp_log_records_carry_request_id() -> None:
    logs.install_record_factory()
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    log.addHandler(handler)
    try:
        run_asgi(RequestIdMiddleware(logging_app), headers=[("X-Request-ID", "otlp-1")])
    finally:
        log.removeHandler(handler)
    (exported,) = exporter.get_finished_logs()
    assert exported.log_record.attributes["request_id"] == "otlp-1"
