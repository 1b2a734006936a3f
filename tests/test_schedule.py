"""Schedule validation (each rule names its violation) and the JSON round trip."""

from __future__ import annotations

import pytest

from ios_tvm import OpGraph, Schedule, ScheduleError, SearchConfig, Stage
from ios_tvm.cost import AnalyticCost
from ios_tvm.ir.schedule import make_schedule, validate_schedule
from ios_tvm.scheduler.search import search

# 0 -> 1 -> 3, 0 -> 2 -> 3
DIAMOND = OpGraph.from_edges(4, [(0, 1), (0, 2), (1, 3), (2, 3)])


def test_valid_schedules_pass():
    validate_schedule(DIAMOND, make_schedule([[[0]], [[1], [2]], [[3]]]), max_groups=2)
    validate_schedule(DIAMOND, make_schedule([[[0, 1, 2, 3]]]))
    validate_schedule(DIAMOND, make_schedule([[[0]], Stage(((1, 2),), "merge"), [[3]]]))


@pytest.mark.parametrize(
    ("stages", "kwargs", "message"),
    [
        ([[[0]], [[1], [2]]], {}, r"1 op\(s\) not scheduled: 3 \(op3\)"),
        ([[[0]], [[1], [2]], [[3]], [[1]]], {}, r"op 1 \(op1\) is scheduled twice"),
        ([[[1]], [[0]], [[2]], [[3]]], {}, r"op 1 \(op1\) in stage 0 runs before its input op 0"),
        ([[[0], [1]], [[2]], [[3]]], {}, r"stage 0: op 1 \(op1\) depends on op 0 \(op0\) in "
                                         r"another group"),
        ([[[0]], [[1], [2]], [[3]]], {"max_groups": 1}, r"stage 1: 2 groups exceed the limit"),
        ([[[0, 1, 3]], [[2]]], {}, r"runs before its input op 2"),
        ([[[0, 1, 2, 3]]], {"max_group_size": 3}, r"has 4 ops, more than the limit of 3"),
        ([[[0]], [[2, 1]], [[3]]], {}, r"not in topological order"),
        ([[[0]], [[1], [2]], [[7]]], {}, r"op 7 is not a node of the graph"),
        ([[[0]], [[1], [2]], [[3], []]], {}, r"empty stage or empty group"),
    ],
)
def test_violations_are_named(stages, kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        validate_schedule(DIAMOND, make_schedule(stages), **kwargs)


def test_merge_stage_rules():
    with pytest.raises(ScheduleError, match="merge stage must be one group of >= 2 ops"):
        validate_schedule(DIAMOND, make_schedule([Stage(((0,),), "merge"), [[1], [2]], [[3]]]))
    with pytest.raises(ScheduleError, match="merged ops 0 and 1 depend on each other"):
        validate_schedule(DIAMOND, make_schedule([Stage(((0, 1),), "merge"), [[2]], [[3]]]))
    with pytest.raises(ScheduleError, match="unknown strategy 'fuse'"):
        validate_schedule(DIAMOND, make_schedule([Stage(((0,),), "fuse"), [[1], [2]], [[3]]]))


def test_json_round_trip():
    result = search(DIAMOND, AnalyticCost(DIAMOND), SearchConfig(strategy="both"),
                    can_merge=lambda g, ops: True)
    text = result.schedule.dumps()
    back = Schedule.loads(text)
    assert back == result.schedule
    assert back.meta["strategy"] == "both" and back.cost == result.schedule.cost
    validate_schedule(DIAMOND, back)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something"}', "not an ios_tvm.Schedule document"),
        ('{"format": "ios_tvm.Schedule", "version": 99, "stages": []}',
         "version 99 is not supported"),
        ('{"format": "ios_tvm.Schedule", "version": 1, "stages": [{"groups": [["a"]]}]}',
         "malformed schedule stage"),
        ('{"format": "ios_tvm.Schedule", "version": 1}', "malformed schedule stage"),
    ],
)
def test_corrupt_schedules_are_rejected(text, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule.loads(text)


def test_summary():
    sch = make_schedule([[[0]], [[1], [2]], [[3]]], cost=1e-3)
    assert sch.summary() == "3 stages (1 concurrent, 0 merged), max 2 groups, cost 1.000 ms"
