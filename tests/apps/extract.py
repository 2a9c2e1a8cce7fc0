"""The "extract" service (Starlette): calls catalog. No OpenTelemetry code."""

import logging
import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

log = logging.getLogger("extract")
log.setLevel(logging.INFO)

CATALOG = os.environ["CATALOG_URL"]


async def extract(request: Request) -> JSONResponse:
    log.info("extracting")
    async with httpx.AsyncClient() as client:
        catalog = (await client.get(CATALOG + "/lookup")).json()
    return JSONResponse(
        {
            "request_id": request.headers.get("x-request-id"),
            "authorization": request.headers.get("authorization"),
            "catalog": catalog,
        }
    )


async def status(request: Request) -> PlainTextResponse:
    return PlainTextResponse("status", status_code=int(request.path_params["code"]))


app = Starlette(routes=[Route("/extract", extract), Route("/status/{code:int}", status)])
