"""The Flask twin of `relay.py`: the same routes. No OpenTelemetry code."""

import logging
import os

import httpx
from flask import Flask, jsonify, request

log = logging.getLogger("relay")
log.setLevel(logging.INFO)
logging.getLogger("httpx").setLevel(logging.INFO)  # its "HTTP Request: GET <url>" lines, as many apps turn on

app = Flask(__name__)


def target(rest: str) -> str:
    url = f"{os.environ['DOWNSTREAM_URL']}/{rest}?{request.query_string.decode('latin-1')}"
    fragment = request.headers.get("x-fragment")
    return f"{url}#{fragment}" if fragment else url


@app.route("/hello", methods=["GET", "POST"])
def hello() -> str:
    log.info("hello handled")
    return "hello"


@app.route("/relay/<path:rest>")
def relay(rest: str):  # type: ignore[no-untyped-def]
    with httpx.Client() as client:
        statuses = [client.get(target(rest)).status_code for _ in range(int(request.headers.get("x-times", "1")))]
    return jsonify(statuses=statuses)


@app.route("/raise/<path:rest>")
def raise_(rest: str) -> str:
    with httpx.Client() as client:
        client.get(target(rest)).raise_for_status()
    return "fine"
