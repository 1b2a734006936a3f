"""Remote profiling through TVM's RPC tracker: stages measured on remote devices, in parallel.

:class:`RPCProfiler` implements the :class:`~ios_tvm.cost.base.StageProfiler` protocol
over TVM RPC. It asks the tracker at ``HOST:PORT`` for servers of ``key`` (every free one, or
at most ``num_servers``), opens one session per server and prepares each the same way:

1. upload ios-tvm's native library (``libios_tvm_native.so``) and load it with
   ``remote.load_module``. Loading runs the library's static initialisers in the server's
   session process, so its tvm-ffi globals register there:
   ``remote.get_function("ios_tvm.runtime.create_executor")`` then works. The server needs
   no ios-tvm installation, only the same apache-tvm / tvm-ffi wheels (the library links
   their ``libtvm_ffi.so`` and ``libtvm_runtime.so``, which the server process already has
   loaded) and the same CPU architecture;
2. upload the profiling artifact's kernel library (``kernels.so``) and load it; send the
   weights as bytes to the stock ``runtime.LoadParams`` (the result stays remote as an
   ``RPCObjectRef``);
3. create the executor on ``remote.cpu(0)`` or ``remote.cuda(0)`` from the plan JSON.

TVM's RPC passes only plain values, strings, bytes, tensors, modules, functions and opaque
remote object references, not containers. So a stage's groups travel as JSON text parsed
remotely by the stock ``ffi.json.Parse`` (the parsed array stays remote and is handed to
``profile_stage``), and the returned ``Array<double>`` comes back through
``ffi.json.Stringify``. No remote-side helper beyond the executor itself is needed.

Each session lives in its own worker process (``python -m ios_tvm.cost.rpc``, talking to
this process over two pipes). TVM's RPC client is not safe to drive from several threads of
one process: driving two sessions from two threads crashed with heap corruption in
``libtvm_compiler.so`` (freeing a remote handle from another thread races the session's own
calls). The worker imports TVM *before* the tracker assigns it a server, because a server
drops a match key that is not used within a few seconds.

:meth:`RPCProfiler.profile_many` spreads a batch of stages over every open session: one
thread per worker pulls stages from a shared queue until it is empty. A session that fails
is dropped and its stage re-queued; a stage that fails twice, or every session failing,
raises :class:`RPCError`. :attr:`RPCProfiler.counts` records how many stages each server
measured.

The IOS search asks for stage costs one at a time, so to use several servers the distinct
stages are enumerated first (:func:`~ios_tvm.cost.measured.candidate_stages`: the DP visits
the same stages whatever their costs), measured in one batch
(:meth:`~ios_tvm.cost.measured.MeasuredCost.prefetch`), and the search then runs on the
measured table. :func:`ios_tvm.build` does this when given ``rpc_tracker`` and ``rpc_key``.

Every network wait is bounded: connecting to the tracker (``connect_timeout``), waiting for
a server (``request_timeout``), and the sessions themselves (``session_timeout``, after which
the server ends the session). TVM's own tracker client retries for a minute on a refused
connection and can block forever on a request; this module talks to the tracker with plain
sockets with timeouts instead.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import statistics
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ios_tvm import _native
from ios_tvm.cost.base import ProfileSettings
from ios_tvm.errors import RPCError

logger = logging.getLogger(__name__)
#: The global our native library registers; its presence remotely proves the upload worked.
CREATE_EXECUTOR = "ios_tvm.runtime.create_executor"
_NATIVE_NAME = "libios_tvm_native.so"
_KERNELS_NAME = "ios_tvm_kernels.so"


def parse_tracker(tracker: str | tuple[str, int]) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)`` as a ``(host, port)`` tuple.

    Raises
    ------
    ValueError
        When the text is not ``HOST:PORT`` with an integer port.
    """
    if isinstance(tracker, tuple | list):
        host, port = tracker
        return str(host), int(port)
    host, sep, port = str(tracker).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"RPC tracker must be HOST:PORT, not {tracker!r}")
    return host.strip("[]"), int(port)


