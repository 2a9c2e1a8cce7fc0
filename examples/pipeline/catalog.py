"""catalog: registration and quality metrics; calls extract for schema analysis.

Endpoints
- ``POST /register``          register one document; asks extract for its schema
                              (``GET {EXTRACT_URL}/schema/{doc_id}``) with a *sync*
                              httpx.Client, from a threadpool endpoint, and checks
                              the answer with ``otel_integration.validate``
- ``POST /register/bulk``     bulk registration of extracted entities (called by extract)
- ``GET  /quality/{doc_id}``  quality metrics of a registered document
"""

from __future__ import annotations

import threading

import httpx
import otel_integration
from fastapi import HTTPException
from pydantic import BaseModel, Field

from common import create_app, log_requests, service_url

app, logger = create_app("catalog", "catalog")
extract = httpx.Client(base_url=service_url("extract"), timeout=5.0)

_lock = threading.Lock()
_documents: dict[str, dict] = {}
_entities: dict[str, set[str]] = {}


class Registration(BaseModel):
    doc_id: str
    name: str
    pages: int
    entities: list[str] = []


class Schema(BaseModel):
    fields: list[str]
    fingerprint: str


class SchemaAnalysis(BaseModel):
    """What catalog expects from extract's ``GET /schema/{doc_id}``."""

    doc_id: str
    analysis: Schema = Field(alias="schema")


class BulkItem(BaseModel):
    doc_id: str
    entity: str


class Bulk(BaseModel):
    items: list[BulkItem]


@app.post("/register")
def register(reg: Registration) -> dict:
    # A plain `def` endpoint: FastAPI runs it in a threadpool, so a sync client is fine.
    schema: dict | None
    try:
        response = extract.get(f"/schema/{reg.doc_id}")
        response.raise_for_status()
        # The one line of this pipeline that knows otel_integration: an opt-in check of the
        # answer's shape, which names each wrong field and counts it per downstream.
        schema = otel_integration.validate(response, SchemaAnalysis).analysis.model_dump()
    except otel_integration.ValidationError as exc:
        logger.warning("schema analysis of %s rejected: %s", reg.doc_id, exc)
        schema = None
    except httpx.HTTPError as exc:
        # Schema analysis is an enrichment: register without it rather than fail.
        logger.warning("schema analysis unavailable for %s: %s", reg.doc_id, type(exc).__name__)
        schema = None
    with _lock:
        _documents[reg.doc_id] = {**reg.model_dump(), "schema": schema}
    return {"catalog_id": f"cat-{reg.doc_id}", "schema": schema, "quality": _quality(reg.doc_id)}


@app.post("/register/bulk")
async def register_bulk(bulk: Bulk) -> dict:
    with _lock:
        for item in bulk.items:
            _entities.setdefault(item.doc_id, set()).add(item.entity)
    return {"registered": len(bulk.items)}


@app.get("/quality/{doc_id}")
async def quality(doc_id: str) -> dict:
    with _lock:
        if doc_id not in _documents:
            raise HTTPException(status_code=404, detail=f"unknown document {doc_id}")
    return _quality(doc_id)


def _quality(doc_id: str) -> dict:
    with _lock:
        doc = _documents.get(doc_id, {})
        entities = len(_entities.get(doc_id, ()))
    has_schema = doc.get("schema") is not None
    score = round(0.5 + 0.3 * has_schema + min(entities, 5) * 0.04, 2)
    return {"doc_id": doc_id, "score": score, "entities": entities, "schema": has_schema}


log_requests(app, logger)
