"""Remote profiling over TVM RPC (ios_tvm.cost.rpc) against a loopback tracker and 2 servers.

The tracker and the servers run as ``timeout 120 python -m tvm.exec.rpc_*`` subprocesses in
their own process groups, on free ports of 127.0.0.1, and are stopped by process group id
when the module's tests end. Every wait on them is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("tornado", reason="the RPC tracker needs tornado")
pytest.importorskip("cloudpickle", reason="the RPC server needs cloudpickle")
pytest.importorskip("psutil", reason="the RPC server needs psutil")

from ios_tvm import _native

if not _native.native_available():
    pytest.skip("the native library is not built", allow_module_level=True)

from ios_tvm.compiler.build import build
from ios_tvm.compiler.extract import graph_from_model
from ios_tvm.compiler.profiling import measured_cost, profiling_artifact
from ios_tvm.cost.base import ProfileSettings
from ios_tvm.cost.cache import MeasurementCache
from ios_tvm.cost.rpc import RPCProfiler, TrackerClient, parse_tracker, wait_for_servers
from ios_tvm.errors import RPCError
from ios_tvm.models import sample_block
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.search import candidate_stages

KEY = "ios-test"
FAST = ProfileSettings(warmup=1, number=3, repeat=3)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (each followed by a free one for --port-end)."""
    out: list[int] = []
    socks = []
    while len(out) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        socks.append(s)
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        finally:
            probe.close()
        if all(abs(port - p) > 1 for p in out):
            out.append(port)
    for s in socks:
        s.close()
    return out


