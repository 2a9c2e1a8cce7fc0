"""The "catalog" service: a plain ASGI callable, no framework, no OpenTelemetry code."""

import json
import logging

log = logging.getLogger("catalog")
log.setLevel(logging.INFO)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    log.info("catalog %s", scope["path"])
    body = json.dumps(
        {"request_id": headers.get("x-request-id"), "authorization": headers.get("authorization")}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