class TrackerClient:
    """A minimal client of TVM's RPC tracker whose every wait is bounded.

    Parameters
    ----------
    address
        ``(host, port)`` of the tracker.
    connect_timeout
        Seconds to connect and complete the handshake.
    """

    def __init__(self, address: tuple[str, int], connect_timeout: float = 10.0) -> None:
        from tvm.rpc import base

        self.address = address
        self._base = base
        try:
            self._sock = socket.create_connection(address, timeout=connect_timeout)
            self._sock.settimeout(connect_timeout)
            self._sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self._sock, 4))[0]
        except OSError as e:
            raise RPCError(f"cannot reach the RPC tracker at {address[0]}:{address[1]}: "
                           f"{e}") from e
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise RPCError(f"{address[0]}:{address[1]} is not a TVM RPC tracker")

    def _call(self, message: list[Any], timeout: float) -> Any:
        if self._sock is None:
            raise RPCError(f"the connection to the tracker {self.address} is closed")
        self._sock.settimeout(timeout)
        try:
            self._base.sendjson(self._sock, message)
            return self._base.recvjson(self._sock)
        except TimeoutError:
            raise
        except OSError as e:
            self.close()
            raise RPCError(f"lost the RPC tracker at {self.address[0]}:{self.address[1]}: "
                           f"{e}") from e

    def summary(self, timeout: float = 10.0) -> dict[str, Any]:
        """The tracker's summary: ``{"queue_info": {key: {"free", "pending"}}, "server_info"}``."""
        try:
            value = self._call([self._base.TrackerCode.SUMMARY], timeout)
        except TimeoutError as e:
            self.close()
            raise RPCError(f"the RPC tracker at {self.address[0]}:{self.address[1]} did not "
                           f"answer within {timeout:g} s") from e
        if value[0] != self._base.TrackerCode.SUCCESS:
            raise RPCError(f"unexpected tracker reply {value!r}")
        return dict(value[1])

    def free_servers(self, key: str, timeout: float = 10.0) -> int:
        """How many servers of ``key`` are free now."""
        info = self.summary(timeout).get("queue_info", {}).get(key)
        return int(info["free"]) if info else 0

    def request(self, key: str, timeout: float, priority: int = 1) -> tuple[str, int, str]:
        """Wait (at most ``timeout`` seconds) for a free server; its ``(host, port, matchkey)``.

        On a timeout the connection is closed (the tracker drops the pending request with it).
        """
        try:
            value = self._call([self._base.TrackerCode.REQUEST, key, "", priority], timeout)
        except TimeoutError as e:
            self.close()
            raise RPCError(f"no server of key {key!r} became free within {timeout:g} s") from e
        if value[0] != self._base.TrackerCode.SUCCESS:
            raise RPCError(f"the tracker refused the request for {key!r}: {value!r}")
        host, port, matchkey = value[1]
        return str(host), int(port), str(matchkey)

    def close(self) -> None:
        """Close the connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- the per-session worker process ---------------------------------------------------------
def _setup_session(host: str, port: int, matchkey: str, setup: dict[str, Any]
                   ) -> dict[str, Any]:
    """In the worker: connect to the server and prepare the remote executor."""
    from tvm import rpc

    server = f"{host}:{port}"
    try:
        sess = rpc.connect(host, port, matchkey, session_timeout=setup["session_timeout"])
    except Exception as e:
        raise RPCError(f"cannot open an RPC session on {server}: {e}") from e
    try:
        sess.upload(bytearray(setup["native"]), _NATIVE_NAME)
        sess.load_module(_NATIVE_NAME)
        try:
            create = sess.get_function(CREATE_EXECUTOR)
        except Exception as e:
            raise RPCError(f"{server}: loading {_NATIVE_NAME} did not register "
                           f"{CREATE_EXECUTOR} remotely ({e})") from e
        sess.upload(bytearray(setup["kernels"]), _KERNELS_NAME)
        lib = sess.load_module(_KERNELS_NAME)
        load_params = sess.get_function("runtime.LoadParams")
        params = load_params(bytearray(setup["params"]))
        cuda = setup["device_type"] == "cuda"
        device = sess.cuda(0) if cuda else sess.cpu(0)
        if cuda and not device.exist:
            raise RPCError(f"{server} has no CUDA device")
        executor = create(setup["plan"], lib, params, device)
    except RPCError:
        raise
    except Exception as e:
        raise RPCError(f"{server}: setting up the remote executor failed: {e}") from e
    return {"sess": sess, "create": create, "lib": lib, "params": params, "device": device,
            "load_params": load_params, "executor": executor,
            "profile": executor["profile_stage"], "parse": sess.get_function("ffi.json.Parse"),
            "stringify": sess.get_function("ffi.json.Stringify")}


def _worker_op(s: dict[str, Any], op: str, args: tuple[Any, ...], settings: list[int]) -> Any:
    warmup, number, repeat = settings
    if op == "profile":
        (groups,) = args
        out = s["profile"](s["parse"](json.dumps(groups)), warmup, number, repeat)
        return [float(x) for x in json.loads(str(s["stringify"](out, None)))]
    if op == "bench":
        plan_json, params_blob, min_repeat_ms = args
        params = s["load_params"](bytearray(params_blob))
        ex = s["create"](plan_json, s["lib"], params, s["device"])
        for _ in range(max(warmup, 1)):
            ex["run"]()
        timer = ex.time_evaluator("run", s["device"], number=number, repeat=repeat,
                                  min_repeat_ms=int(min_repeat_ms))
        return float(statistics.median(timer().results))
    if op == "device_name":
        return str(s["device"].device_name)
    raise ValueError(f"unknown worker operation {op!r}")


def _worker_main(read_fd: int, write_fd: int) -> None:
    """A worker process: holds one RPC session and serves requests from its parent.

    Protocol (pickled over two pipes): the worker sends ``(True, None)`` once TVM is
    imported; the parent then asks the tracker for a server and sends
    ``(host, port, matchkey, setup)`` (a server drops a match key that is not used within
    seconds, so the slow import comes first); the worker answers ``(True, None)`` once
    prepared (or ``(False, message)``), then answers each ``(op, args)`` with
    ``(True, value)`` or ``(False, message)``; ``None`` or a closed pipe ends it (and with
    it the session).
    """
    from multiprocessing.connection import Connection

    logging.basicConfig(level=logging.WARNING)
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        import tvm.rpc  # noqa: F401

        conn_out.send((True, None))
        msg = conn_in.recv()
        if msg is None:
            return
        host, port, matchkey, setup = msg
        settings = setup["settings"]
        try:
            s = _setup_session(host, port, matchkey, setup)
        except Exception as e:
            conn_out.send((False, str(e)))
            return
        conn_out.send((True, None))
        while True:
            msg = conn_in.recv()
            if msg is None:
                return
            op, args = msg
            try:
                conn_out.send((True, _worker_op(s, op, args, settings)))
            except Exception as e:
                conn_out.send((False, f"{type(e).__name__}: {e}"))
    except (EOFError, OSError, KeyboardInterrupt):
        return


class _Worker:
    """The parent's handle on one worker process (one RPC session on one server).

    TVM's RPC client is not safe to drive from several threads of one process (freeing a
    remote handle from another thread races the session's own calls; we saw heap
    corruption), so each session lives in its own process, started with ``subprocess`` (not
    ``multiprocessing``, which would re-run an unguarded ``__main__`` script).
    """

    def __init__(self) -> None:
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        self.server = "(not connected)"
        self.alive = True
        self.lock = threading.Lock()
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The child imports this very ios_tvm, wherever it was imported from.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ios_tvm.cost.rpc", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)

    def connect(self, host: str, port: int, matchkey: str, setup: dict[str, Any],
                timeout: float) -> None:
        """Open the session on the server the tracker assigned and set it up."""
        self.server = f"{host}:{port}"
        try:
            self._send.send((host, port, matchkey, setup))
        except OSError as e:
            self.close(kill=True)
            raise RPCError(f"{self.server}: the worker process is gone") from e
        self.result(timeout, "setup")

    def result(self, timeout: float, what: str) -> Any:
        """The worker's next answer (waiting at most ``timeout`` seconds)."""
        try:
            if not self._recv.poll(timeout):
                self.close(kill=True)
                raise RPCError(f"{self.server}: no answer to {what} within {timeout:g} s")
            ok, value = self._recv.recv()
        except (EOFError, OSError) as e:
            self.close(kill=True)
            raise RPCError(f"{self.server}: the worker process died during {what}") from e
        if not ok:
            raise RPCError(f"{self.server}: {what} failed: {value}")
        return value

    def call(self, op: str, *args: Any, timeout: float) -> Any:
        """Run ``op`` in the worker's session; its result."""
        with self.lock:
            if not self.alive:
                raise RPCError(f"{self.server}: the session is closed")
            try:
                self._send.send((op, args))
            except OSError as e:
                self.close(kill=True)
                raise RPCError(f"{self.server}: the worker process is gone") from e
            return self.result(timeout, op)

    def close(self, kill: bool = False) -> None:
        """End the worker (and its session); ``kill`` skips the polite request."""
        self.alive = False
        if not kill:
            try:
                self._send.send(None)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=0.1 if kill else 10)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for c in (self._send, self._recv):
            c.close()


