"""Concurrent streaming load generator for an OpenAI-compatible server (vLLM's ``/v1/completions``).

asyncio + one keep-alive aiohttp pool (``vllm bench serve``'s library; ``LoadTarget.http``). Prompts go out
as exact token-id lists with ``ignore_eos`` and a fixed ``max_tokens``, so the server does exactly the work the
:class:`~sloguard_lib.measure.workload.Workload` describes. SSE is parsed incrementally from the raw bytes as they
arrive; each data event that carries text is one streamed event, timed on arrival: TTFT = first event - send,
ITL = gaps between events (what ``vllm bench serve`` records). The token count comes from the final ``usage``
chunk. Only that chunk is JSON-decoded: token events are recognised by byte patterns, because a client that
spends ~30 us per event saturates one core near 30k tokens/s, and from then on reads events in bursts and
reports near-zero gaps (real H100 runs at 17k tok/s showed ITL p50 of 0.04 ms from exactly that).

``api=chat`` sends the prompt to ``/v1/chat/completions`` as the words of the synthetic tokenizer
(``w17 w3 ...``, one token each) inside a template that adds nothing, so token counts stay exact.

Closed loop: ``concurrency`` requests in flight. Open loop: Poisson send times, still capped by
``concurrency``. Warm-up requests run first and are discarded. A request that gets no byte for
``stall_timeout_s`` fails as a stall, and the first stall ends the whole load (a hung server stalls every
stream: waiting out each warm-up and round cost ~540 s per hung trial), which is cut at ``load_timeout_s`` in any
case, so a dead or hung server ends the trial instead of hanging it. A stream that sends more token events than
``max_tokens`` allows is cut (``OVERRUN``), so a broken server cannot grow the client's memory without bound.

One process parses ~375k streamed tokens/s with aiohttp (2.8 us per token; httpx, whose h11 handles every HTTP
chunk in Python, 77k at 13 us; ``benchmarks/loadgen_overhead.py`` on 2 cores). A server that streams more
needs ``LoadTarget.processes`` > 1: the requests are dealt round-robin to that many spawned client processes,
each with its share of the concurrency, which all start at one barrier after a single warm-up
(sent by the parent, before ``run_load``'s ``after_warmup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import multiprocessing.queues
import queue
import re
import time
from asyncio import Runner
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sloguard_lib import __version__
from sloguard_lib.measure.metrics import LoadResult, RequestResult, truncate
from sloguard_lib.measure.workload import Request, Workload
from sloguard_lib.model_folder import word

STALL = "stall"  # error prefix for requests that stopped receiving tokens
OVERRUN = "overrun"  # error prefix for a stream with more token events than max_tokens
WARMUP_TOKENS = 16  # output tokens of a warm-up request at most: it warms the path, not the KV cache
CLIENT = f"sloguard-loadgen/{__version__}"
T = TypeVar("T")


def client_name(target: LoadTarget) -> str:
    """What measured a load, in every record it produced: figures of different clients are not compared silently."""
    from importlib.metadata import version

    return f"{CLIENT} {target.http}/{version(target.http)} x{target.processes}"


@dataclass(frozen=True)
class LoadTarget:
    base_url: str  # e.g. http://127.0.0.1:8000
    model: str  # the served model name
    vocab_size: int
    stall_timeout_s: float = 60.0
    load_timeout_s: float = 1800.0
    processes: int = 1  # client processes: one parses ~375k tokens/s (aiohttp); more for a server that streams more
    #: merged into every request body (a benchmark's A/B of request fields; sampling options a user needs); a
    #: None value removes that field, so the server's default applies
    body_extra: tuple[tuple[str, Any], ...] = ()
    #: send the prompt as the synthetic tokenizer's words (text the server tokenizes, as ``vllm bench serve`` does)
    #: instead of token ids; the token count is the same (model_folder.py)
    prompt_text: bool = False
    #: the HTTP library: aiohttp, as ``vllm bench serve`` uses. "httpx" is kept for A/B runs only: with keep-alive
    #: connections its pool costs O(connections) of Python per queued request, and at 128 concurrent on the H200
    #: the client became the bottleneck (2.5x the client CPU, 3.7x the engine steps, -54 % throughput against
    #: ``vllm bench serve``; results/h200/client_agreement/README.md)
    http: str = "aiohttp"


_TOKEN = {"completions": re.compile(rb'"text":\s*"[^"]'), "chat": re.compile(rb'"content":\s*"[^"]')}
_OPEN_CHOICE = re.compile(rb'"finish_reason":\s*null')
_NO_CHOICES = re.compile(rb'"choices":\s*\[\]')
_USAGE = re.compile(rb'"usage":\s*\{')
_EVENT_END = re.compile(rb"\r?\n\r?\n")
MAX_EVENT_BYTES = 1 << 20  # one SSE event of a token is ~300 bytes
DRAIN_BYTES = 4096  # what may follow [DONE] before the body ends (vLLM: nothing but the chunked terminator)


def request_body(target: LoadTarget, req: Request, seed: int, api: str) -> tuple[str, dict[str, Any]]:
    ids = req.prompt_token_ids(target.vocab_size, seed)
    # ``ignore_eos`` + ``max_tokens`` make every request exactly ``output_len`` tokens long; no ``min_tokens``, so
    # the body has the fields ``vllm bench serve`` sends (its cost, if any, is not measured: results/h100/
    # client_agreement/README.md)
    body: dict[str, Any] = {
        "model": target.model, "max_tokens": req.output_len, "ignore_eos": True,
        "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}, **dict(target.body_extra),
    }
    body = {k: v for k, v in body.items() if v is not None}
    if api == "chat":
        return "/v1/chat/completions", body | {"messages": [{"role": "user", "content": _words(ids)}]}
    return "/v1/completions", body | {"prompt": _words(ids) if target.prompt_text else ids}


def _words(ids: list[int]) -> str:
    """The synthetic tokenizer's text of ``ids``: one whitespace-separated word per token (model_folder.py)."""
    return " ".join(map(word, ids))


