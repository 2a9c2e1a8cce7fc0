"""Services for the stop-signal tests: each request logs one line and answers 200. No OpenTelemetry code.

    uvicorn tests.apps.stopping:starlette_app        gunicorn tests.apps.stopping:flask_app
    python -m tests.apps.stopping flask-dev PORT     python -m tests.apps.stopping script URL N
"""

import logging
import sys
import time

log = logging.getLogger("stopping")
log.setLevel(logging.INFO)


def _starlette():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        log.info("served %s", request.url.path)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/hello", hello)])


def _flask():
    import flask

    app = flask.Flask("stopping")

    @app.get("/hello")
    def hello():
        log.info("served /hello")
        return "ok"

    return app


def __getattr__(name):  # build only the framework that is asked for
    if name == "starlette_app":
        return _starlette()
    if name == "flask_app":
        return _flask()
    raise AttributeError(name)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "flask-dev":
        _flask().run(host="127.0.0.1", port=int(sys.argv[2]))
    elif mode == "script":  # a plain script: some calls, then it waits to be stopped
        import httpx

        for _ in range(int(sys.argv[3])):
            httpx.get(sys.argv[2])
        log.info("calls done")
        print("ready", flush=True)
        time.sleep(600)
