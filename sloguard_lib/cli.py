"""``sloguard`` command line: ``tune`` a study, ``bench`` one config, show the ``space``.

Every user mistake surfaces as ``error: <what> ...`` on stderr with exit code 2 (argparse's own
convention), never as a traceback; a config that crashes the engine under ``bench`` exits 1. A stop request
(Ctrl-C, SIGTERM, SIGHUP) ends the running server's whole process tree, says where the log is and how to
continue, and exits 128 + the signal's number (130, 143, 129).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sloguard_lib.engine import BACKENDS, default_backend, make_engine, placement
from sloguard_lib.engine.vllm import LAUNCHERS
from sloguard_lib.errors import InputError, yaml_problem
from sloguard_lib.hardware import GPUS, detect_gpu_profile, get_gpu, resolve_model
from sloguard_lib.measure.capacity import capacity_map
from sloguard_lib.measure.slo import GOODPUT_DEFS, SLO
from sloguard_lib.measure.workload import Workload, parse_workload
from sloguard_lib.optimizers import OPTIMIZERS
from sloguard_lib.study.interrupts import Interrupted, interrupts_raise
from sloguard_lib.study.runner import (
    FINALISTS,
    OBJECTIVES,
    Parallel,
    StudyResult,
    StudySpec,
    check_seed,
    default_space,
    log_path_for,
    run_study,
    server_log_dir,
)
from sloguard_lib.study.space import (
    BOOL_KNOBS,
    NUMERIC_KNOBS,
    SearchSpace,
    build_serving_space,
    load_space_file,
    parse_range_override,
)
from sloguard_lib.study.trial import evaluate, trial_seed
from sloguard_lib.study.trial_log import read_log

EXIT_INPUT = 2
EXIT_CRASH = 1


def _default_gpu() -> str:
    profile = detect_gpu_profile()
    return profile.name if profile else "a100-40gb"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="qwen2-1.5b",
                   help="registry name (qwen2-1.5b, ...), hub-style id (Qwen/Qwen2-1.5B) or a config-only folder")
    p.add_argument("--gpu", default=None, choices=sorted(GPUS), help="GPU profile (default: detected, else a100-40gb)")
    p.add_argument("--backend", default=None, choices=sorted(BACKENDS),
                   help="engine backend (default: vllm on a GPU machine, else sim)")
    p.add_argument("--data", action="append", default=None, metavar="JSONL",
                   help="replay backend: recorded calibration grids / study logs (repeatable; default: the packaged "
                        "real H100 data)")
    p.add_argument("--load-procs", type=int, default=1, metavar="N",
                   help="vllm backend: load-generator processes (one parses ~375k streamed tokens/s on the stub)")
    p.add_argument("--startup-timeout-s", type=float, default=900.0, metavar="S",
                   help="vllm backend: a server not ready after this long is a startup_timeout crash")
    p.add_argument("--stall-timeout-s", type=float, default=60.0, metavar="S",
                   help="vllm backend: a stream with no byte for this long is a hang (runtime_hang); it ends the load")
    p.add_argument("--load-timeout-s", type=float, default=1800.0, metavar="S",
                   help="vllm backend: a load still running after this long is cut (its open requests fail)")
    p.add_argument("--launcher", default="warm", choices=LAUNCHERS,
                   help="vllm backend: warm = each trial's server starts in a spare interpreter that imported vLLM "
                        "during the previous trial; plain = a cold `vllm serve` per trial")
    p.add_argument("--workload", default="", help="e.g. concurrency=16,input_len=512,output_len=128,num_requests=64")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--slo-ttft-p99", type=float, default=500.0, help="TTFT p99 SLO in ms")
    p.add_argument("--slo-itl-p99", type=float, default=100.0, help="ITL p99 SLO in ms")
    p.add_argument("--slo-e2e-p99", type=float, default=None, help="optional E2E p99 SLO in ms")
    p.add_argument("--slo-tpot-p99", type=float, default=None, help="optional TPOT p99 SLO in ms")
    p.add_argument("--goodput-def", default="sloguard", choices=GOODPUT_DEFS,
                   help="which goodput the optimizer maximises: sloguard (per-request TTFT and ITL p99) or vllm "
                        "(`vllm bench serve --goodput ttft:TTFT tpot:TPOT-or-ITL [e2el:E2E]`); both are recorded")


def _parallel(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workers", type=int, default=1, metavar="N", help=f"{what} (one GPU each on vllm)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run the workers on this Ray cluster (e.g. auto, ray://head:10001) instead of a local one")
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs each worker reserves (default: 1 on vllm, 0 on sim; 0.5 puts two on one GPU)")


def _command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every option's default."""
    return sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)  # type: ignore[no-any-return]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sloguard", description="Crash-aware autotuning of vLLM serving knobs.")
    sub = parser.add_subparsers(dest="command", required=True)

    tune = _command(sub, "tune", help="run (or --resume) a tuning study")
    _common(tune)
    tune.add_argument("--optimizer", default="tpe", choices=sorted(OPTIMIZERS))
    tune.add_argument("--budget", type=int, default=15, help="number of trials")
    tune.add_argument("--out", default="results/runs", help="directory for the trial log")
    tune.add_argument("--resume", action="store_true", help="continue the study's existing log")
    tune.add_argument("--space", default=None, help="YAML file of knob overrides ({knob: {low:, high:}})")
    tune.add_argument("--range", action="append", default=[], metavar="KNOB=LO:HI|KNOB=A,B",
                      help="override one knob's range or choices (repeatable)")
    tune.add_argument("--quantization-choices", default=None, help="comma list, e.g. fp16,fp8")
    tune.add_argument("--enqueue", action="append", default=[], metavar="JSON|FILE",
                      help="evaluate this config first (a JSON object, or a YAML/JSON file of one or a list); "
                           "repeatable, in order")
    tune.add_argument("--early-stop", action="store_true",
                      help="end a trial's load once its SLO verdict is decided or it cannot beat the incumbent "
                           "(the record says why and when)")
    tune.add_argument("--validate", type=int, default=0, metavar="K",
                      help="after the budget, re-measure the 3 best configs K times each on fresh servers and "
                           "recommend the best lower bound of those")
    tune.add_argument("--objective", default="goodput", choices=OBJECTIVES,
                      help="goodput at the workload's load, or capacity: the highest concurrency (closed loop) or "
                           "rate (open loop) each config sustains under the SLO, by bisection on one server")
    tune.add_argument("--capacity-target", type=float, default=0.99, metavar="SHARE",
                      help="capacity: the share of requests that must meet the SLO")
    tune.add_argument("--capacity-max", type=float, default=None, metavar="LEVEL",
                      help="capacity: the highest concurrency or rate searched (default 512 concurrent, 1000/s)")
    tune.add_argument("--screen", default=None, choices=["sim"],
                      help="before each real trial, screen --screen-trials configs on a simulator re-fitted to this "
                           "study's real trials, and spend the real trial on the one it predicts best (or knows least)")
    tune.add_argument("--screen-trials", type=int, default=60, metavar="N", help="sim trials per real one")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.add_argument("--stop-after-s", type=float, default=None,
                      help="start no new trial after this many seconds (continue later with --resume)")
    _parallel(tune, "trials at once, each in a Ray actor with its own engine")

    bench = _command(sub, "bench", help="evaluate ONE config with a workload and print its metrics")
    _common(bench)
    for knob in NUMERIC_KNOBS:
        bench.add_argument("--" + knob.replace("_", "-"), type=float if "utilization" in knob else int, default=None)
    for knob in BOOL_KNOBS:
        bench.add_argument("--" + knob.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None)
    bench.add_argument("--quantization", default=None)
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    batch = _command(sub, "batch", help="plan or run a seeds x optimizers batch of notebook studies")
    bsub = batch.add_subparsers(dest="batch_command", required=True)
    bplan = _command(bsub, "plan", help="write one papermill parameter file per (seed, optimizer) pair")
    _common(bplan)
    bplan.add_argument("--name", required=True, help="batch name: its plan goes to papermill_params/NAME/, its "
                       "logs and executed notebooks to results/NAME/")
    bplan.add_argument("--seeds", type=int, nargs="+", default=[42, 142, 242, 342, 442])
    bplan.add_argument("--optimizers", nargs="+", default=["random", "tba-tpe"])
    bplan.add_argument("--budget", type=int, default=15)
    bplan.add_argument("--replace", action="store_true", help="replace an existing, different plan of this name")
    brun = _command(bsub, "run", help="execute the tune notebook for every pending pair (resumable)")
    brun.add_argument("--name", required=True, help="the batch planned with `batch plan --name`")
    brun.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    _parallel(brun, "pairs at once, each a Ray task running its notebook")

    rep = _command(sub, "report", help="multi-seed statistics, summary.json and figures of a results dir")
    rep.add_argument("--results-dir", default="results/multiseed")
    rep.add_argument("--output", default=None, help="figures folder (default: RESULTS_DIR/figures)")
    rep.add_argument("--baseline", default=None,
                     help="optimizer the p-values compare against (default: random if present)")
    rep.add_argument("--definitions", default="sloguard", choices=["sloguard", "seed"],
                     help="statistics: ours (E2E p50, natural-break fast cluster, two-sided tests) or the original "
                          "SLO-Guard's (mean latency, < 1000 ms, one-sided tests)")
    rep.add_argument("--format", dest="fmt", default="auto", choices=["auto", "sloguard", "original"],
                     help="results layout: our study logs, or the original SLO-Guard's "
                          "<optimizer>_seed<N>/results.jsonl")
    rep.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                     help="keep only studies whose identity FIELD (model, gpu, backend, slo, workload, space, "
                          "budget) has this value, e.g. gpu=h100-80gb; repeatable")

    space = _command(sub, "space", help="print the search space for a model and GPU")
    space.add_argument("--model", default="qwen2-1.5b")
    space.add_argument("--gpu", default=None, choices=sorted(GPUS))
    space.add_argument("--workload", default="", help="the longest request sets max_model_len's floor")
    return parser


