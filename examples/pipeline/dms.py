"""dms: document management. Accepts a document, has extract OCR it and extract its
entities, then registers the result in catalog.

Endpoints
- ``POST /documents``  ``{"name": ..., "content": ...}`` -> 201 with the registration;
  503 with a JSON body naming the downstream when extract or catalog is unavailable.

Plain async httpx: the retries, the circuit breaker and the X-Request-ID header come
from the otel-integration distro when the service runs under ``opentelemetry-instrument``.
"""

from __future__ import annotations

import math
import time
import uuid

import httpx
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from common import create_app, log_requests, service_url

app, logger = create_app("dms", "dms")
extract = httpx.AsyncClient(base_url=service_url("extract"), timeout=5.0)
catalog = httpx.AsyncClient(base_url=service_url("catalog"), timeout=5.0)


class NewDocument(BaseModel):
    name: str
    content: str
    doc_id: str | None = None


class DownstreamUnavailable(Exception):
    def __init__(self, downstream: str, error: httpx.HTTPError) -> None:
        super().__init__(downstream)
        self.downstream = downstream
        self.error = error


async def call(downstream: str, client: httpx.AsyncClient, method: str, path: str, **kwargs) -> dict:
    try:
        response = await client.request(method, path, **kwargs)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DownstreamUnavailable(downstream, exc) from exc
    return response.json()


@app.exception_handler(DownstreamUnavailable)
async def downstream_unavailable(request, exc: DownstreamUnavailable) -> JSONResponse:
    error = exc.error
    body: dict = {
        "error": f"{exc.downstream} is unavailable",
        "downstream": exc.downstream,
        "reason": type(error).__name__,
        "detail": str(error).splitlines()[0] if str(error) else type(error).__name__,
    }
    headers = {}
    if isinstance(error, httpx.HTTPStatusError):
        body["status"] = error.response.status_code
    retry_at = getattr(error, "retry_at", None)  # set when a circuit breaker failed the call fast
    if retry_at is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_at - time.time())))
    logger.warning("%s unavailable: %s", exc.downstream, body["reason"])
    return JSONResponse(body, status_code=503, headers=headers)


@app.post("/documents", status_code=201)
async def create_document(new: NewDocument) -> dict:
    doc = {"doc_id": new.doc_id or uuid.uuid4().hex[:12], "name": new.name, "content": new.content}
    # POST is not idempotent; the Idempotency-Key makes these calls safe to retry.
    key = {"Idempotency-Key": doc["doc_id"]}
    ocr = await call("extract", extract, "POST", "/ocr", json=doc, headers=key)
    extracted = await call("extract", extract, "POST", "/extract", json=doc, headers=key)
    registration = await call(
        "catalog",
        catalog,
        "POST",
        "/register",
        json={"doc_id": doc["doc_id"], "name": new.name, "pages": ocr["pages"],
              "entities": extracted["entities"]},
        headers=key,
    )
    return {
        "doc_id": doc["doc_id"],
        "pages": ocr["pages"],
        "entities": extracted["entities"],
        "catalog_id": registration["catalog_id"],
        "quality": registration["quality"],
    }


log_requests(app, logger)
