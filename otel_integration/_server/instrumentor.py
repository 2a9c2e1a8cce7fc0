"""The server instrumentor: request IDs for every Starlette, FastAPI, plain-ASGI-under-uvicorn and Flask app.

Loaded by ``opentelemetry-instrument`` (entry point ``otel_integration_server``);
disable it with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_integration_server``.
It wraps ``Starlette.__call__`` (so the middleware is outside every
Starlette/FastAPI middleware, ServerErrorMiddleware included), uvicorn's app
loading (plain ASGI apps; a SERVER span is added with the upstream ASGI
middleware when nothing else creates one) and ``Flask.wsgi_app``. Each patch
is applied only when its framework is installed, and nothing of a framework is
imported before the app imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_integration import _auth as auth
from otel_integration import _shutdown
from otel_integration import _logs as logs
from otel_integration._server import asgi, shield, upstream, wsgi
from otel_integration._server.correlation import Correlator, deactivate_span_processors
from otel_integration._settings import ASGI_INTERNAL_SPANS, Settings

_logger = logging.getLogger(__name__)


class ServerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Loaded by ``opentelemetry-instrument`` (entry point ``otel_integration_server``).

    Disable it with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_integration_server``.
    Each framework patch is applied only when the framework is installed.
    """

    _patched: list[tuple[Any, str]] = []
    _restores: list[Callable[[], None]] = []
    settings: Settings | None = None

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        return ()  # every framework is optional; absent ones are skipped

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.get("settings") or Settings.from_env(log=False)
        if not settings.enabled:
            return
        ServerInstrumentor.settings = settings
        try:
            auth.sanitize_sensitive_headers()
            logs.install(settings)
            core = Correlator(settings)
            self._patch_upstream_asgi(core)
            self._patch_upstream_helpers(core)
            self._patch_starlette(core)
            self._patch_uvicorn(core)
            self._patch_flask(core)
        except Exception:  # never out of instrument(): the upstream instrumentations stay on
            _logger.exception("otel-integration: could not set up request IDs on the server side")

    def _uninstrument(self, **kwargs: Any) -> None:
        for owner, name in ServerInstrumentor._patched:
            attribute = getattr(owner, name, None)
            original = getattr(attribute, "__wrapped__", None)
            if original is not None:
                setattr(owner, name, original)
        ServerInstrumentor._patched = []
        for restore in ServerInstrumentor._restores:
            restore()
        ServerInstrumentor._restores = []
        deactivate_span_processors()
        shield.uninstall()
        logs.uninstall()
        ServerInstrumentor.settings = None

    @staticmethod
    def _wrap(owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        from wrapt import FunctionWrapper

        current = owner.__dict__[name]
        if isinstance(current, FunctionWrapper):
            return  # already ours
        setattr(owner, name, FunctionWrapper(current, wrapper))
        ServerInstrumentor._patched.append((owner, name))

    def _patch_upstream_asgi(self, core: Correlator) -> None:
        """The upstream ASGI middleware, once imported: its header decoder shielded, and
        only the INTERNAL spans ``OTEL_INTEGRATION_ASGI_INTERNAL_SPANS`` asks for.

        Every instance under the launcher is built by the starlette or fastapi
        instrumentation, or by our uvicorn hook, after this ran: the choice is
        made once per app, when its middleware is built, and costs nothing per request.
        """

        def patch(module: Any) -> None:
            shield.install_when_loaded()
            if core.settings.upstream_speedups:
                _undone_on_uninstrument(upstream.install_asgi)(module)
            self._exclude_internal_spans(module.OpenTelemetryMiddleware, core.settings)

        _when_imported(
            "opentelemetry.instrumentation.asgi", "opentelemetry.instrumentation.asgi", core, patch,
            "otel-integration: could not set up the ASGI instrumentation's defaults",
        )

    def _patch_upstream_helpers(self, core: Correlator) -> None:
        """The upstream server instrumentations, once imported: per-request helpers replaced
        with cheaper equivalents (`upstream`; the ASGI getter in `_patch_upstream_asgi`), unless
        ``OTEL_INTEGRATION_UPSTREAM_SPEEDUPS=false``."""
        if not core.settings.upstream_speedups:
            return
        for module_name, install in (
            ("opentelemetry.instrumentation.asgi", upstream.install_sanitize_method),
            ("opentelemetry.instrumentation.asgi", upstream.install_start_span),
            ("opentelemetry.instrumentation.wsgi", upstream.install_wsgi),
            ("opentelemetry.instrumentation.wsgi", upstream.install_sanitize_method),
            ("opentelemetry.instrumentation.flask", upstream.install_sanitize_method),
            ("opentelemetry.instrumentation.flask", upstream.install_start_span),
            ("opentelemetry.instrumentation.fastapi", upstream.install_sanitize_method),
        ):
            _when_imported(module_name, module_name, core, _undone_on_uninstrument(install), f"otel-integration: could not set up {module_name}")

    def _exclude_internal_spans(self, middleware: Any, settings: Settings) -> None:
        excluded = [name for name in ASGI_INTERNAL_SPANS if name not in settings.asgi_internal_spans]
        if not excluded:
            return  # every span the upstream makes: nothing to change
        parameters = list(inspect.signature(middleware.__init__).parameters)
        if "exclude_spans" not in parameters:
            _logger.warning(
                "otel-integration: this opentelemetry-instrumentation-asgi cannot exclude its %s spans", "/".join(excluded)
            )
            return
        position = parameters.index("exclude_spans") - 1  # after self

        def init(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # Only where the caller left it open: the starlette instrumentation never
            # passes it, the fastapi one passes None unless told otherwise.
            if len(args) <= position and kwargs.get("exclude_spans") is None:
                kwargs = {**kwargs, "exclude_spans": list(excluded)}
            return wrapped(*args, **kwargs)

        self._wrap(middleware, "__init__", init)

    def _patch_starlette(self, core: Correlator) -> None:
        Starlette = _original_class("starlette.applications", "Starlette")
        if Starlette is None:
            return

        def call(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if len(args) != 3 or kwargs:
                return wrapped(*args, **kwargs)  # e.g. uvicorn probing for an app factory
            scope, receive, send = args
            return asgi.handle(core, scope, receive, send, wrapped, True)

        self._wrap(Starlette, "__call__", call)

    def _patch_uvicorn(self, core: Correlator) -> None:
        # uvicorn has no upstream instrumentation that imports it anyway: patch it when the
        # process imports it (a service run by uvicorn), not at start-up (19 ms of imports).
        _when_imported(
            "uvicorn", "uvicorn.config", core, lambda _module: self._patch_uvicorn_now(core),
            "otel-integration: could not set up request IDs for uvicorn",
        )

    def _patch_uvicorn_now(self, core: Correlator) -> None:
        from uvicorn.config import Config

        def load(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            result = wrapped(*args, **kwargs)
            if instance.interface != "wsgi" and not isinstance(instance.loaded_app, asgi.RequestIdMiddleware):
                app = instance.loaded_app
                if not _has_server_spans(instance):
                    app = _otel_asgi(app)
                instance.loaded_app = asgi.RequestIdMiddleware(app, core.settings)
            return result

        self._wrap(Config, "load", load)
        from uvicorn.server import Server

        # Telemetry of the last requests is flushed once uvicorn has shut down, before
        # it re-raises the stop signal (also in uvicorn workers under gunicorn).
        self._wrap(Server, "shutdown", _shutdown.flush_after)
        _request_id_in_uvicorn_access_log(core.settings)

    def _patch_flask(self, core: Correlator) -> None:
        Flask = _original_class("flask.app", "Flask")
        if Flask is None:
            return

        def wsgi_app(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if len(args) != 2 or kwargs:
                return wrapped(*args, **kwargs)
            environ, start_response = args
            return wsgi.handle(core, environ, start_response, wrapped, True)

        self._wrap(Flask, "wsgi_app", wsgi_app)


def _when_imported(
    distribution: str, module: str, core: Correlator, action: Callable[[Any], None], failure: str
) -> None:
    """Run ``action(module)`` when the process imports `module` (wrapt's post-import hook), if
    `distribution` is installed, and only while `core`'s instrumentation is the active one.

    `distribution` is probed apart because finding a submodule imports its package.
    """
    if importlib.util.find_spec(distribution) is None:
        return
    import wrapt

    def patch(loaded: Any) -> None:
        if ServerInstrumentor.settings is not core.settings:
            return  # uninstrumented (or instrumented anew) since
        try:
            action(loaded)
        except Exception:  # noqa: BLE001 - never fail the import of the module
            _logger.exception(failure)

    wrapt.register_post_import_hook(patch, module)


def _undone_on_uninstrument(install: Callable[[Any], Callable[[], None]]) -> Callable[[Any], None]:
    """`install(module)`, its restore function kept for `_uninstrument`."""
    return lambda module: ServerInstrumentor._restores.append(install(module))


def _request_id_in_uvicorn_access_log(settings: Settings) -> None:
    """uvicorn's default access log line ends with the request ID (the record carries it; its format did not)."""
    if not settings.log_correlation:
        return
    from uvicorn.config import LOGGING_CONFIG

    access = LOGGING_CONFIG.get("formatters", {}).get("access")
    if isinstance(access, dict) and "request_id" not in access.get("fmt", "request_id"):
        original = access["fmt"]
        access["fmt"] = original + " request_id=%(request_id)s"
        ServerInstrumentor._restores.append(lambda: access.__setitem__("fmt", original))


def _original_class(module_name: str, name: str) -> Any:
    """The framework's own class, also when an instrumentation replaced the module attribute
    with a subclass (the starlette and flask instrumentations do)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    cls = getattr(module, name, None)
    for klass in getattr(cls, "__mro__", ()):
        if klass.__module__ == module_name and klass.__name__ == name:
            return klass
    return None


def _has_server_spans(config: Any) -> bool:
    """Whether the app uvicorn serves already gets SERVER spans from an instrumentation."""
    app = config.app
    if isinstance(app, str):
        if config.factory:
            return True  # unknown until called: do not risk double spans
        try:
            from uvicorn.importer import import_from_string

            app = import_from_string(app)
        except Exception:  # noqa: BLE001 - uvicorn already reported it
            return True
    starlette = _original_class("starlette.applications", "Starlette")
    if starlette is not None and isinstance(app, starlette):
        return True  # the starlette / fastapi instrumentations cover it
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return isinstance(app, OpenTelemetryMiddleware)
    except ImportError:
        return True


def _otel_asgi(app: Any) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app)