def _slo(args: argparse.Namespace) -> SLO:
    return SLO(args.slo_ttft_p99, args.slo_itl_p99, args.slo_e2e_p99, args.slo_tpot_p99,
               args.goodput_def)


def _space(args: argparse.Namespace, gpu: str, workload: Workload) -> SearchSpace:
    space = default_space(args.model, gpu, workload)
    overrides: dict[str, dict[str, Any]] = {}
    if args.space:
        overrides |= load_space_file(args.space)
    for text in args.range:
        name, change = parse_range_override(text)
        overrides[name] = overrides.get(name, {}) | change
    if args.quantization_choices:
        overrides["quantization"] = {"choices": [c.strip() for c in args.quantization_choices.split(",")]}
    return space.with_overrides(overrides)


def _configs(text: str) -> list[dict[str, Any]]:
    """``--enqueue`` value: an inline JSON object, or a file holding one config or a list of them."""
    if text.lstrip().startswith("{"):
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--enqueue {text!r} is not a JSON object: {e.msg}") from None
    else:
        path = Path(text)
        if not path.is_file():
            raise InputError(f"--enqueue {text!r}: no such file (or pass an inline JSON object)")
        try:
            data = yaml.safe_load(path.read_text())
        except UnicodeDecodeError:
            raise InputError(f"--enqueue file {text!r} is not text (UTF-8)") from None
        except yaml.YAMLError as e:
            raise InputError(f"--enqueue file {text!r} is not valid YAML/JSON: {yaml_problem(e)}") from None
    configs = data if isinstance(data, list) else [data]
    if not all(isinstance(c, dict) for c in configs):
        raise InputError(f"--enqueue {text!r}: expected a config mapping or a list of them")
    return configs


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.load_procs < 1:
        raise InputError(f"--load-procs must be >= 1, got {args.load_procs}")
    timeouts = {"startup_timeout_s": args.startup_timeout_s, "stall_timeout_s": args.stall_timeout_s,
                "load_timeout_s": args.load_timeout_s}
    for key, value in timeouts.items():
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--{key.replace('_', '-')} must be a positive number of seconds, got {value}")
    return {"data": args.data, "load_procs": args.load_procs, "launcher": args.launcher, **timeouts}