def is_token_event(payload: bytes, api: str) -> bool:
    """A streamed chunk that carries output: non-empty text, or (completions) an open choice with empty text
    (vLLM holds back partial UTF-8 but still streams the step). Role-only and usage chunks are not tokens."""
    if _TOKEN[api].search(payload):
        return True
    return api == "completions" and not _NO_CHOICES.search(payload) and bool(_OPEN_CHOICE.search(payload))


class _Events:
    """Incremental SSE parsing of one response: token events timed on arrival, the usage chunk decoded."""

    def __init__(self, res: RequestResult, t0: float, api: str, max_events: int = 1 << 30) -> None:
        self.res, self.last, self.api, self.max_events = res, t0, api, max_events
        self.t0, self.count, self.buf = t0, 0, b""
        self.done = False  # [DONE] arrived
        self.after_done = 0  # bytes received since

    def draining(self) -> bool:
        """After ``[DONE]``, go on reading to the end of the body (a few bytes), so the keep-alive connection goes
        back to the pool. A client that stops at ``[DONE]`` leaves the chunked body's terminator unread, and httpx
        then closes the connection: every request of a load opened a new one (20 TIME-WAIT sockets for 20
        sequential requests on the CPU vLLM; none with this). An overrun, or more than ``DRAIN_BYTES`` after
        ``[DONE]``, ends the reading at once."""
        return self.done and self.after_done <= DRAIN_BYTES

    def feed(self, chunk: bytes) -> bool:
        """Take one received chunk; True once ``[DONE]`` arrived (or the stream overran ``max_events``, or an
        event grew past ``MAX_EVENT_BYTES``). SSE events end with a blank line, ``\\n\\n`` or ``\\r\\n\\r\\n``."""
        if self.done:
            self.after_done += len(chunk)
            return True
        *complete, self.buf = _EVENT_END.split(self.buf + chunk)
        if len(self.buf) > MAX_EVENT_BYTES:
            self.res.error = f"{OVERRUN}: an SSE event longer than {MAX_EVENT_BYTES} bytes"
            return True
        for event in complete:
            if not event.startswith(b"data:"):
                continue
            payload = event[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                return True
            if _USAGE.search(payload):
                self.res.output_tokens = int(json.loads(payload)["usage"].get("completion_tokens", 0))
            if is_token_event(payload, self.api):
                now = time.perf_counter()  # per event, as ``vllm bench serve`` stamps each message of a chunk
                if self.count == 0:
                    self.res.ttft_s = now - self.t0
                else:
                    self.res.itl_s.append(now - self.last)
                self.last = now
                self.count += 1
                if self.count > self.max_events:
                    self.res.error = f"{OVERRUN}: more than {self.max_events} token events"
                    return True
        return False

    def finish(self) -> RequestResult:
        self.res.e2e_s = self.last - self.t0
        self.res.ok = self.count > 0 and self.res.error is None
        if self.count == 0:
            self.res.error = "stream ended without tokens"
        return self.res


async def _one(client: Any, target: LoadTarget, req: Request, seed: int, api: str = "completions") -> RequestResult:
    path, body = request_body(target, req, seed, api)
    res = RequestResult(req.index, ok=False, prompt_tokens=req.prompt_len)
    # vLLM streams one event per token; a margin for servers that send empty or split ones
    events = _Events(res, time.perf_counter(), api, max_events=2 * req.output_len + 16)
    try:
        if target.http == "aiohttp":
            async with client.post(path, json=body) as resp:
                res.http_status = resp.status
                if resp.status != 200:
                    res.error = (await resp.read()).decode(errors="replace")[:500]
                    return res
                async for chunk in resp.content.iter_any():
                    if events.feed(chunk) and not events.draining():
                        break
        else:
            async with client.stream("POST", path, json=body) as resp:
                res.http_status = resp.status_code
                if resp.status_code != 200:
                    res.error = (await resp.aread()).decode(errors="replace")[:500]
                    return res
                async for chunk in resp.aiter_raw():
                    if events.feed(chunk) and not events.draining():
                        break
        return events.finish()
    except (httpx.ReadTimeout, TimeoutError):  # aiohttp's read timeout is an asyncio.TimeoutError
        res.error = f"{STALL}: no byte for {target.stall_timeout_s:.0f} s after {events.count} events"
    except _transport_errors(target.http) as e:  # evaluated only when something was raised
        res.error = f"{type(e).__name__}: {e}"
    return res


def _transport_errors(http: str) -> tuple[type[Exception], ...]:
    """What a failed request raises in this HTTP library (a record's error, never the load's end)."""
    if http == "aiohttp":
        import aiohttp

        return aiohttp.ClientError, json.JSONDecodeError
    return httpx.HTTPError, json.JSONDecodeError


@contextlib.asynccontextmanager
async def _client(target: LoadTarget, concurrency: int) -> AsyncIterator[Any]:
    """One keep-alive pool of ``concurrency`` connections, of the target's HTTP library."""
    if target.http == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        stall = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=target.stall_timeout_s)
        async with aiohttp.ClientSession(base_url=target.base_url, timeout=stall, connector=connector,
                                         trust_env=False) as session:
            yield session
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        timeout = httpx.Timeout(connect=10.0, read=target.stall_timeout_s, write=30.0, pool=None)
        async with httpx.AsyncClient(base_url=target.base_url, limits=limits, timeout=timeout) as client:
            yield client


