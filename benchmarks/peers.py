"""The benchmark's peers, in one process of their own: a fast HTTP server and an OTLP sink.

Run by `run.py` as ``python peers.py``; prints one JSON line with the ports,
then serves until its stdin closes. No dependency beyond the standard library.

* ``target`` and ``target2``: HTTP/1.1 keep-alive servers on 127.0.0.1 that
  answer ``GET /`` with ``200 ok`` and ``GET /fail`` with ``500`` (used to open
  a circuit breaker), as fast as asyncio allows: no framework, one canned
  response, requests parsed just enough to find their end.
* ``sink``: an OTLP/HTTP receiver that accepts every export and discards it
  (``200`` with an empty protobuf body, what a collector answers).
* ``blackhole``: a listening socket that never accepts: connections complete
  in the kernel backlog and nothing is ever answered.
* ``closed``: a port nothing listens on (connection refused).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nfail"
SINK_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class _HTTP(asyncio.Protocol):
    """Minimal HTTP/1.1 server protocol: Content-Length bodies, keep-alive, pipelining."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                break
            request_line = head.split(b"\r\n", 1)[0]
            self.buffer = self.buffer[total:]
            out.append(self.respond(request_line))
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))


def _target(request_line: bytes) -> bytes:
    parts = request_line.split(b" ")
    return FAIL if len(parts) > 1 and parts[1].startswith(b"/fail") else OK


def _sink(request_line: bytes) -> bytes:
    return SINK_OK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> None:
    loop = asyncio.get_running_loop()
    servers = {}
    for name, respond in (("target", _target), ("target2", _target), ("sink", _sink)):
        server = await loop.create_server(lambda r=respond: _HTTP(r), "127.0.0.1", 0, backlog=1024)
        servers[name] = server.sockets[0].getsockname()[1]
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(4096)  # never accepted, never read
    ports = {**servers, "blackhole": blackhole.getsockname()[1], "closed": _free_port()}
    print(json.dumps(ports), flush=True)
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
