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
import socket
import sys
import threading
import time

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


def free_port(host="127.0.0.1"):
    """NVFlare's listener cannot report a port-0 bind: ask the OS for a free port first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_listening(port):
    """Whether a socket is listening on TCP `port` (any address), from /proc/net/tcp{,6}.

    Bound is not enough: NVFlare's listener thread binds, then listens, and a connect between
    the two is refused. Where /proc is missing, a connect that is accepted says it instead
    (the listener then sees a connection that closes at once, which it logs and drops).
    """
    tables = [t for t in ("/proc/net/tcp", "/proc/net/tcp6") if os.path.exists(t)]
    if not tables:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False
    for table in tables:
        with open(table) as f:
            next(f, None)  # the header line
            for line in f:
                fields = line.split()
                # local_address is HEXADDR:HEXPORT; state 0A is LISTEN
                if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_port_listening(host, port, deadline):
    """Wait until somebody (the cell's listener thread) listens on host:port."""
    while time.time() < deadline:
        if port_listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"listener on {host}:{port} did not come up")


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