async def _warm_up(target: LoadTarget, workload: Workload, like: Request) -> str | None:
    """The workload's warm-up requests, one after another, each like its first request ``like`` with WARMUP_TOKENS
    output tokens at most; the error of one that stalled (the load would stall too), else None."""
    async with _client(target, 1) as client:
        for i in range(workload.warmup):
            warm = Request(workload.num_requests + i, like.prompt_len, min(like.output_len, WARMUP_TOKENS), 0, 0.0)
            got = await _one(client, target, warm, workload.seed + 1, workload.api)
            if (got.error or "").startswith(STALL):
                return got.error
    return None


async def _drive_async(target: LoadTarget, workload: Workload, reqs: list[Request], concurrency: int,
                       gate: Callable[[], None] | None = None, until: Callable[[RequestResult], bool] | None = None,
                       ) -> tuple[list[RequestResult], float, float]:
    """Drive ``reqs`` (the workload's, or one shard's) with ``concurrency`` in flight; returns the results and
    the perf_counter of the first send and the last byte. ``gate`` blocks until every client process is ready, so
    shards start together. ``until`` ends the load at the first finished request it returns True for: the streams
    in flight are cancelled (vLLM aborts a request whose connection closes) and only requests finished by then
    count."""
    async with _client(target, concurrency) as client:
        if gate is not None:
            gate()
        sem = asyncio.Semaphore(concurrency)
        start = time.perf_counter()

        async def send(req: Request) -> RequestResult:
            if not workload.closed_loop:
                await asyncio.sleep(max(0.0, start + req.arrival_s - time.perf_counter()))
            async with sem:
                sent = time.perf_counter()
                res = await _one(client, target, req, workload.seed, workload.api)
            res.start_s = sent - start
            if (res.error or "").startswith(STALL):
                raise _Stalled(res)  # ends the wait below at once
            if until is not None and until(res):
                raise _Enough(res)  # so does a decided verdict
            return res

        tasks = [asyncio.create_task(send(r)) for r in reqs]
        done, pending = (await asyncio.wait(tasks, timeout=target.load_timeout_s, return_when=asyncio.FIRST_EXCEPTION)
                         if tasks else (set(), set()))
        for task in pending:
            task.cancel()
        stalled = [t.exception() for t in done if isinstance(t.exception(), _Stalled)]
        stops = [e.result for t in done if isinstance(e := t.exception(), _Enough)]
        if stops and not stalled:
            end = min(r.end_s for r in stops)
            finished = [t.result() for t in done if t.exception() is None] + stops
            return sorted((r for r in finished if r.end_s <= end), key=lambda r: r.index), start, start + end
        why = (f"{STALL}: load ended by a stalled stream" if stalled
               else f"{STALL}: load cut at {target.load_timeout_s:.0f} s")
        results = []
        for req, task in zip(reqs, tasks, strict=True):
            exc = task.exception() if task in done else None
            if task in done and exc is None:
                results.append(task.result())
            else:
                results.append(exc.result if isinstance(exc, _Stalled) else _failed(req, why))
    return results, start, time.perf_counter()


