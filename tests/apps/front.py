"""The "dms" front service (FastAPI): calls extract and catalog. No OpenTelemetry code."""

import logging
import os

import httpx
from fastapi import FastAPI

log = logging.getLogger("front")
log.setLevel(logging.INFO)

EXTRACT = os.environ["EXTRACT_URL"]
CATALOG = os.environ["CATALOG_URL"]

app = FastAPI()


@app.get("/process")
async def process() -> dict:
    log.info("processing")
    async with httpx.AsyncClient() as client:
        extracted = (await client.get(EXTRACT + "/extract")).json()
        registered = (await client.get(CATALOG + "/register")).json()
    return {"extract": extracted, "catalog": registered}


@app.get("/fail")
def fail() -> dict:
    with httpx.Client() as client:
        try:
            status = client.get(EXTRACT + "/status/500").status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
    return {"extract": status}


@app.get("/crash")
async def crash() -> dict:
    log.info("about to crash")
    raise RuntimeError("unhandled")