#: Runs a module as __main__ in a process where ``import ios_tvm`` fails: the servers must
#: work from the uploaded library alone.
NO_IOS_TVM = ("import runpy, sys; sys.modules['ios_tvm'] = None; "
              "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    timeout = shutil.which("timeout")
    cmd = ([timeout, "120"] if timeout else []) + [sys.executable, "-c", NO_IOS_TVM, *args]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=log.parent)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop each process group we started (the servers fork session workers)."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=5)


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracker and two servers of key ``ios-test``; yields ``"127.0.0.1:PORT"``."""
    logs = tmp_path_factory.mktemp("rpc")
    tracker_port, *server_ports = _free_ports(3)
    procs = []
    try:
        procs.append(_spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                             str(tracker_port), "--port-end", str(tracker_port + 1)],
                            logs / "tracker.log"))
        if not _wait_port(tracker_port, 30):
            pytest.fail("the RPC tracker did not start:\n" + (logs / "tracker.log").read_text())
        for i, port in enumerate(server_ports):
            procs.append(_spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                                 str(port), "--port-end", str(port + 1), "--tracker",
                                 f"127.0.0.1:{tracker_port}", "--key", KEY],
                                logs / f"server{i}.log"))
        tracker = f"127.0.0.1:{tracker_port}"
        free = wait_for_servers(tracker, KEY, 2, timeout=40)
        if free < 2:
            text = "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))
            pytest.fail(f"only {free} of 2 RPC servers registered:\n{text}")
        yield tracker
    finally:
        _stop(procs)


@pytest.fixture(scope="module")
def extraction():  # noqa: ANN201
    return graph_from_model(sample_block(channels=8, size=8), "llvm")


def test_parse_tracker() -> None:
    assert parse_tracker("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert parse_tracker(("h", "5")) == ("h", 5)
    assert parse_tracker("[::1]:9190") == ("::1", 9190)
    for bad in ("nohost", "h:", ":9", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_tracker(bad)


def test_tracker_unreachable_fails_fast() -> None:
    (port,) = _free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(RPCError, match=f"127.0.0.1:{port}"):
        TrackerClient(("127.0.0.1", port), connect_timeout=2)
    assert time.monotonic() - t0 < 5


def test_profile_many_spreads_over_both_servers(cluster: str, extraction) -> None:
    art = profiling_artifact(extraction, max_groups=4)
    stages = [s for s in candidate_stages(extraction.graph, SearchConfig(max_groups=4))
              if s.strategy == "concurrent"]
    assert len(stages) >= 10
    with RPCProfiler(art, cluster, KEY, settings=FAST) as prof:
        results = prof.profile_many([[list(g) for g in s.groups] for s in stages])
        assert len(prof.servers) == 2
        counts = dict(prof.counts)
        assert sum(counts.values()) == len(stages)
        assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
        assert all(len(r) == FAST.repeat and all(x > 0 for x in r) for r in results)
        # One more stage goes to a live session.
        one = prof.profile([[0], [1]])
        assert len(one) == FAST.repeat and min(one) > 0
        assert prof.device_name() == f"rpc:{KEY}:cpu"
        # Whole plans run remotely too.
        x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype("float32")
        assert prof.benchmark_plan(art.plan, [x], min_repeat_ms=1) > 0
    # The servers are free again after close().
    assert wait_for_servers(cluster, KEY, 2, timeout=20) == 2


def test_a_dead_session_is_dropped(cluster: str, extraction) -> None:
    art = profiling_artifact(extraction, max_groups=2)
    stages = [[[0]], [[1]], [[2]], [[0], [1]], [[1], [2]]] * 2
    with RPCProfiler(art, cluster, KEY, settings=FAST) as prof:
        assert prof.open() == 2
        dead = prof._workers[0]
        dead.proc.kill()
        dead.proc.wait(timeout=10)
        results = prof.profile_many(stages)
        assert len(results) == len(stages) and all(min(r) > 0 for r in results)
        assert prof.servers == [prof._workers[1].server]
        assert prof.counts[dead.server] == 0
        assert prof.counts[prof._workers[1].server] == len(stages)
    # The killed session's server comes back.
    assert wait_for_servers(cluster, KEY, 2, timeout=30) == 2


@pytest.mark.slow  # test_build_over_rpc covers the same path end to end
def test_measured_cost_prefetch_over_rpc(cluster: str, extraction, tmp_path: Path) -> None:
    art = profiling_artifact(extraction, max_groups=4)
    cfg = SearchConfig(max_groups=4)
    with RPCProfiler(art, cluster, KEY, settings=FAST) as prof:
        cost = measured_cost(extraction, max_groups=4, profiler=prof, settings=FAST,
                            cache=MeasurementCache(tmp_path / "m.sqlite"),
                            device=prof.device_name())
        n = cost.prefetch(candidate_stages(extraction.graph, cfg))
        assert n == cost.measured > 0
        assert sum(prof.counts.values()) == n
        from ios_tvm.scheduler.search import search

        before = dict(prof.counts)
        result = search(extraction.graph, cost, cfg)
        assert dict(prof.counts) == before  # the search measured nothing more
        assert cost.measured + cost.reused == result.stats.stages_costed  # reused: twins
        assert cost.cache_hits == 0  # a fresh cache


def test_build_over_rpc(cluster: str, tmp_path: Path) -> None:
    model = sample_block(channels=8, size=8)
    cache = tmp_path / "m.sqlite"
    r = build(model, "llvm", cache=cache, settings=FAST, rpc_tracker=cluster, rpc_key=KEY)
    assert r.stages_measured > 0
    assert set(r.latencies) == {"ios", "sequential"}
    assert all(v > 0 for v in r.latencies.values())
    assert r.artifact.plan.meta["specialised_for"]["device"] == f"rpc:{KEY}:cpu"
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 8)).astype("float32")
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(r(x)[0], sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    # The same measurements are cached under the remote device's name.
    again = build(model, "llvm", cache=cache, settings=FAST, rpc_tracker=cluster, rpc_key=KEY,
                  rpc_servers=1)
    assert again.stages_measured == 0 and again.stages_cached > 0


def test_no_server_of_key_times_out(cluster: str, extraction) -> None:
    art = profiling_artifact(extraction, max_groups=2)
    prof = RPCProfiler(art, cluster, "no-such-key", request_timeout=1.5, settings=FAST)
    t0 = time.monotonic()
    with pytest.raises(RPCError, match="no-such-key"):
        prof.profile([[0]])
    assert time.monotonic() - t0 < 10


def test_rpc_arguments_are_checked() -> None:
    with pytest.raises(Exception, match="rpc_key"):
        build(sample_block(channels=4, size=4), "llvm", rpc_tracker="127.0.0.1:1")
