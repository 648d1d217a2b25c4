"""Child processes of the fault tests, speaking the READY/RESULT line protocol.

  children.py send FILE [--receivers N] [--tx-timeout S]
                                               a Sender serving FILE: READY {"ticket", "pid"},
                                               EVENT {"event", "receiver", ...} for each of its
                                               events but progress, then RESULT {"outcome": {...}}
                                               or {"interrupted"}
  children.py get TICKET DIR [--stall PID] [--resume] [--then kill|wait]
                                               ferry.get; at the first progress report it
                                               SIGSTOPs process PID (the sender) if given, prints
                                               STALLED {}, then SIGKILLs itself (kill) or goes
                                               on waiting for a Ctrl-C (wait)
"""

import argparse
import json
import os
import signal
import sys
import threading

import ferry


def emit(kind, obj):
    sys.stdout.write(f"{kind} {json.dumps(obj)}\n")
    sys.stdout.flush()


def outcome_dict(o):
    return None if o is None else {"status": o.status, "reason": o.reason, "done_status": o.done_status, "receivers": o.receivers}


def on_event(e):
    if e.kind != "progress":
        fields = ("receiver", "status", "cause", "refusal", "replaced_by")
        emit("EVENT", {"event": e.kind, **{k: getattr(e, k) for k in fields}})


def send(a):
    s = ferry.Sender(receivers=a.receivers, timeout=a.tx_timeout, on_event=on_event)
    t = s.add_file(a.file)
    waiting = threading.Event()

    def on_sigint(signum, frame):
        # A Ctrl-C is meant for wait(): one that lands before wait() started is sent again
        # until it lands inside (where ferry turns it into Interrupted).
        if waiting.is_set():
            raise KeyboardInterrupt
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    signal.signal(signal.SIGINT, on_sigint)
    emit("READY", {"ticket": t, "pid": os.getpid()})
    try:
        waiting.set()
        o = s.wait()
        emit("RESULT", {"outcome": outcome_dict(o)})
    except ferry.Interrupted as e:
        emit("RESULT", {"interrupted": str(e), "outcome": outcome_dict(s.outcome)})
        sys.exit(130)
    finally:
        s.close()


def get(a):
    stalled = []

    def progress(p):
        # The first report handed over (within ~0.1 s of the start) freezes the sender.
        if not stalled and p.state == "active" and p.bytes_done > 0:
            if a.stall:
                os.kill(a.stall, signal.SIGSTOP)
            stalled.append(p.bytes_done)
            emit("STALLED", {"bytes_done": p.bytes_done, "name": name})
            if a.then == "kill":
                os.kill(os.getpid(), signal.SIGKILL)

    name = f"child-{os.getpid()}"
    try:
        path = ferry.get(a.ticket, a.dir, resume=a.resume, progress=progress, name=name)
        emit("RESULT", {"path": str(path), "stalled": stalled})
    except ferry.Interrupted as e:
        emit("RESULT", {"interrupted": str(e), "name": name})
        # Stay up (connected) until the test has resumed the frozen sender and closes stdin:
        # the cancel already sent must reach a sender that reads it, not a reset connection.
        sys.stdin.read()
        sys.exit(130)
    except ferry.FerryError as e:
        emit("RESULT", {"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


def main():
    # The tests Ctrl-C these children. A process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: the signal would do nothing. Restore Python's own handler so
    # the tests do not depend on how the suite was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("send")
    s.add_argument("file")
    s.add_argument("--receivers", type=int, default=1)
    s.add_argument("--tx-timeout", type=float, default=600.0)
    g = sub.add_parser("get")
    g.add_argument("ticket")
    g.add_argument("dir")
    g.add_argument("--stall", type=int, help="the sender's pid, frozen at the first report")
    g.add_argument("--resume", action="store_true")
    g.add_argument("--then", choices=["kill", "wait"], default="wait")
    a = p.parse_args()
    send(a) if a.role == "send" else get(a)


if __name__ == "__main__":
    main()