class RPCProfiler:
    """Measures stages on remote servers of an RPC tracker (see the module docstring).

    Each session is driven by its own worker process (``python -m ios_tvm.cost.rpc``);
    this object hands out stages to them from one thread per session.

    Parameters
    ----------
    artifact
        The profiling artifact (:func:`~ios_tvm.compiler.profiling.profiling_artifact`: the
        sequential plan, one buffer per tensor, enough worker threads / streams for any
        stage).
    tracker
        ``"HOST:PORT"`` or ``(host, port)`` of the tracker.
    key
        The device key the servers registered with.
    num_servers
        The most sessions to open; default: every server of ``key`` free at the first
        measurement (at least one, waited for up to ``request_timeout``).
    settings
        Warm-up, number and repeat of each measurement.
    session_timeout
        Seconds after which a server ends our session (frees it if this process dies); also
        the longest wait for one measurement.
    connect_timeout
        Seconds to connect to the tracker.
    request_timeout
        Seconds to wait for a server when none is free.
    setup_timeout
        Seconds for a worker to start, connect and prepare its remote executor.
    """

    def __init__(self, artifact: Any, tracker: str | tuple[str, int], key: str, *,
                 num_servers: int | None = None, settings: ProfileSettings | None = None,
                 session_timeout: float = 600.0, connect_timeout: float = 10.0,
                 request_timeout: float = 60.0, setup_timeout: float = 120.0) -> None:
        if num_servers is not None and num_servers < 1:
            raise ValueError(f"num_servers must be positive, got {num_servers}")
        if not key:
            raise ValueError("an RPC key is required")
        self.artifact = artifact
        self.tracker = parse_tracker(tracker)
        self.key = key
        self.num_servers = num_servers
        self.settings = settings or ProfileSettings()
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.setup_timeout = setup_timeout
        #: Stages measured per server ("host:port").
        self.counts: Counter[str] = Counter()
        self._workers: list[_Worker] = []
        self._setup: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._device_name: str | None = None

    # -- sessions -------------------------------------------------------------------------
    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the plan runs."""
        return str(self.artifact.plan.device_type)

    @property
    def servers(self) -> list[str]:
        """Addresses (``host:port``) of the open sessions' servers."""
        return [w.server for w in self._workers if w.alive]

    def _setup_payload(self) -> dict[str, Any]:
        """What every worker needs: library, kernels, weights, plan, settings (made once)."""
        if self._setup is None:
            with tempfile.TemporaryDirectory(prefix="ios_tvm_rpc_") as tmp:
                out = Path(self.artifact.export(tmp))
                kernels = (out / "kernels.so").read_bytes()
                params = (out / "params.bin").read_bytes()
            st = self.settings
            self._setup = {"native": Path(_native.library_path()).read_bytes(),
                           "kernels": kernels, "params": params,
                           "plan": self.artifact.plan.dumps(),
                           "device_type": self.device_type,
                           "session_timeout": self.session_timeout,
                           "settings": [st.warmup, st.number, st.repeat]}
        return self._setup

    def open(self, wanted: int | None = None) -> int:
        """Open sessions (if none are open yet); returns how many are open.

        ``wanted`` caps the number (e.g. the number of stages to measure); ``num_servers``
        caps it too; otherwise every server of the key that is free now gets a session.
        """
        with self._lock:
            if self.servers:
                return len(self.servers)
            setup = self._setup_payload()
            cap = max(1, min(x for x in (wanted, self.num_servers, 1 << 30) if x is not None))
            client = TrackerClient(self.tracker, self.connect_timeout)
            workers: list[_Worker] = []
            try:
                free = client.free_servers(self.key, self.connect_timeout)
                n = max(1, min(free, cap))
                # Start the workers (TVM import) before taking servers from the tracker.
                workers = [_Worker() for _ in range(n)]
                deadline = time.monotonic() + self.setup_timeout
                for w in workers:
                    w.result(max(0.1, deadline - time.monotonic()), "start-up")
                errors: list[Exception] = []
                for i, w in enumerate(workers):
                    try:
                        # The first waits for a server if none is free; later ones were free.
                        timeout = self.request_timeout if i == 0 else self.connect_timeout
                        assigned = client.request(self.key, timeout)
                    except RPCError as e:
                        if not self._workers and not errors:
                            raise
                        logger.info("got %d of %d servers of %r", len(self._workers), n,
                                    self.key)
                        errors.append(e)
                        break
                    try:
                        w.connect(*assigned, setup, self.setup_timeout)
                        self._workers.append(w)
                    except RPCError as e:
                        errors.append(e)
                        logger.warning("dropping an RPC server: %s", e)
            finally:
                client.close()
                for w in workers:
                    if w not in self._workers:
                        w.close(kill=True)
            if not self._workers:
                raise errors[0]
            logger.info("profiling on %d server(s) of key %r: %s", len(self._workers),
                        self.key, ", ".join(self.servers))
            return len(self._workers)

    def close(self) -> None:
        """End every session (the servers become free again)."""
        with self._lock:
            for w in self._workers:
                w.close()
            self._workers = []

    def __enter__(self) -> RPCProfiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- measuring ------------------------------------------------------------------------
    def device_name(self) -> str:
        """A name for the measurements' device: the key, plus the GPU's name on CUDA."""
        if self._device_name is None:
            name = f"rpc:{self.key}:{self.device_type}"
            if self.device_type == "cuda":
                self.open()
                name += ":" + self._live()[0].call("device_name", timeout=self.connect_timeout)
            self._device_name = name
        return self._device_name

    def _live(self) -> list[_Worker]:
        live = [w for w in self._workers if w.alive]
        if not live:
            raise RPCError(f"no RPC session of key {self.key!r} is left")
        return live

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        """Seconds per run of one stage, one value per repeat (on one of the servers)."""
        return self.profile_many([groups])[0]

    def profile_many(self, stages: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """Measure many stages spread over every open session; results in input order."""
        if not stages:
            return []
        self.open(len(stages))
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(stages)):
            todo.put(i)
        results: list[list[float] | None] = [None] * len(stages)
        failures: Counter[int] = Counter()
        errors: list[BaseException] = []
        guard = threading.Lock()

        def work(w: _Worker) -> None:
            while w.alive:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                groups = [[int(c) for c in g] for g in stages[i]]
                try:
                    results[i] = w.call("profile", groups, timeout=self.session_timeout)
                    with guard:
                        self.counts[w.server] += 1
                except RPCError as e:  # the session (or the stage) failed
                    with guard:
                        failures[i] += 1
                        errors.append(e)
                        if failures[i] < 2:
                            todo.put(i)
                    w.close(kill=True)
                    logger.warning("RPC server %s failed on stage %s: %s", w.server, groups, e)
                    return

        live = self._live()
        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in live]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            last = errors[-1] if errors else None
            raise RPCError(f"{len(missing)} stage(s) could not be measured over RPC (key "
                           f"{self.key!r}, servers {[w.server for w in live]}): {last}")
        return [r for r in results if r is not None]

    def benchmark_plan(self, plan: Any, inputs: Sequence[Any], *, min_repeat_ms: float = 50.0
                       ) -> float:
        """Median seconds per whole run of ``plan`` (same kernels and weights) on a server.

        The executor's ``set_input`` takes an owned ``ffi.Tensor``, but RPC hands the server
        a bare ``DLTensor*``, which tvm-ffi will not convert. So the inputs travel as extra
        weights: the plan's input tensors become weights loaded by name, and the weights are
        sent again (as bytes, to ``runtime.LoadParams``) together with the input values.
        """
        import numpy as np
        import tvm

        self.open(1)
        doc = plan.to_json()
        values = dict(self.artifact.params)
        for i, x in zip(plan.inputs, inputs, strict=True):
            doc["tensors"][i]["place"] = "param"
            values[plan.tensors[i].name] = np.ascontiguousarray(x)
        rt = tvm.runtime
        blob = bytes(rt.save_param_dict(
            {k: v if isinstance(v, rt.Tensor) else rt.tensor(np.asarray(v))
             for k, v in values.items()}))
        return float(self._live()[0].call("bench", json.dumps(doc), blob, min_repeat_ms,
                                          timeout=self.session_timeout))


def wait_for_servers(tracker: str | tuple[str, int], key: str, count: int, timeout: float
                     ) -> int:
    """Poll the tracker until ``count`` servers of ``key`` are free or ``timeout`` passes.

    Returns the number free at the end (the tracker may not be up yet at first).
    """
    addr = parse_tracker(tracker)
    deadline = time.monotonic() + timeout
    free = 0
    while True:
        try:
            client = TrackerClient(addr, connect_timeout=min(5.0, timeout))
            try:
                free = client.free_servers(key)
            finally:
                client.close()
        except (RPCError, OSError):
            free = 0
        if free >= count or time.monotonic() >= deadline:
            return free
        time.sleep(0.25)


if __name__ == "__main__":
    import sys

    _worker_main(int(sys.argv[1]), int(sys.argv[2]))