def cmd_tune(args: argparse.Namespace, console: Console) -> int:
    backend, gpu = placement(args.backend, args.gpu)
    workload = parse_workload(args.workload)
    if args.stop_after_s is not None and not args.stop_after_s > 0:  # also NaN
        raise InputError(f"--stop-after-s must be a positive number of seconds, got {args.stop_after_s}")
    spec = StudySpec(model=args.model, gpu=gpu, optimizer=args.optimizer, seed=args.seed, budget=args.budget,
                     backend=backend, slo=_slo(args), workload=workload, space=_space(args, gpu, workload),
                     enqueue=tuple(c for text in args.enqueue for c in _configs(text)), early_stop=args.early_stop,
                     validate=args.validate, objective=args.objective, capacity_target=args.capacity_target,
                     capacity_max=args.capacity_max, screen=args.screen, screen_trials=args.screen_trials)
    options = _engine_options(args) | {"log_dir": server_log_dir(args.out, spec)}
    engine = make_engine(backend, resolve_model(args.model), get_gpu(gpu), options)
    spec.slo.check_attainable(*engine.latency_floor_ms(spec.workload))
    parallel = Parallel(args.workers, args.gpus_per_worker, args.ray_address,
                        functools.partial(make_engine, backend, resolve_model(args.model), get_gpu(gpu), options))
    if parallel.on_ray:
        engine.close()
        console.print(f"{parallel.workers} workers on Ray ({parallel.ray_address or 'local'})")
    console.print(f"[bold]SLO-Guard[/] {spec.optimizer} on {backend}: {spec.model} / {gpu}, "
                  f"{spec.workload.describe()}, SLO TTFT p99 {spec.slo.ttft_p99_ms:g} ms / ITL p99 "
                  f"{spec.slo.itl_p99_ms:g} ms, budget {spec.budget}")
    console.print(f"log: {log_path_for(args.out, spec)}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=args.quiet) as progress:
        task = progress.add_task("trials", total=spec.budget + FINALISTS * spec.validate)

        def on_trial(rec: dict[str, Any]) -> None:
            good = rec["metrics"].get("goodput_tok_s")
            detail = rec["crash_class"] if rec["status"] == "crash" else f"goodput {good or 0:,.0f} tok/s"
            progress.update(task, advance=1, description=f"trial {rec['trial']:>3}: {rec['status']} ({detail})")

        try:
            result = run_study(spec, args.out, resume=args.resume,
                               engine=None if parallel.on_ray else engine,
                               on_trial=on_trial if not args.quiet else None, stop_after_s=args.stop_after_s,
                               parallel=parallel)
        except KeyboardInterrupt:
            progress.stop()
            _say_how_to_resume(log_path_for(args.out, spec))
            raise
        progress.update(task, completed=len(result.trials))
    _print_summary(result, console)
    return 0


def _say_how_to_resume(log: Path) -> None:
    saved = len(read_log(log).trials) if log.exists() and log.stat().st_size else 0
    print(f"interrupted: {saved} trial{'s' * (saved != 1)} saved in {log}; the trial in flight was not logged. "
          "Continue with the same command plus --resume.", file=sys.stderr)


def _print_summary(result: StudyResult, console: Console) -> None:
    counts = result.counts()
    table = Table(title="study summary", show_header=False)
    replayed = f" ({result.resumed_from} replayed)" if result.resumed_from else ""
    table.add_row("trials", f"{len(result.trials)}{replayed}")
    table.add_row("feasible / SLO miss / crash / error",
                  f"{counts['ok']} / {counts['slo_violation']} / {counts['crash']} / {counts['error']}")
    table.add_row("crash waste", f"{100 * result.crash_waste:.1f} % of GPU-seconds")
    stops = Counter(t["early_stop"]["reason"] for t in result.trials if t.get("early_stop"))
    if stops:
        table.add_row("early stops", ", ".join(f"{n} x {why}" for why, n in stops.most_common()))
    approximate = sum(bool((t.get("engine_info") or {}).get("approximate")) for t in result.trials)
    if approximate:
        table.add_row("approximate answers", f"{approximate} of {len(result.trials)} trials answered from the "
                      "nearest recorded config, not a measurement of their own")
    best = result.best
    if best is None:
        table.add_row("best config", "none met the SLO")
        miss = _closest_miss(result.trials)
        if miss is not None:
            usage = _measured_usage(miss)
            binding = max(usage, key=lambda k: usage[k]) if usage else None
            table.add_row("closest miss", f"trial {miss['trial']}: {json.dumps(miss['config'])}")
            if binding:
                table.add_row("binding SLO", f"{binding} at {usage[binding]:.2f}x its limit "
                              f"(violated: {', '.join(miss.get('violated') or []) or '-'})")
    else:
        m = best["metrics"]
        table.add_row("best trial", str(best["trial"]))
        table.add_row("best config", json.dumps(best["config"]))
        cap = best.get("capacity")
        if cap:
            top = cap["interval"][1]
            bound = f"fails at {top:g}" if top else "the highest level searched"
            table.add_row("capacity", f"{_load(cap['level'], cap['unit'])} with >= {100 * cap['target']:g} % of "
                          f"requests in the SLO ({bound})")
        else:
            table.add_row("goodput", f"{m['goodput_tok_s']:,.0f} tok/s ({m['goodput_req_s']:.2f} req/s)")
        lo, hi = best["interval"]
        n = best["measurements"]
        fresh = f"{n} fresh search{'es' if n != 1 else ''}" if cap else f"{n} fresh load{'s' if n != 1 else ''}"
        how = {True: f"re-measured: {fresh}", None: f"{n} trial(s)",
               False: "no finalist met the SLO again: the study's own ranking"}[best["validated"]]
        if not cap or best["validated"]:  # a capacity's own interval is its bracket, above
            mean = _load(best["mean_utility"], cap["unit"]) if cap else f"{best['mean_utility']:,.0f} tok/s"
            spread = "bracket" if cap and n == 1 else "95 % interval"  # one search: its bracket
            bounds = f"{spread} {lo:g} - {hi:g}" if cap else f"{spread} {lo:,.0f} - {hi:,.0f}"
            if lo == hi and not cap:  # one load whose every request met the SLO: requests resampled do not vary
                bounds = "no spread measured (one load; --workload repeats=3 or --validate K measure one)"
            table.add_row(f"expected {'capacity' if cap else 'goodput'}", f"{mean}, {bounds} ({how})")
        table.add_row("TTFT p50 / p99", f"{m['ttft_p50_ms']:.1f} / {m['ttft_p99_ms']:.1f} ms")
        table.add_row("ITL p50 / p99", f"{m['itl_p50_ms']:.2f} / {m['itl_p99_ms']:.2f} ms")
        table.add_row("throughput", f"{m['throughput_tok_s']:,.0f} tok/s")
    table.add_row("log", str(result.log_path))
    console.print(table)
    rows = capacity_map(result.trials)
    if rows:
        path = result.log_path.with_name(result.log_path.stem + "_capacity.csv")
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["level", "unit", "sustains", "fails_at", "searches", "trials", "config"])
            for r in rows:
                out.writerow([r["level"], r["unit"], *r["interval"], r["searches"], " ".join(map(str, r["trials"])),
                              json.dumps(r["config"])])
        cmap = Table(title=f"capacity map ({len(rows)} configs; all in {path})")
        for col in ("load sustained", "fails at", "config"):
            cmap.add_column(col)
        for r in rows[:5]:
            cmap.add_row(_load(r["level"], r["unit"]), f"{r['interval'][1]:g}" if r["interval"][1] else "-",
                         json.dumps(r["config"]))
        console.print(cmap)


