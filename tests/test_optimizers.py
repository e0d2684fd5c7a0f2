from __future__ import annotations

import pytest

from sloguard_lib.errors import InputError
from sloguard_lib.optimizers import OPTIMIZERS, Outcome, make_optimizer
from sloguard_lib.space import build_serving_space

SPACE = build_serving_space()


def _drive(name: str, seed: int, n: int) -> list[dict]:  # type: ignore[type-arg]
    opt = make_optimizer(name, SPACE, seed)
    out = []
    for i in range(n):
        params = opt.ask().params
        SPACE.validate(params)
        crashed = params["gpu_memory_utilization"] < 0.7
        utility = None if crashed else float(params["max_num_seqs"] * (2 - params["enforce_eager"]))
        opt.tell(params, Outcome("crash" if crashed else "ok", utility))
        out.append(params)
        assert i == len(out) - 1
    return out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_seeded_valid_and_deterministic(name: str) -> None:
    a, b, c = _drive(name, 3, 12), _drive(name, 3, 12), _drive(name, 4, 12)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_replayed_history_gives_the_same_next_proposal(name: str) -> None:
    history = _drive(name, 5, 9)
    fresh = make_optimizer(name, SPACE, 5)
    for params in history[:8]:
        crashed = params["gpu_memory_utilization"] < 0.7
        utility = None if crashed else float(params["max_num_seqs"] * (2 - params["enforce_eager"]))
        fresh.tell(params, Outcome("crash" if crashed else "ok", utility))
    assert fresh.ask().params == history[8]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_survives_all_crash_history(name: str) -> None:
    opt = make_optimizer(name, SPACE, 0)
    for _ in range(10):
        opt.tell(opt.ask().params, Outcome("crash", None, crash_class="oom"))
    SPACE.validate(opt.ask().params)


def test_tpe_exploits_after_startup() -> None:
    """With utility = max_num_seqs, TPE's later picks should sit high in the range, unlike random's."""
    def late_mean(name: str) -> float:
        opt = make_optimizer(name, SPACE, 11)
        vals = []
        for _ in range(25):
            p = opt.ask().params
            opt.tell(p, Outcome("ok", float(p["max_num_seqs"])))
            vals.append(p["max_num_seqs"])
        return sum(vals[-10:]) / 10
    tpe, rnd = late_mean("tpe"), late_mean("random")
    assert tpe > 64 and tpe > rnd * 1.2


def test_unknown_optimizer() -> None:
    with pytest.raises(InputError, match="unknown optimizer 'bayes'"):
        make_optimizer("bayes", SPACE, 0)
