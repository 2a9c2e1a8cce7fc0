"""Three tiny apps for the span-count tests: Starlette, FastAPI and a plain ASGI callable.

``GET /`` answers at once; ``POST /echo`` reads the request body first (the one
case where the upstream ASGI middleware makes an ``http receive`` span).
No OpenTelemetry code.
"""

from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def _index(request):
    return JSONResponse({"ok": True})


async def _echo(request):
    return PlainTextResponse(await request.body())


starlette_app = Starlette(routes=[Route("/", _index), Route("/echo", _echo, methods=["POST"])])

fastapi_app = FastAPI()


@fastapi_app.get("/")
async def fastapi_index():
    return {"ok": True}


@fastapi_app.post("/echo")
async def fastapi_echo(request: Request):
    return PlainTextResponse(await request.body())


async def plain_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    if scope["method"] == "POST":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body or b"ok"})
