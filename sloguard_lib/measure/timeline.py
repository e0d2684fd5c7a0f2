"""Every streamed token's arrival of one load, kept beside the server's log, and the engine steps it shows.

Why (issue #16): a load's ITL p99 is set by its slowest ~1 % of engine steps (a 200-request load at 32 concurrent
runs ~920 steps on the H100, so its p99 is about the 9th slowest), and the percentiles a record keeps cannot say
which steps those were. Held out, the sim's ITL p99 is 26 % off with a bias that changes sign with the chunked
budget (real 24 ms at budgets <= 1,300 where the sim says 15; 10-14 ms above 3,000 where it says 16-18), and the
mechanisms that could explain it (the cost of a prefill step, how many gaps fall in one) fit the percentiles
equally well. vLLM's ``/metrics`` keep no per-step times, but the client sees every step: the tokens one step emits
reach all the streams together, within the API server's ~10 us a token, and steps are >= 2.3 ms apart on the
H100. :func:`steps` cuts the merged arrivals into steps; :func:`profile` says what a tail model needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from sloguard_lib.measure.metrics import LoadResult, RequestResult

#: a step's arrivals spread over at most this share of the load's median token gap (a typical step's length):
#: the API server streams a step's tokens back to back (fitted ``stream_token_s`` ~10 us each: 32 streams in
#: ~0.3 ms), the client reads them with its own jitter (up to ~1 ms on a 2-core CI host that also runs the server).
#: On the CPU vLLM (4 streams, one client process) half the median cut 68 steps where the server counted 68; a
#: fixed 0.5 ms cut 85, 2 ms 68 but with two steps as one. Two client processes (``--load-procs 2``) read one step's
#: tokens up to ~1 ms apart, and the cut found 103 of 79: a timeline is for a one-process client
WINDOW = 0.5
US = 1e-6  # times are kept in whole microseconds: perf_counter's resolution is finer, the steps' spread coarser


def token_times(r: RequestResult) -> np.ndarray:
    """When each of the request's streamed tokens arrived, seconds since the load began (none for a failure)."""
    if not r.ok or math.isnan(r.ttft_s) or math.isnan(r.start_s):
        return np.empty(0)
    return np.asarray(r.start_s + r.ttft_s + np.concatenate([[0.0], np.cumsum(r.itl_s)]), dtype=float)


def save(load: LoadResult, path: str | Path) -> None:
    """``load``'s requests as a compressed ``.npz`` (200 requests of 128 tokens: ~50 KB): each request's send time
    and, per token, the microseconds since the one before (the first: since the send). Rounded as arrival times,
    not as gaps, so no error adds up along a stream."""
    reqs = load.requests

    def us(values: Sequence[float] | np.ndarray) -> np.ndarray:
        out: np.ndarray = np.round(np.nan_to_num(np.asarray(values, dtype=float), nan=-1.0) / US).astype(np.int64)
        return out

    start = us([r.start_s for r in reqs])
    deltas = [np.diff(us(token_times(r)), prepend=s0) for r, s0 in zip(reqs, start.tolist(), strict=True)]
    np.savez_compressed(
        path, index=np.array([r.index for r in reqs], dtype=np.int32), ok=np.array([r.ok for r in reqs]),
        prompt_tokens=np.array([r.prompt_tokens for r in reqs], dtype=np.int32),
        output_tokens=np.array([r.output_tokens for r in reqs], dtype=np.int32), start_us=start,
        e2e_us=us([r.e2e_s for r in reqs]), tokens=np.array([len(d) for d in deltas], dtype=np.int32),
        delta_us=np.concatenate([np.empty(0, dtype=np.int64), *deltas]).astype(np.int32),
        duration_us=us([load.duration_s]))


