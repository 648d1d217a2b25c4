"""Plumbing shared by the NVFlare roles of `bench_download` (not a benchmark by itself).

Line protocol on stdout (everything else, NVFlare's logs included, goes to stderr):

* ``READY <json>``  once, when the cell listens (sender) or is connected (receiver);
* ``DONE <json>``   receivers only: the transfer is complete (the orchestrator timestamps it);
* ``RESULT <json>`` once, last: figures for the table (cpu seconds, peak RSS, digests).

A receiver waits for one ``GO <json>`` line on stdin before it starts; stdin EOF ends any
role at once (exit 4), so no process outlives the orchestrator. Every role also has its own
deadline (``--timeout``; exit 3).

CPU is measured with getrusage(RUSAGE_SELF) (all threads); a role reports the CPU spent
between its baseline (after imports and data generation) and the end of the transfer.
"""

import hashlib
import json
import logging
import os
import queue
import resource
import sys
import threading
import time
from pathlib import Path

# The port helpers are shared with the interop peers (tests/py/ports.py, four levels up).
sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tests" / "py"))
from ports import free_port, wait_port_listening  # noqa: E402,F401

# stdout carries protocol lines only.
_OUT = sys.stdout
sys.stdout = sys.stderr
_LOCK = threading.Lock()
_GO = queue.Queue()
_FINISHED = threading.Event()

SERVER_FQCN = "server"


def emit(kind, obj):
    with _LOCK:
        _OUT.write(f"{kind} {json.dumps(obj, sort_keys=True)}\n")
        _OUT.flush()


def leave(code=0):
    """Exit now: NVFlare keeps non-daemon threads alive, so a normal exit could hang."""
    try:
        logging.shutdown()
    except Exception:
        pass
    with _LOCK:
        _OUT.flush()
    sys.stderr.flush()
    os._exit(code)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def add_common_args(p):
    p.add_argument("--timeout", type=float, default=600.0, help="overall deadline in seconds")
    p.add_argument("--log-level", default="WARNING")


def start(args, name):
    """Logging to stderr, the deadline watchdog and the stdin watcher (GO lines, EOF)."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )

    def watchdog():
        time.sleep(args.timeout)
        emit("RESULT", {"error": f"deadline of {args.timeout}s reached", "role": name})
        leave(3)

    def stdin_watch():
        try:
            for line in sys.stdin:
                line = line.strip()
                if line.startswith("GO"):
                    _GO.put(json.loads(line[2:].strip() or "{}"))
        except Exception:
            pass
        leave(0 if _FINISHED.is_set() else 4)

    threading.Thread(target=watchdog, daemon=True).start()
    threading.Thread(target=stdin_watch, daemon=True).start()


def linger_until_stdin_eof():
    """After RESULT: stay up (fire-and-forget confirms still flushing) until the orchestrator
    closes stdin; the deadline watchdog bounds the wait."""
    _FINISHED.set()
    threading.Event().wait()


def wait_go(timeout):
    return _GO.get(timeout=timeout)


def make_cell(fqcn, url):
    from nvflare.fuel.f3.cellnet.cell import Cell

    return Cell(fqcn=fqcn, root_url=url, secure=False, credentials={}, create_internal_listener=False)


def wait_peer(cell, fqcn, deadline):
    core = getattr(cell, "core_cell", cell)
    while time.time() < deadline:
        with core.agent_lock:
            if fqcn in core.agents:
                return
        time.sleep(0.02)
    raise RuntimeError(f"peer {fqcn} did not connect in time")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def arrays_sha256(arrays):
    """sha256 over the C-order bytes of every array, in insertion (key) order."""
    import numpy as np

    h = hashlib.sha256()
    for name in arrays:
        h.update(memoryview(np.ascontiguousarray(arrays[name])).cast("B"))
    return h.hexdigest()


def make_arrays(total_bytes, array_bytes, seed=7):
    """float32 arrays of `array_bytes` each (the last may be smaller) from random bytes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    i = 0
    left = total_bytes
    while left > 0:
        n = min(array_bytes, left)
        n -= n % 4
        if n <= 0:
            break
        out[f"layer{i:04d}.weight"] = np.frombuffer(rng.bytes(n), dtype=np.float32)
        left -= n
        i += 1
    return out
