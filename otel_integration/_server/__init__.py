"""The server side: request IDs through Starlette, FastAPI, plain ASGI and Flask apps; log correlation; the health endpoint."""