def read(path: str | Path | IO[bytes]) -> LoadResult:
    """What :func:`save` wrote, to the microsecond (errors' texts and HTTP statuses are not kept)."""
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}

    def s(v: int) -> float:
        return math.nan if v < 0 else v * US

    out: list[RequestResult] = []
    ends = np.cumsum(d["tokens"]).tolist()
    for i, ok, p, o, st, e, n, end in zip(d["index"].tolist(), d["ok"].tolist(), d["prompt_tokens"].tolist(),
                                          d["output_tokens"].tolist(), d["start_us"].tolist(), d["e2e_us"].tolist(),
                                          d["tokens"].tolist(), ends, strict=True):
        at = np.cumsum(d["delta_us"][end - n:end].astype(np.int64)) + st
        out.append(RequestResult(i, ok=bool(ok), prompt_tokens=p, output_tokens=o,
                                 ttft_s=(int(at[0]) - st) * US if n else math.nan,
                                 itl_s=(np.diff(at) * US).tolist(), e2e_s=s(e), start_s=s(st)))
    return LoadResult(out, s(int(d["duration_us"][0])))


@dataclass(frozen=True)
class Steps:
    """The engine steps a load's token arrivals show, in order: when each step's first token arrived, how many
    tokens it emitted and how many of those were first tokens (the step finished a prefill). ``seconds[k]`` is the
    time from step ``k - 1``'s tokens to step ``k``'s: its length while the engine had work (nan for the first)."""

    at_s: np.ndarray
    tokens: np.ndarray
    first: np.ndarray

    @property
    def seconds(self) -> np.ndarray:
        return np.concatenate([[math.nan], np.diff(self.at_s)]) if len(self.at_s) else np.empty(0)


def steps(requests: Sequence[RequestResult], window: float = WINDOW) -> Steps:
    """The merged arrivals of ``requests`` cut into steps: an arrival opens a new step when it comes more than
    ``window`` x the median token gap after the open step's first, or when its request already has a token in the
    open step (a step emits at most one token a request)."""
    times = [token_times(r) for r in requests]
    at = np.concatenate([np.empty(0), *times])
    if not len(at):
        return Steps(at, np.empty(0, dtype=int), np.empty(0, dtype=int))
    who = np.concatenate([np.full(len(t), i) for i, t in enumerate(times)])
    first = np.concatenate([np.arange(len(t)) == 0 for t in times])
    order = np.argsort(at, kind="stable")
    at, who, first = at[order], who[order], first[order]
    width = window * float(np.median([g for r in requests if r.ok for g in r.itl_s] or [0.0]))
    starts: list[int] = []
    opened, members = -math.inf, set[int]()
    for k, (t, w) in enumerate(zip(at.tolist(), who.tolist(), strict=True)):
        if t - opened > width or w in members:
            starts.append(k)
            opened, members = t, set()
        members.add(w)
    cut = np.asarray(starts)
    return Steps(at[cut], np.diff(np.append(cut, len(at))), np.add.reduceat(first.astype(int), cut))


def profile(s: Steps) -> dict[str, float]:
    """What sets a load's ITL tail, from its steps: how many there were, the share that finished a prefill, the
    median and p99 length of those that did not (decode steps, and prefill chunks that finished none) and of those
    that did, and the share of all token gaps that ended in a step that finished a prefill."""
    sec, prefill = s.seconds[1:], s.first[1:] > 0
    gaps = s.tokens[1:] - s.first[1:]  # the tokens of a step that end a gap: all but the first tokens

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q)) * 1000 if len(x) else math.nan

    return {"steps": float(len(s.at_s)), "prefill_share": float(prefill.mean()) if len(sec) else math.nan,
            "decode_p50_ms": pct(sec[~prefill], 50), "decode_p99_ms": pct(sec[~prefill], 99),
            "prefill_p50_ms": pct(sec[prefill], 50), "prefill_p99_ms": pct(sec[prefill], 99),
            "gaps_in_prefill_steps": float(gaps[prefill].sum() / gaps.sum()) if gaps.sum() else math.nan}
