#!/usr/bin/env python3
"""The ferry-in-Python roles of `cargo xtask bench python` (driven by bench_python.py), in the
line protocol of bench_download's roles:

  roles.py send --file F --len N --receivers K    a ferry.Sender serving a dict of float32
        arrays of 4 MiB read from the first N bytes of F (numpy.fromfile, one array at a time);
        READY {"url", "fqcn", "refs", "ticket"}; RESULT {"status", "cpu_s", "maxrss_kib"}
  roles.py receive --fqcn NAME                    waits for GO {"ticket"} on stdin, then
        ferry.download_tensors(ticket) (numpy); DONE {"bytes"}; RESULT {"bytes", "sha256"
        (over the arrays in name order, computed after DONE), "cpu_s", "maxrss_kib"}

stdout carries protocol lines only; stdin EOF ends the process.
"""

import argparse
import hashlib
import json
import os
import resource
import sys
import threading

_OUT = sys.stdout
sys.stdout = sys.stderr

ARRAY_BYTES = 4 << 20


def emit(kind, obj):
    _OUT.write(f"{kind} {json.dumps(obj)}\n")
    _OUT.flush()


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def exit_on_stdin_eof():
    def watch():
        sys.stdin.read()
        os._exit(4)

    threading.Thread(target=watch, daemon=True).start()


def send(a):
    import numpy as np

    import ferry

    exit_on_stdin_eof()
    arrays = {}
    with open(a.file, "rb") as f:
        left, i = a.len, 0
        while left > 0:
            n = min(ARRAY_BYTES, left) // 4 * 4
            if n == 0:
                break
            arrays[f"layer{i:04d}.weight"] = np.fromfile(f, dtype=np.float32, count=n // 4)
            left -= n
            i += 1
    c0 = cpu()
    with ferry.Sender(name="server", receivers=a.receivers, timeout=600.0) as s:
        ticket = s.add_tensors(arrays)
        ref = ferry.Ticket(ticket).ref_id
        emit("READY", {"url": s.url, "fqcn": s.name, "refs": [ref], "ticket": ticket})
        o = s.wait()
        res = {"status": o.status, "cpu_s": cpu() - c0, "maxrss_kib": maxrss_kib()}
        if not o.completed:
            res["error"] = f"transaction outcome: {o.status} ({o.reason})"
    emit("RESULT", res)


def receive(a):
    import numpy as np  # noqa: F401  (imported before READY, like the other systems' receivers)

    import ferry

    emit("READY", {"fqcn": a.fqcn})
    line = sys.stdin.readline()
    if not line.startswith("GO"):
        os._exit(4)
    go = json.loads(line[2:].strip() or "{}")
    exit_on_stdin_eof()
    c0 = cpu()
    arrays = ferry.download_tensors(go["ticket"], name=a.fqcn)
    n = sum(x.nbytes for x in arrays.values())
    spent = cpu() - c0
    emit("DONE", {"bytes": n})
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(memoryview(arrays[name]).cast("B"))
    emit("RESULT", {"bytes": n, "sha256": h.hexdigest(), "cpu_s": spent, "maxrss_kib": maxrss_kib()})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("send")
    s.add_argument("--file", required=True)
    s.add_argument("--len", type=int, required=True)
    s.add_argument("--receivers", type=int, required=True)
    r = sub.add_parser("receive")
    r.add_argument("--fqcn", required=True)
    a = p.parse_args()
    send(a) if a.role == "send" else receive(a)


if __name__ == "__main__":
    main()
