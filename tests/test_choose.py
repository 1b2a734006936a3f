"""The never-slower guard (ios_tvm/compiler/choose.py): paired rounds, the median of paired
ratios and its interval, on a fake clock with injected noise."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from ios_tvm.compiler.choose import choose_plan, decide, median_interval, time_paired


class FakeMachine:
    """A fake clock whose runners advance it by their true latency times a noise factor.

    ``noise`` is the sigma of a log-normal factor drawn for every turn of a runner; ``spikes``
    maps (round, runner) to an extra factor for that turn (another process taking the core).
    """

    def __init__(self, latency: dict[str, float], noise: float, seed: int,
                 spikes: dict[tuple[int, str], float] | None = None) -> None:
        self.now = 0.0
        self.latency = latency
        self.noise = noise
        self.rng = random.Random(seed)
        self.spikes = spikes or {}
        self.round = -1
        self.turns: dict[str, int] = {k: 0 for k in latency}
        self.factor: dict[str, float] = {}
        self.order: list[str] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:  # a pause starts a new turn
        self.now += seconds

    def runner(self, name: str) -> Callable[[], None]:
        def run() -> None:
            self.now += self.latency[name] * self.factor.get(name, 1.0)
        return run

    def runners(self) -> dict[str, Callable[[], None]]:
        return {k: self.runner(k) for k in self.latency}


def fake_rounds(m: FakeMachine, rounds: int) -> dict[str, list[float]]:
    """time_paired on the fake machine: one noise factor per (round, runner) turn.

    With min_ms=0 and turn_warmup=1 each turn is two calls (one untimed, one timed); the
    turn's factor is drawn at its first call. The warm-up calls (warmup=2) are noise-free.
    """
    def wrap(name: str) -> Callable[[], None]:
        state = {"calls": 0, "turn": 0}
        run = m.runner(name)

        def call() -> None:
            state["calls"] += 1
            if state["calls"] <= 2:
                m.factor[name] = 1.0
            elif state["calls"] % 2 == 1:
                m.factor[name] = (math.exp(m.rng.gauss(0.0, m.noise))
                                  * m.spikes.get((state["turn"], name), 1.0))
                state["turn"] += 1
            run()
        return call

    return time_paired({k: wrap(k) for k in m.latency}, rounds, 0.0, warmup=2, pause_ms=1.0,
                       turn_warmup=1, clock=m.clock, sleep=m.sleep)


def test_median_interval_coverage_is_the_sign_tests() -> None:
    xs = list(range(1, 10))  # n = 9
    low, high, cov = median_interval(xs, 0.9)
    assert (low, high) == (2, 8)  # k = 2: one value dropped at each end
    assert cov == pytest.approx(1 - 2 * 10 / 512)
    # n = 7 cannot reach 90% with k = 2 (87.5%): the extremes, 98.4%.
    low, high, cov = median_interval(list(range(7)), 0.9)
    assert (low, high, cov) == (0, 6, pytest.approx(1 - 2 / 128))
    assert median_interval([3.0], 0.9) == (3.0, 3.0, 0.0)
    with pytest.raises(ValueError):
        median_interval([], 0.9)


def test_rounds_are_paired_and_rotated() -> None:
    calls: list[str] = []
    runners = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    samples = time_paired(runners, 3, 0.0, warmup=1, pause_ms=0.0, turn_warmup=0)
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_a_2x_outlier_in_one_round_does_not_flip_the_decision() -> None:
    # IOS truly 20% faster; in round 4 another process doubles the IOS turn.
    m = FakeMachine({"ios": 0.8e-3, "sequential": 1e-3}, noise=0.02, seed=1,
                    spikes={(4, "ios"): 2.0})
    s = fake_rounds(m, 9)
    assert max(a / b for a, b in zip(s["ios"], s["sequential"], strict=True)) > 1.5
    c = choose_plan(s["ios"], s["sequential"], same_schedule=False, margin=0.03)
    assert c.chosen == "ios", c.reason
    # Plans equally fast; in round 2 the sequential turn is doubled, which makes IOS look 2x
    # faster in that round: still sequential.
    m = FakeMachine({"ios": 1e-3, "sequential": 1e-3}, noise=0.02, seed=2,
                    spikes={(2, "sequential"): 2.0})
    s = fake_rounds(m, 9)
    c = choose_plan(s["ios"], s["sequential"], same_schedule=False, margin=0.03)
    assert c.chosen == "sequential", c.reason
    # An unpaired single measurement of that noisy round would have shipped IOS.
    assert s["ios"][2] <= s["sequential"][2] * 0.97


@pytest.mark.parametrize("noise, true_ratio, want, least", [
    (0.05, 0.8, "ios", 99), (0.10, 0.7, "ios", 95),
    (0.10, 1.0, "sequential", 100), (0.10, 1.05, "sequential", 100),
    (0.20, 1.0, "sequential", 99)])
def test_picks_the_truly_faster_plan_at_a_stated_noise(noise: float, true_ratio: float,
                                                       want: str, least: int) -> None:
    """Log-normal noise of sigma ``noise`` on every turn of every plan, 9 rounds, margin 3%:
    over 100 seeded machines the guard picks ``want`` at least ``least`` times. So a 20% gain
    ships reliably at 5% noise, a 30% gain at 10%, and an equal or slower plan (almost) never
    ships even at 20% noise; the price of that is that a 20% gain at 10% noise ships 4 times
    in 5."""
    hits = 0
    for seed in range(100):
        m = FakeMachine({"ios": true_ratio * 1e-3, "sequential": 1e-3}, noise=noise, seed=seed)
        s = fake_rounds(m, 9)
        hits += choose_plan(s["ios"], s["sequential"], same_schedule=False,
                            margin=0.03).chosen == want
    assert hits >= least


def test_decision_states_its_evidence() -> None:
    ios = [0.8, 0.81, 0.79, 0.8, 0.82, 0.8, 0.78, 0.8, 0.81]
    seq = [1.0] * 9
    c = decide(ios, seq, margin=0.03)
    assert c.chosen == "ios"
    e = c.evidence
    assert e is not None and e.rounds == 9 and e.median_ratio == pytest.approx(0.8)
    assert e.interval == (pytest.approx(0.79), pytest.approx(0.81))
    assert e.confidence == pytest.approx(0.961, abs=1e-3)
    assert "upper end" in e.rule and "0.97" in e.rule
    for part in ("median paired ratio 0.800", "[0.790, 0.810]", "96%", "9 rounds"):
        assert part in c.reason
    j = c.to_json()
    assert j["evidence"]["interval"] == [pytest.approx(0.79), pytest.approx(0.81)]
    # A negative margin keeps the IOS plan even when it is slower (the user asked for it).
    assert decide([2.0] * 3, [1.0] * 3, margin=-10).chosen == "ios"
    with pytest.raises(ValueError, match="as many"):
        decide([1.0], [1.0, 1.0], margin=0.03)


def test_one_plan_is_not_compared() -> None:
    c = choose_plan([1e-3] * 3, [1e-3] * 3, same_schedule=True, margin=0.03)
    assert c.chosen == "sequential" and "one plan" in c.reason and c.evidence is None
    c = choose_plan(None, None, same_schedule=False, margin=0.03)
    assert c.chosen == "ios" and "not measured" in c.reason
