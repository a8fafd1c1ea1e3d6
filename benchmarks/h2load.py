"""A closed-loop gRPC load generator over raw HTTP/2 (cleartext), for the serving benchmark.

A Python gRPC client spends about as much CPU on a call as the server spends answering it, and on
a 2-core machine the two share the cores, so it would measure the client. This one encodes a
request's frames once (HPACK literals, no Huffman, no dynamic table) and patches only the stream
id, so a call costs tens of microseconds, like the raw HTTP/1.1 client that drives mlflow.

It speaks just enough HTTP/2 to measure: SETTINGS and PING acknowledgements, the connection's
send window, and a stream's end. gRPC answers a failed call trailers-only (no DATA frame), so a
call succeeded when its stream carried a message; `call` returns that message.
"""

from __future__ import annotations

import asyncio
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
MAX_WINDOW = 2**31 - 1
MODEL_INFER = b"/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _hpack_length(value: bytes) -> bytes:
    # RFC 7541 5.1: an integer with a 7-bit prefix (the H bit is 0: no Huffman).
    n = len(value)
    if n < 127:
        return bytes((n,))
    out, n = [127], n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes([*out, n])


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Literal header fields without indexing, new name (RFC 7541 6.2.2)."""
    return b"".join(b"\x00" + _hpack_length(k) + k + _hpack_length(v) + v for k, v in headers)


class Connection(asyncio.Protocol):
    def __init__(self, authority: str, message: bytes, token: str | None):
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", MODEL_INFER),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        block = header_block(headers)
        body = b"\x00" + struct.pack(">I", len(message)) + message  # gRPC length-prefixed message
        # Each request: HEADERS then DATA(END_STREAM); only the two stream ids change.
        self._parts = (
            len(block).to_bytes(3, "big") + bytes((HEADERS, END_HEADERS)),
            block + len(body).to_bytes(3, "big") + bytes((DATA, END_STREAM)),
            body,
        )
        self._body_length = len(body)
        self._next_stream = 1
        self._streams: dict[int, list] = {}  # stream -> [future, message or None]
        self._buffer = bytearray()
        self._send_window = 65535  # the connection's, grown by the server's WINDOW_UPDATEs
        self._window_open: asyncio.Event | None = None
        self._received = 0
        self.transport: asyncio.Transport | None = None
        self.closed: str | None = None

    def connection_made(self, transport):
        self.transport = transport
        settings = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
        transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
        )

    def connection_lost(self, exc):
        self._close(f"connection lost: {exc!r}")

    async def call(self) -> bytes | None:
        """One ModelInfer; its reply message, or None when the call failed."""
        if self.closed:
            raise ConnectionError(self.closed)
        while self._send_window < self._body_length:
            self._window_open = self._window_open or asyncio.Event()
            self._window_open.clear()
            await self._window_open.wait()
        self._send_window -= self._body_length
        stream = self._next_stream
        self._next_stream += 2
        future = asyncio.get_running_loop().create_future()
        self._streams[stream] = [future, None]
        sid = stream.to_bytes(4, "big")
        head, middle, body = self._parts
        self.transport.write(head + sid + middle + sid + body)
        return await future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, end = 0, len(buffer)
        while end - pos >= 9:
            length = int.from_bytes(buffer[pos : pos + 3], "big")
            if end - pos - 9 < length:
                break
            kind, flags = buffer[pos + 3], buffer[pos + 4]
            stream = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            self._frame(kind, flags, stream, bytes(buffer[pos + 9 : pos + 9 + length]))
            pos += 9 + length
        del buffer[:pos]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            entry = self._streams.get(stream)
            if entry is not None:
                entry[1] = payload[5:]
            self._received += len(payload)
            if self._received > MAX_WINDOW // 2:  # give the server its window back
                self.transport.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
                self._received = 0
        elif kind == SETTINGS and not flags & ACK:
            self.transport.write(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE and stream == 0:
            self._send_window += struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if self._window_open is not None:
                self._window_open.set()
        elif kind == GOAWAY:
            self._close("the server sent GOAWAY")
            return
        if (kind in (DATA, HEADERS) and flags & END_STREAM) or kind == RST_STREAM:
            entry = self._streams.pop(stream, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(entry[1] if kind != RST_STREAM else None)

    def _close(self, reason: str) -> None:
        self.closed = reason
        for future, _ in self._streams.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        self._streams.clear()


async def connect(host: str, port: int, message: bytes, token: str | None = None) -> Connection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(lambda: Connection(f"{host}:{port}", message, token), host, port)
    return connection


async def load(
    target: str, message: bytes, concurrency: int, seconds: float, token: str | None = None
) -> tuple[list[float], int]:
    """`concurrency` callers in a closed loop for `seconds`: (latencies of successes, failures)."""
    host, port = target.rsplit(":", 1)
    connections = [await connect(host, int(port), message, token) for _ in range(min(concurrency, 4))]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal errors
        connection = connections[i % len(connections)]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if await connection.call() is None:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*[caller(i) for i in range(concurrency)])
    finally:
        for connection in connections:
            connection.transport.close()
    return latencies, errors
