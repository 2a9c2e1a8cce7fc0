"""A Starlette service that calls its downstream. No OpenTelemetry code.

``DOWNSTREAM_URL`` is the base URL of the downstream.

- ``/hello``                200 "hello", and one INFO log line
- ``/relay/<path>?<query>``  GET ``DOWNSTREAM_URL/<path>?<query>`` (the query as it came, plus
  ``#<X-Fragment>`` when that header is sent), ``X-Times`` times (default 1); 200 with the statuses
- ``/raise/<path>?<query>``  the same GET, then ``raise_for_status()`` unhandled: a 500 for a 4xx/5xx
"""

import logging
import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

log = logging.getLogger("relay")
log.setLevel(logging.INFO)
logging.getLogger("httpx").setLevel(logging.INFO)  # its "HTTP Request: GET <url>" lines, as many apps turn on


def target(request: Request) -> str:
    url = f"{os.environ['DOWNSTREAM_URL']}/{request.path_params['rest']}?{request.url.query}"
    fragment = request.headers.get("x-fragment")
    return f"{url}#{fragment}" if fragment else url


async def hello(request: Request) -> PlainTextResponse:
    log.info("hello handled")
    return PlainTextResponse("hello")


async def relay(request: Request) -> JSONResponse:
    statuses = []
    async with httpx.AsyncClient() as client:
        for _ in range(int(request.headers.get("x-times", "1"))):
            statuses.append((await client.get(target(request))).status_code)
    return JSONResponse({"statuses": statuses})


async def raise_(request: Request) -> PlainTextResponse:
    async with httpx.AsyncClient() as client:
        (await client.get(target(request))).raise_for_status()
    return PlainTextResponse("fine")


app = Starlette(
    routes=[
        Route("/hello", hello, methods=["GET", "POST"]),
        Route("/relay/{rest:path}", relay),
        Route("/raise/{rest:path}", raise_),
    ]
)