class _Stalled(Exception):
    def __init__(self, result: RequestResult) -> None:
        super().__init__(result.error)
        self.result = result


class _Enough(Exception):
    """The load's verdict is decided (``until``): not a failure, the end of the load."""

    def __init__(self, result: RequestResult) -> None:
        super().__init__("enough")
        self.result = result


def _failed(req: Request, error: str) -> RequestResult:
    return RequestResult(req.index, ok=False, prompt_tokens=req.prompt_len, http_status=None, error=error)


def _event_loop() -> Runner:
    """uvloop where installed (as vLLM's own server uses): ~5 % less client CPU per token."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with _event_loop() as runner:
        runner.get_loop().set_exception_handler(_quiet_on_interrupt)
        return runner.run(coro)


def _quiet_on_interrupt(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A stop signal can land inside a transport callback (aiohttp's ``data_received`` under uvloop): uvloop then
    logs "Fatal error on transport" with a traceback, while the interrupt itself reaches the study through the
    closed stream and unwinds it as it should (seen once in ``tests/test_interrupts.py`` on 2 cores). A stop
    request is not an error of the load: say nothing of it; anything else goes to the default handler."""
    if isinstance(context.get("exception"), KeyboardInterrupt):
        return
    loop.default_exception_handler(context)


def run_load(target: LoadTarget, workload: Workload, until: Callable[[RequestResult], bool] | None = None,
             after_warmup: Callable[[], None] | None = None) -> LoadResult:
    """The warm-up, then ``after_warmup`` (where the server's counters are read: the warm-ups were 34 solo engine
    steps of each load inside the window on the H100, results/h100/client_agreement/), then the load from one
    client process, or ``target.processes`` of them: the requests dealt round-robin, the concurrency split
    between them (the sum is the workload's) and a common start. perf_counter is the system-wide monotonic clock,
    so the shards' timestamps compare directly. ``until`` (``Server.run_load``) stops one process live; several
    run to the end and are cut where it would have stopped them (the same record, without the GPU time saved:
    the shards would need the decision between processes)."""
    n = max(1, min(target.processes, workload.concurrency, workload.num_requests))
    reqs = workload.requests()
    stalled = _run(_warm_up(target, workload, reqs[0])) if workload.warmup else None
    if stalled:  # a hung server: every request would meet the same stall
        return LoadResult([_failed(r, f"{stalled} (warm-up)") for r in reqs], duration_s=0.0)
    if after_warmup is not None:
        after_warmup()
    if n == 1:
        results, start, end = _run(_drive_async(target, workload, reqs, workload.concurrency, until=until))
        return LoadResult(results, duration_s=end - start)
    ctx = mp.get_context("spawn")  # fork is unsafe once threads exist (notebooks, torch)
    barrier = ctx.Barrier(n)
    out: mp.queues.Queue[Any] = ctx.Queue()
    procs = [ctx.Process(target=_shard, daemon=True, args=(
        target, workload, reqs[i::n], workload.concurrency // n + (i < workload.concurrency % n), barrier, out))
        for i in range(n)]
    for proc in procs:
        proc.start()
    finished = False
    try:
        shards = [_collect(out, procs, target.load_timeout_s + 120) for _ in procs]
        finished = True
    finally:
        for proc in procs:
            proc.join(5 if finished else 0)  # interrupted or failed: no shard's remaining requests matter
            if proc.is_alive():
                proc.kill()
                proc.join()
    start = min(s for _, s, _ in shards)
    results = sorted((r for res, s, _ in shards for r in res), key=lambda r: r.index)
    for res, s, _ in shards:  # on the common clock
        for r in res:
            r.start_s += s - start
    load = LoadResult(results, duration_s=max(e for *_, e in shards) - start)
    return truncate(load, until) if until else load


def _shard(target: LoadTarget, workload: Workload, requests: list[Request], concurrency: int, barrier: Any,
           out: mp.queues.Queue[Any]) -> None:
    try:
        out.put(_run(_drive_async(target, workload, requests, concurrency,
                                  gate=lambda: barrier.wait(target.load_timeout_s))))
    except BaseException as e:  # the parent must hear of it, or it would wait for this shard forever
        barrier.abort()
        out.put(e if isinstance(e, Exception) else RuntimeError(repr(e)))


def _collect(out: mp.queues.Queue[Any], procs: list[Any], timeout_s: float) -> tuple[list[RequestResult], float, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = out.get(timeout=1.0)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                codes = [p.exitcode for p in procs]
                raise RuntimeError(f"load generator process failed (exit codes {codes})") from None
            continue
        if isinstance(got, Exception):
            raise RuntimeError(f"load generator process failed: {got!r}") from got
        return got  # type: ignore[no-any-return]
