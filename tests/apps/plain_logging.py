"""An app with the most common logging set-up, basicConfig(level=INFO) and no format. No OpenTelemetry code."""

import logging

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("plain")


async def hello(request):
    log.info("hello handled")
    return PlainTextResponse("ok")


async def crash(request):
    raise RuntimeError("unhandled in the app")


app = Starlette(routes=[Route("/hello", hello), Route("/crash", crash)])
