"""Ordinary httpx code: no import of otel_integration.

Run it instrumented, with the embedded receiver printing what was sent:

    otel-integration receive --duration 10 &
    OTEL_SERVICE_NAME=quickstart opentelemetry-instrument python examples/quickstart/app.py https://example.org
"""

import asyncio
import sys

import httpx


def main(url: str) -> None:
    with httpx.Client(timeout=5) as client:
        response = client.get(url)
        print("sync ", response.status_code, response.request.headers.get("x-request-id"))

    async def fetch() -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(url)

    response = asyncio.run(fetch())
    print("async", response.status_code, response.request.headers.get("x-request-id"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/")