def _load(level: float, unit: str) -> str:
    """A load level as a reader says it: '91 concurrent' (closed loop), '60 requests/s' (open loop)."""
    return f"{level:,.0f} concurrent" if unit == "concurrency" else f"{level:,.4g} requests/s"


def _closest_miss(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The SLO miss whose worst SLO was the least exceeded (``slo_usage``: measured / limit per SLO)."""
    misses = [t for t in trials if t["status"] == "slo_violation" and t.get("slo_usage")]
    return min(misses, key=lambda t: max(_measured_usage(t).values(), default=math.inf), default=None)


def _measured_usage(trial: dict[str, Any]) -> dict[str, float]:
    """``slo_usage`` without the SLOs no request finished to measure (null in the log)."""
    return {k: u for k, u in (trial.get("slo_usage") or {}).items() if u is not None}


def _bench_config(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs given on the command line; values vLLM can never accept are input errors, not crashes."""
    config: dict[str, Any] = {k: getattr(args, k) for k in (*NUMERIC_KNOBS, *BOOL_KNOBS, "quantization")
                              if getattr(args, k) is not None}
    for knob in NUMERIC_KNOBS:
        value = config.get(knob)
        if value is None:
            continue
        if knob == "gpu_memory_utilization":
            if not (math.isfinite(value) and 0 < value <= 1):
                raise InputError(f"--gpu-memory-utilization must be in (0, 1], got {value}")
        elif value < 1:
            raise InputError(f"--{knob.replace('_', '-')} must be >= 1, got {value}")
    if "quantization" in config:
        build_serving_space().with_overrides({"quantization": {"choices": [config["quantization"]]}})
    return config


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    check_seed(args.seed)
    backend, gpu = placement(args.backend, args.gpu)
    config = _bench_config(args)
    engine = make_engine(backend, resolve_model(args.model), get_gpu(gpu), _engine_options(args))
    workload = parse_workload(args.workload)
    rec = evaluate(engine, config, workload, _slo(args), trial_seed(args.seed, 0))
    rec |= {"backend": backend, "gpu": gpu, "model": args.model, "workload": workload.to_dict()}
    if args.json:
        print(json.dumps(rec, default=str, indent=2))
    else:
        console.print_json(json.dumps(rec, default=str))  # stdout, pretty
    return EXIT_CRASH if rec["status"] == "crash" else 0


def cmd_batch(args: argparse.Namespace, console: Console) -> int:
    from sloguard_lib.study import batch

    if args.batch_command == "plan":
        for opt in args.optimizers:
            if opt not in OPTIMIZERS:
                raise InputError(f"unknown optimizer {opt!r}; available: {', '.join(OPTIMIZERS)}")
        files = batch.plan(args.name, args.seeds, args.optimizers, budget=args.budget,
                           backend=args.backend or default_backend(), model=args.model,
                           gpu=args.gpu or _default_gpu(), slo=_slo(args), workload=args.workload,
                           replace=args.replace)
        console.print(f"planned {len(files)} studies in {files[0].parent}/")
        return 0
    parallel = Parallel(args.workers, args.gpus_per_worker, args.ray_address)  # checks the values
    ran, logs = batch.run(args.name, kernel=args.kernel, workers=parallel.workers, num_gpus=parallel.num_gpus,
                          ray_address=parallel.ray_address)
    console.print(f"ran {ran} of {len(logs)} studies; {len(logs)} study logs complete in "
                  f"{logs[0].parent if logs else '-'}")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from sloguard_lib.analysis.report import build_report

    output = args.output or str(Path(args.results_dir) / "figures")
    summ = build_report(args.results_dir, output, args.baseline, where=args.where, definitions=args.definitions,
                        fmt=args.fmt)
    console.print(f"studies: {summ['identity_label']}")
    console.print(f"definitions: {summ['definitions']} ({summ['definitions_text']})")
    console.print(summ["table"])
    if summ["incomplete"]:
        runs = ", ".join(f"{r['optimizer']} seed {r['seed']} {r['trials']}/{r['budget']}" for r in summ["incomplete"])
        console.print(f"incomplete: {runs} trials; the table compares unequal budgets until they finish")
    console.print(f"summary: {summ['summary_path']}; figures: {', '.join(summ['figures'])}")
    return 0


def cmd_space(args: argparse.Namespace, console: Console) -> int:
    space = default_space(args.model, args.gpu or _default_gpu(), parse_workload(args.workload))
    table = Table("knob", "type", "range / choices", "active when")
    table.columns[0].no_wrap = True  # knob names are what users copy into --range: never cut them
    for k in space.knobs:
        rng = f"{list(k.choices)}" if k.kind == "categorical" else (
            "true / false" if k.kind == "bool" else f"{k.low} – {k.high}{' (log)' if k.log else ''}")
        table.add_row(k.name, k.kind, rng, f"{k.active_if[0]} = {k.active_if[1]}" if k.active_if else "always")
    console.print(table)
    for note in space.notes:
        console.print(f"note: {note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    commands = {"tune": cmd_tune, "bench": cmd_bench, "batch": cmd_batch, "report": cmd_report, "space": cmd_space}
    try:
        with interrupts_raise():
            return commands[args.command](args, console)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as e:  # a path given on the command line that the system refuses (too long, a folder, ...)
        print(f"error: {e.filename!r}: {e.strerror or e}" if e.filename else f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as e:  # servers were closed on the way out; tune said how to resume
        return e.exit_code if isinstance(e, Interrupted) else 128 + 2


if __name__ == "__main__":
    sys.exit(main())

