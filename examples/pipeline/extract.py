"""extract: OCR and text extraction; registers extracted entities in bulk with catalog.

Endpoints
- ``POST /ocr``                 OCR of one document -> pages and text
- ``POST /extract``             entity extraction; registers the entities with catalog
                                (``POST {CATALOG_URL}/register/bulk``, async httpx)
- ``GET  /schema/{doc_id}``     schema analysis, used by catalog
- ``POST /admin/fault``         fault injection, driven by the demo (never faulted itself):
  ``{"mode": "ok"}``, ``{"mode": "slow", "delay": 0.3}``,
  ``{"mode": "flaky", "fail": 2, "ok": 1}`` (bursts of ``fail`` 503s, then ``ok`` successes),
  ``{"mode": "down"}`` (every request 503); ``"schema": "drift"`` with any mode: ``/schema``
  answers in a shape catalog does not expect
"""

from __future__ import annotations

import asyncio
import hashlib
import threading

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from common import create_app, log_requests, service_url

app, logger = create_app("extract", "extract")
catalog = httpx.AsyncClient(base_url=service_url("catalog"), timeout=5.0)


class Fault:
    """The current fault mode, shared by every request of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.set({"mode": "ok"})

    def set(self, spec: dict) -> dict:
        with self.lock:
            self.mode = spec.get("mode", "ok")
            self.delay = float(spec.get("delay", 0.3))
            self.fail = int(spec.get("fail", 2))
            self.ok = int(spec.get("ok", 1))
            self.schema = spec.get("schema", "ok")
            self.seen = 0
            return self.describe()

    def describe(self) -> dict:
        return {"mode": self.mode, "delay": self.delay, "fail": self.fail, "ok": self.ok, "schema": self.schema}

    def should_fail(self) -> bool:
        with self.lock:
            if self.mode == "down":
                return True
            if self.mode == "flaky":
                position = self.seen % (self.fail + self.ok)
                self.seen += 1
                return position < self.fail
            return False


fault = Fault()


@app.middleware("http")
async def inject_faults(request: Request, call_next):
    if request.url.path.startswith("/admin") or request.url.path in ("/livez", "/healthz"):
        return await call_next(request)
    if fault.mode == "slow":
        await asyncio.sleep(fault.delay)
    if fault.should_fail():
        return JSONResponse(
            {"error": "extract is unavailable (injected fault)", "mode": fault.mode},
            status_code=503,
        )
    return await call_next(request)


@app.post("/admin/fault")
async def set_fault(spec: dict) -> dict:
    described = fault.set(spec)
    logger.info("fault mode set to %s", described)
    return described


@app.get("/admin/fault")
async def get_fault() -> dict:
    return fault.describe()


class Document(BaseModel):
    doc_id: str
    name: str
    content: str


@app.post("/ocr")
async def ocr(doc: Document) -> dict:
    pages = max(1, len(doc.content) // 400 + 1)
    await asyncio.sleep(0.005 * pages)  # "OCR"
    return {"doc_id": doc.doc_id, "pages": pages, "text": doc.content}


@app.post("/extract")
async def extract(doc: Document) -> dict:
    words = [w.strip(".,;:").lower() for w in doc.content.split()]
    entities = sorted({w for w in words if len(w) > 6})[:5]
    response = await catalog.post(
        "/register/bulk",
        json={"items": [{"doc_id": doc.doc_id, "entity": e} for e in entities]},
        headers={"Idempotency-Key": f"bulk-{doc.doc_id}"},
    )
    response.raise_for_status()
    return {"doc_id": doc.doc_id, "entities": entities, "registered": response.json()["registered"]}


@app.get("/schema/{doc_id}")
async def schema(doc_id: str) -> dict:
    digest = hashlib.sha256(doc_id.encode()).hexdigest()
    if fault.schema == "drift":  # a new version of the analysis: fields joined, fingerprint a number
        return {"doc_id": doc_id, "schema": {"fields": "title,body,entities", "fingerprint": int(digest[:8], 16)}}
    return {"doc_id": doc_id, "schema": {"fields": ["title", "body", "entities"], "fingerprint": digest[:12]}}


log_requests(app, logger)
