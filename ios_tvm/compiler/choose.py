"""The never-slower decision: which plan ships, the IOS plan or the sequential one.

One module, used by :func:`ios_tvm.build` to choose and by the benchmark harness to report
what a build would ship, so the two can never disagree.

How plans are timed (:func:`time_paired`): in rounds, every plan once per round (after a short
pause and one untimed run), the order rotated each round, so load drift on a shared machine
hits both plans of a round alike. How the choice is made (:func:`decide`): on the paired
ratios ``IOS / sequential`` of the rounds, never on one unpaired measurement. Their median
is the estimate; a distribution-free interval for that median (the sign test's: order
statistics ``k`` and ``n+1-k`` of the ``n`` ratios, with the binomial coverage stated) is the
evidence. The IOS plan ships only when the whole interval lies below ``1 - margin``: with the
stated confidence it is at least ``margin`` faster. A single wild round (a 2x outlier from
another process) moves neither the median nor, with 7 rounds or more, the interval's ends.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Default coverage asked of the interval around the median ratio.
CONFIDENCE = 0.9


@dataclass(frozen=True)
class Evidence:
    """What a paired decision rests on.

    ``ratios`` are the per-round ratios IOS / sequential (< 1: IOS faster), ``median_ratio``
    their median, ``interval`` the sign-test interval for the median ratio with binomial
    coverage ``confidence``, and ``rule`` the rule that was applied, in words.
    """

    rounds: int
    median_ratio: float
    interval: tuple[float, float]
    confidence: float
    rule: str
    ratios: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["interval"] = list(self.interval)
        return d


@dataclass(frozen=True)
class Choice:
    """The plan that ships (``"ios"`` or ``"sequential"``), why, and the evidence.

    ``evidence`` is None when nothing was compared (one plan, or none timed).
    """

    chosen: str
    reason: str
    evidence: Evidence | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"chosen": self.chosen, "reason": self.reason,
                "evidence": self.evidence.to_json() if self.evidence is not None else None}


# -- statistics ------------------------------------------------------------------------------------
def median_interval(values: Sequence[float], confidence: float = CONFIDENCE
                    ) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: ``(low, high, coverage)``.

    The sign test's interval: the ``k``-th smallest and ``k``-th largest value, for the
    largest ``k`` whose exact coverage ``1 - 2 P(Binomial(n, 1/2) < k)`` is at least
    ``confidence``; with too few values for that, the smallest and largest (``k = 1``) and
    their (lower) coverage. Assumes only that the values are independent draws around one
    median.
    """
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval needs at least one value")

    def coverage(k: int) -> float:
        tail = sum(math.comb(n, i) for i in range(k)) / 2.0 ** n
        return 1.0 - 2.0 * tail

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def decide(ios: Sequence[float], sequential: Sequence[float], *, margin: float,
           confidence: float = CONFIDENCE, where: str = "") -> Choice:
    """Choose between two plans timed in the same rounds (seconds per run, one per round).

    The IOS plan ships iff the upper end of the ``confidence`` interval of the median paired
    ratio IOS / sequential is at most ``1 - margin``. The reason quotes both plans' median
    times, the median ratio and the interval.
    """
    if len(ios) != len(sequential) or not ios:
        raise ValueError(f"paired timing needs as many IOS as sequential rounds (and at least "
                         f"one), got {len(ios)} and {len(sequential)}")
    ratios = [float(a) / float(b) for a, b in zip(ios, sequential, strict=True)]
    med = statistics.median(ratios)
    low, high, cov = median_interval(ratios, confidence)
    bound = 1.0 - margin
    rule = (f"ship IOS iff the upper end of the {cov:.0%} interval of the median paired ratio "
            f"IOS/sequential is <= {bound:.3g} (margin {margin:.0%})")
    evidence = Evidence(len(ratios), med, (low, high), cov, rule, ratios)
    ios_ms, seq_ms = statistics.median(ios) * 1e3, statistics.median(sequential) * 1e3
    stats = (f"IOS {ios_ms:.3f} ms vs sequential {seq_ms:.3f} ms; median paired ratio "
             f"{med:.3f} [{low:.3f}, {high:.3f}] ({cov:.0%}, {len(ratios)} rounds)")
    if high <= bound:
        return Choice("ios", f"{stats}: IOS is faster ({1.0 / med:.2f}x)", evidence)
    on = f" on {where}" if where else ""
    return Choice("sequential", f"{stats}{on}: not {margin:.0%} faster with {cov:.0%} "
                                f"confidence; keeping sequential", evidence)


def choose_plan(ios: Sequence[float] | float | None, sequential: Sequence[float] | float | None,
                *, same_schedule: bool, margin: float, where: str = "",
                confidence: float = CONFIDENCE) -> Choice:
    """Ship the IOS plan only if it is at least ``margin`` faster than the sequential plan.

    ``ios`` and ``sequential`` are per-round seconds from :func:`time_paired` (a single number
    counts as one round). ``same_schedule``: the search returned the sequential schedule (one
    plan, nothing to compare, timed once). Latencies of None mean the plans were not timed
    (no device here): the searched plan ships on its cost model's word.
    """
    if ios is None or sequential is None:
        return Choice("ios", "not measured (no device here); shipping the searched plan")
    if same_schedule:
        return Choice("sequential", "the search chose the sequential schedule (one plan, "
                                    "timed once)")
    ios_s = [float(ios)] if isinstance(ios, int | float) else list(ios)
    seq_s = [float(sequential)] if isinstance(sequential, int | float) else list(sequential)
    return decide(ios_s, seq_s, margin=margin, confidence=confidence, where=where)


# -- paired timing ---------------------------------------------------------------------------------
def time_paired(runners: Mapping[str, Callable[[], Any]], rounds: int, min_ms: float, *,
                warmup: int = 2, pause_ms: float = 100.0, turn_warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter,
                sleep: Callable[[float], Any] = time.sleep,
                progress: bool = False) -> dict[str, list[float]]:
    """Seconds per run of each runner: one sample per round, runners interleaved.

    Each runner is called ``warmup`` times first (allocations, caches, thread pools). In
    round ``r`` the runners take turns in the order rotated by ``r`` (so no runner always
    follows the same one): the process sleeps ``pause_ms``, the runner runs ``turn_warmup``
    times untimed, then back to back for at least ``min_ms`` (at least once); the mean of that
    turn is its sample for the round. Runners must return only when their work has finished.

    Why the pause: thread pools keep spinning after a run (TVM's for well over 50 ms), and a
    spinning pool of one runner takes the cores from whichever runs next. Why the warm-up in
    each turn: after the pause a runner's own pool has gone to sleep, and the first run pays
    for waking it; a plan that runs back to back does not.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    out: dict[str, list[float]] = {k: [] for k in names}
    iterator: Any = range(rounds)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="timing", unit="round", leave=False)
    for r in iterator:
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run = runners[name]
            if pause_ms > 0:
                sleep(pause_ms / 1e3)
            for _ in range(turn_warmup):
                run()
            n, elapsed = 0, 0.0
            t0 = clock()
            while n < 1 or elapsed * 1e3 < min_ms:
                run()
                n += 1
                elapsed = clock() - t0
            out[name].append(elapsed / n)
    return out
