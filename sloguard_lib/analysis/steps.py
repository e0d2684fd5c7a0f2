"""The engine steps of real loads beside the simulator's, from the token timelines real trials keep.

Each real trial since 2026-12-08 keeps every streamed token's arrival beside its server's log
(:mod:`sloguard_lib.measure.timeline`); device calls carry the logs back in ``server_logs*.tar.gz``. This replays
each such trial's config and workload on the sim and cuts both loads into steps the same way, so what is compared
is what sets ITL p99 (#16): how long decode steps and the steps that finish a prefill take, how often the latter
come and how many token gaps they hold. The real step count beside the server's own counter (``engine_steps``)
says whether the cut is right on that machine.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sloguard_lib.analysis.fidelity import point_hardware, study_points
from sloguard_lib.engine.calibration import DEFAULT, SimCalibration
from sloguard_lib.engine.sim import SimEngine
from sloguard_lib.hardware import get_gpu, resolve_model
from sloguard_lib.measure import timeline
from sloguard_lib.measure.metrics import LoadResult, summarize
from sloguard_lib.measure.workload import Workload

PROFILE = ("steps", "prefill_share", "decode_p50_ms", "decode_p99_ms", "prefill_p50_ms", "prefill_p99_ms",
           "gaps_in_prefill_steps")


def timelines(sources: Iterable[str | Path]) -> dict[str, bytes]:
    """Every ``.npz`` timeline in ``sources`` (server-log folders, or the ``.tar.gz`` a device call carries back),
    by ``<study id>/<file name>``, the names trial records give (``fidelity.study_points``' ``timelines``)."""
    out: dict[str, bytes] = {}
    for src in map(Path, sources):
        if src.is_dir():
            for f in sorted(src.rglob("*.npz")):
                out[f"{f.parent.name}/{f.name}"] = f.read_bytes()
            continue
        with tarfile.open(src) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith(".npz") and (member := tar.extractfile(m)) is not None:
                    out["/".join(Path(m.name).parts[-2:])] = member.read()
    return out


def rows(logs: Sequence[str | Path], sources: Iterable[str | Path],
         cal: SimCalibration = DEFAULT) -> list[dict[str, Any]]:
    """One row per real load with a timeline in ``sources``: its point's name and config, the server's step
    counter (None where the trial ran several loads: the record's counter is their sum), and
    :func:`timeline.profile` of the real load and of the sim's (``real_<key>``, ``sim_<key>``), with both ITL p99s.
    The sim replays each trial once, whatever the number of its loads."""
    found = timelines(sources)
    engines: dict[tuple[str, str], SimEngine] = {}
    out: list[dict[str, Any]] = []
    for point, loads in _loads(logs, found):
        key = point_hardware(point, "qwen2-1.5b", "h100-80gb")
        if key not in engines:
            engines[key] = SimEngine(resolve_model(key[0]), get_gpu(key[1]), cal=cal)
        sim = engines[key].launch(point["config"], trial_seed=0).run_load(Workload.from_dict(point["workload"]))
        sim_side = _side("sim", sim)
        counter = point["metrics"].get("engine_steps") if len(loads) == 1 else None
        out += [{"name": point["name"], "config": point["config"], "counter_steps": counter}
                | _side("real", real) | sim_side for real in loads]
    return out


def _side(side: str, load: LoadResult) -> dict[str, float]:
    return {f"{side}_{k}": v for k, v in timeline.profile(timeline.steps(load.requests)).items()} | {
        f"{side}_itl_p99_ms": summarize(load)["itl_p99_ms"]}


def _loads(logs: Sequence[str | Path], found: dict[str, bytes]) -> Iterator[tuple[dict[str, Any], list[LoadResult]]]:
    """Each measured trial of ``logs`` with the loads of its timelines that ``found`` holds."""
    for path in logs:
        for point in study_points(path):
            loads = [timeline.read(io.BytesIO(found[name])) for name in point["timelines"] if name in found]
            if point["status"] == "ok" and loads:
                yield point, loads


def table(found: list[dict[str, Any]]) -> str:
    """:func:`rows` as a markdown table, real / sim in each cell."""
    head = "| trial | budget | seqs | eager | chunked | steps (counter) | " + " | ".join(PROFILE[1:]) + \
           " | ITL p99 ms |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in found:
        c = r["config"]
        counter = "none" if r["counter_steps"] is None else f"{r['counter_steps']:.0f}"
        cells = [f"{r['real_steps']:.0f} / {r['sim_steps']:.0f} ({counter})"]
        cells += [f"{r[f'real_{k}']:.3g} / {r[f'sim_{k}']:.3g}" for k in (*PROFILE[1:], "itl_p99_ms")]
        lines.append(f"| {r['name']} | {c.get('max_num_batched_tokens')} | {c.get('max_num_seqs')} | "
                     f"{json.dumps(c.get('enforce_eager'))} | {json.dumps(c.get('enable_chunked_prefill'))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
