"""Log correlation: request_id, trace_id and span_id on every stdlib log record.

`install()` (run by the client and server instrumentors under
``opentelemetry-instrument``) wraps the current `logging.LogRecordFactory`, so every record of every logger,
uvicorn's and the app's included, gets three attributes:

- ``request_id``: the validated correlation ID of the request being handled;
- ``trace_id`` / ``span_id``: the current span, lowercase hex;

all empty strings outside a request / span. The request ID only ever comes
from the OpenTelemetry context, where only validated values are stored, so a
log line never contains a raw incoming header.

Records go over OTLP by default: opentelemetry-instrumentation-logging (a
dependency) puts its handler on the root logger, and it turns record
attributes into log attributes, so the exported record carries ``request_id``
(its own trace and span IDs are set from the context).

``OTEL_INTEGRATION_LOG_FORMAT=true`` (the default) also installs `DEFAULT_FORMAT`
on a stderr handler, but only when the application configured no handler on
the root logger; a later ``logging.basicConfig()`` / ``dictConfig()`` /
``fileConfig()`` by the app removes it again, so the app's own configuration
always wins. Where the app gives no format of its own (``basicConfig(level=...)``,
the most common set-up), its handler gets `DEFAULT_FORMAT`, so its lines still
show the request ID. ``OTEL_INTEGRATION_LOG_CORRELATION=false`` turns all of it off
(the IDs are then empty strings).

The same factory makes each record safe to write (`_log_safety.py`): that
part stays on whatever the settings, while the distro is enabled.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Callable
from typing import Any, cast

from opentelemetry import trace

from otel_integration._log_safety import make_safe, use_redactor
from otel_integration._propagation import get_request_id
from otel_integration._redaction import Redactor
from otel_integration._settings import Settings

DEFAULT_FORMAT = (
    "%(asctime)s %(levelname)s [%(name)s] [request_id=%(request_id)s trace_id=%(trace_id)s "
    "span_id=%(span_id)s] %(message)s"
)
_FACTORY_MARK = "_otel_integration_correlation"


def correlation_ids() -> tuple[str, str, str]:
    """(request_id, trace_id, span_id) of the current context; empty strings when absent."""
    request_id = get_request_id() or ""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return request_id, format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
    return request_id, "", ""


def _make_factory(previous: Callable[..., logging.LogRecord], correlate: bool = True) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            make_safe(record)
        except Exception:  # noqa: BLE001 - logging must never fail because of us
            pass
        try:
            request_id, trace_id, span_id = correlation_ids() if correlate else ("", "", "")
        except Exception:  # noqa: BLE001
            request_id = trace_id = span_id = ""
        record.request_id = request_id
        record.trace_id = trace_id
        record.span_id = span_id
        return record

    setattr(factory, _FACTORY_MARK, previous)
    return factory


class _DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our stderr handler; removed as soon as the app configures logging itself."""


_state: dict[str, Any] = {"handler": None, "config_functions": None}


def install_record_factory(correlate: bool = True) -> None:
    current = logging.getLogRecordFactory()
    if getattr(current, _FACTORY_MARK, None) is not None:
        return
    logging.setLogRecordFactory(_make_factory(current, correlate))


def uninstall_record_factory() -> None:
    current = logging.getLogRecordFactory()
    previous = getattr(current, _FACTORY_MARK, None)
    if previous is not None:
        logging.setLogRecordFactory(previous)


def _root_has_app_handlers() -> bool:
    """basicConfig does nothing when the root logger has handlers (unless force=True)."""
    return _app_configured_root()


def _app_configured_root() -> bool:
    """Whether the root logger has a handler other than OpenTelemetry's exporters or ours."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _DefaultHandler):
            continue
        if type(handler).__name__ == "LoggingHandler" and type(handler).__module__.startswith("opentelemetry"):
            continue
        return True
    return False


def install_default_format(stream: Any = None) -> logging.Handler | None:
    if _state["handler"] is not None or _app_configured_root():
        existing: logging.Handler | None = _state["handler"]
        return existing
    handler = _DefaultHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(DEFAULT_FORMAT))
    logging.getLogger().addHandler(handler)
    _state["handler"] = handler
    _wrap_config_functions()
    return handler


def remove_default_format() -> None:
    handler, _state["handler"] = _state["handler"], None
    if handler is not None:
        logging.getLogger().removeHandler(handler)


def _wrap_config_functions() -> None:
    if _state["config_functions"] is not None:
        return
    originals = (logging.basicConfig, logging.config.dictConfig, logging.config.fileConfig)
    _state["config_functions"] = originals

    def wrap(function: Callable[..., Any], *, dict_config: bool = False) -> Callable[..., Any]:
        def configure(*args: Any, **kwargs: Any) -> Any:
            if not dict_config or _configures_root(args[0] if args else kwargs.get("config")):
                remove_default_format()  # the app configures the root logger: its format wins
            return function(*args, **kwargs)

        configure.__wrapped__ = function  # type: ignore[attr-defined]
        return configure

    def basic_config(**kwargs: Any) -> None:
        # The most common set-up, basicConfig(level=logging.INFO), gives no format:
        # ours then, so its lines still show the request ID.
        applies = kwargs.get("force") or not _root_has_app_handlers()
        if "format" not in kwargs and kwargs.get("style", "%") == "%" and applies:
            kwargs["format"] = DEFAULT_FORMAT
        remove_default_format()
        originals[0](**kwargs)

    basic_config.__wrapped__ = originals[0]  # type: ignore[attr-defined]
    logging.basicConfig = basic_config
    logging.config.dictConfig = wrap(originals[1], dict_config=True)
    logging.config.fileConfig = wrap(originals[2])


def _configures_root(config: object) -> bool:
    """uvicorn's dictConfig only sets up its own loggers: ours stays for the app's."""
    if not isinstance(config, dict) or config.get("incremental"):
        return False
    return "root" in config or "" in (config.get("loggers") or {})


def _unwrap_config_functions() -> None:
    originals, _state["config_functions"] = _state["config_functions"], None
    if originals is None:
        return
    basic, dict_config, file_config = cast("tuple[Any, Any, Any]", originals)
    if getattr(logging.basicConfig, "__wrapped__", None) is basic:
        logging.basicConfig = basic  # type: ignore[assignment]
    if getattr(logging.config.dictConfig, "__wrapped__", None) is dict_config:
        logging.config.dictConfig = dict_config  # type: ignore[assignment]
    if getattr(logging.config.fileConfig, "__wrapped__", None) is file_config:
        logging.config.fileConfig = file_config  # type: ignore[assignment]


_users = {"count": 0}  # the client and the server instrumentors both install it


def install(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env(log=False)
    _users["count"] += 1
    use_redactor(Redactor(settings.redact_query_params))
    install_record_factory(correlate=settings.log_correlation)
    if settings.log_correlation and settings.log_format:
        install_default_format()
        _wrap_config_functions()


def uninstall() -> None:
    """Undo `install`; what is left when its last user (instrumentor) uninstalls."""
    _users["count"] = max(0, _users["count"] - 1)
    if _users["count"]:
        return
    remove_default_format()
    _unwrap_config_functions()
    uninstall_record_factory()
