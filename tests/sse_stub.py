"""A minimal OpenAI-style streaming server for exercising the load generator without vLLM.

Raw asyncio HTTP/1.1 with keep-alive and chunked SSE: each completion streams ``max_tokens`` chunks
``token_interval_s`` apart, then a usage chunk and ``[DONE]``. Not a fake engine for results: it only
lets tests and the load-generator benchmark check parsing, timing and failure handling.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse_chunk(obj: dict) -> bytes:  # type: ignore[type-arg]
    """One SSE data event in its own HTTP chunk, as vLLM streams them."""
    return _http_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")


@functools.lru_cache(maxsize=8192)
def _token_chunk(i: int, last: bool, chat: bool) -> bytes:
    """One token's chunk, encoded once: the benchmark measures the client, so the stub stays cheap."""
    choice = {"delta": {"content": f" w{i}"}} if chat else {"text": f" w{i}"}
    return _sse_chunk({"choices": [{"index": 0, **choice, "finish_reason": "length" if last else None}]})


class SSEStub:
    def __init__(self, token_interval_s: float = 0.0, ttft_s: float = 0.0, fail_status: int | None = None,
                 health: bool = True, hang_after: int | None = None, endless: bool = False,
                 version: bytes | None = None, end_apart: bool = False) -> None:
        """``hang_after``: completion requests after that many are never answered (a hung engine);
        ``endless``: streams ignore ``max_tokens`` and never end (a broken server); ``end_apart``: the chunked
        body's terminator follows ``[DONE]`` in a write of its own, as uvicorn sends it once the stream ends."""
        self.token_interval_s, self.ttft_s, self.fail_status = token_interval_s, ttft_s, fail_status
        self.health, self.hang_after, self.endless = health, hang_after, endless
        self.version = version or b'{"version": "stub"}'
        self.end_apart = end_apart
        self.completions = 0
        self.connections = 0  # TCP connections accepted
        self.port = 0
        self.requests = 0
        self.in_flight = self.max_in_flight = 0  # concurrent completion streams
        self.busy_s = 0.0  # summed duration of the token streams: / a load's duration = its mean in-flight count
        self.last_body: dict = {}  # type: ignore[type-arg]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                self.requests += 1
                if head.startswith(b"GET "):
                    path = head.split(b" ")[1]
                    body_out = {b"/version": self.version,
                                b"/metrics": b'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0\n'
                                             b"vllm:num_preemptions_total 0.0\n"}.get(path, b"")
                    status = b"200 OK" if (path != b"/health" or self.health) else b"503 Unavailable"
                    writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body_out), body_out))
                    await writer.drain()
                    continue
                if self.fail_status:
                    msg = b'{"error": "stub failure"}'
                    writer.write(b"HTTP/1.1 %d Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (self.fail_status, len(msg), msg))
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                self.completions += 1
                if self.hang_after is not None and self.completions > self.hang_after:
                    await asyncio.sleep(3600)
                n = 1 << 40 if self.endless else int(body.get("max_tokens", 16))
                chat = head.split(b" ")[1] == b"/v1/chat/completions"
                self.last_body = body
                await asyncio.sleep(self.ttft_s)
                if chat:  # vLLM opens a chat stream with a role-only delta: not a token
                    writer.write(_sse_chunk({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None}]}))
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                opened = time.perf_counter()
                burst: list[bytes] = []
                for i in range(n):
                    if i and self.token_interval_s:
                        await asyncio.sleep(self.token_interval_s)
                    burst.append(_token_chunk(i, i == n - 1, chat))
                    if self.token_interval_s or len(burst) == 16:  # with no delay, one write per 16 events
                        writer.write(b"".join(burst))
                        burst.clear()
                        await writer.drain()
                writer.write(b"".join(burst))
                writer.write(_sse_chunk({"choices": [], "usage": {"prompt_tokens": len(body.get("prompt", [])),
                                                                   "completion_tokens": n}}))
                writer.write(_http_chunk(b"data: [DONE]\n\n"))
                if self.end_apart:
                    await writer.drain()
                    await asyncio.sleep(0.002)
                writer.write(b"0\r\n\r\n")
                self.in_flight -= 1
                self.busy_s += time.perf_counter() - opened
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve_forever(self, port: int) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    @contextmanager
    def running(self) -> Iterator[SSEStub]:
        ready = threading.Event()
        box: dict[str, object] = {}

        async def main() -> None:
            stop = asyncio.Event()
            box["loop"], box["stop"] = asyncio.get_running_loop(), stop
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await stop.wait()

        thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        thread.start()
        ready.wait(5)
        try:
            yield self
        finally:
            loop, stop = box["loop"], box["stop"]
            loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
            thread.join(5)
