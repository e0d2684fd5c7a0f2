"""Stand-in for the ``vllm serve`` *process* in launcher tests: parses the same CLI shape, serves
``/health``, ``/version``, ``/metrics`` and streaming completions on the given port. It exercises the
launcher's process management (start, readiness, teardown, port release), not vLLM's behaviour.

    python tests/openai_stub_server.py serve MODEL --port P [--fail-with TEXT] [--fail-when-forked] [--never-ready]
        [--version-json TEXT]
        [--token-interval-s S] ...
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0])

from tests.sse_stub import SSEStub


def main() -> None:
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    if "--fail-when-forked" in args and os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") == "fork":
        print("RuntimeError: Engine core initialization failed (stand-in for a broken fork)", flush=True)
        sys.exit(1)
    if "--fail-with" in args:
        print("INFO starting engine", flush=True)
        print(args[args.index("--fail-with") + 1], flush=True)
        sys.exit(1)
    interval = float(args[args.index("--token-interval-s") + 1]) if "--token-interval-s" in args else 0.001
    stub = SSEStub(token_interval_s=interval, health="--never-ready" not in args,
                   version=args[args.index("--version-json") + 1].encode() if "--version-json" in args else None)
    asyncio.run(stub.serve_forever(port))


if __name__ == "__main__":
    main()
