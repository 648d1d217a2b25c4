#!/usr/bin/env python3
"""A real NVFlare 2.9 server root cell (`server`) for Ferry's interop tests.

It listens on tcp://HOST:PORT (or stcp:// with --tls-*), serves echo/notify handlers on the
plain channel `task` and the stream channel `ferry_stream` (see ferry_peer.py), and can

* start a child cell `server.<name>` in a separate process (--child), connected to this
  cell's internal listener, with the same handlers: a foreign cell reaches it by forwarding
  through `server`;
* act as a requester (--request-to FQCN): once FQCN is reachable it sends the requests
  asked for (plain on `task`, streamed on `ferry_stream`, ...) and prints one RESULT per
  reply; --child-request-to makes the child do the same (Python child -> server -> FQCN).

READY {"fqcn", "url", "port", "tls", "internal_url", "child": {"fqcn", ...} | null}
RESULT lines: {"event": "echo"|"notify"|"reply"|"sent"|"requests_done", "cell": ..., ...}
The process exits after --timeout, on stdin EOF with --exit-on-stdin-eof, or — when it
was asked to send requests (itself or its child) — once they are done (after --linger s).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry_peer as fp  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["server", "child"], default="server", help="internal: child is spawned by --child")
    p.add_argument("--fqcn", default=None, help="cell FQCN (default: server, or server.<child-name> for a child)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="listen port; 0 = pick a free one (reported in READY)")
    p.add_argument("--parent-url", help="internal: the parent's internal listener (role child)")
    p.add_argument("--child", action="store_true", help="also run child cell server.<child-name> in a subprocess")
    p.add_argument("--child-name", default="j1")
    p.add_argument("--request-to", help="after READY, wait until this FQCN is reachable and send requests to it")
    p.add_argument("--child-request-to", help="the child sends requests to this FQCN (via this server)")
    p.add_argument("--wait-peer-timeout", type=float, default=60.0, help="how long to wait for the request target")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after requests are done")
    fp.add_request_args(p)
    fp.add_tls_args(p)
    fp.add_common_args(p)
    return p.parse_args()


def wait_reachable(cell, fqcn: str, deadline: float):
    """Wait until `fqcn` or its FQCN root is directly connected to this cell."""
    core = cell.core_cell
    while time.time() < deadline:
        if fqcn in fp.connected_peers(cell):
            return
        if "." in fqcn and fqcn.split(".")[0] in fp.connected_peers(cell):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{core.get_fqcn()}: {fqcn} not reachable (peers: {fp.connected_peers(cell)})")


def spawn_child(args, internal_url: str):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--role",
        "child",
        "--fqcn",
        f"server.{args.child_name}",
        "--parent-url",
        internal_url,
        "--timeout",
        str(args.timeout),
        "--log-level",
        args.log_level,
        "--exit-on-stdin-eof",
        "--linger",
        str(args.linger),
        "--wait-peer-timeout",
        str(args.wait_peer_timeout),
        "--request-count",
        str(args.request_count),
        "--big-bytes",
        str(args.big_bytes),
        "--kinds",
        args.kinds,
        "--plain-channel",
        args.plain_channel,
        "--stream-channel",
        args.stream_channel,
        "--topic",
        args.topic,
        "--request-timeout",
        str(args.request_timeout),
    ]
    if args.child_request_to:
        cmd += ["--request-to", args.child_request_to]
    # stdin stays a pipe to us: when this process dies, the child sees EOF and exits.
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True)
    first = child.stdout.readline()
    if not first.startswith("READY "):
        raise RuntimeError(f"child did not get ready: {first!r}")
    child_ready = json.loads(first[len("READY ") :])

    def relay():
        # the child's RESULT lines become ours (they already carry "cell": server.<name>)
        for line in child.stdout:
            if line.startswith("RESULT "):
                fp.result(json.loads(line[len("RESULT ") :]))

    t = threading.Thread(target=relay, name="child-relay", daemon=True)
    t.start()
    return child, t, child_ready


def main():
    args = parse_args()
    fqcn = args.fqcn or ("server" if args.role == "server" else f"server.{args.child_name}")
    fp.start_common(args, fqcn)
    deadline = time.time() + args.timeout

    if args.role == "server":
        creds = fp.credentials(args, listener=True)
        port = args.port or fp.free_port(args.host)
        scheme = "stcp" if creds else "tcp"
        url = f"{scheme}://{args.host}:{port}"
        cell = fp.make_cell(fqcn, root_url=url, creds=creds, internal_listener=args.child)
    else:
        if not args.parent_url:
            raise SystemExit("--role child needs --parent-url")
        creds, port, url = {}, None, None
        cell = fp.make_cell(fqcn, root_url=None, parent_url=args.parent_url)

    fp.register_echo_handlers(cell, fqcn)
    cell.start()

    child = relay = None
    info = {"fqcn": fqcn, "url": url, "port": port, "tls": bool(creds), "internal_url": None, "child": None}
    if args.role == "server":
        fp.wait_port_listening(args.host, port, deadline)
        if args.child:
            internal_url = cell.core_cell.get_internal_listener_url()
            info["internal_url"] = internal_url
            child, relay, child_ready = spawn_child(args, internal_url)
            info["child"] = child_ready
            fp.wait_for_peer(cell, child_ready["fqcn"], deadline)
    else:
        fp.wait_for_peer(cell, "server", deadline)
        info["parent_url"] = args.parent_url
    fp.ready(info)

    if child is not None and args.child_request_to:
        # the child cannot see who is connected to us: tell it when its target is reachable
        try:
            wait_reachable(cell, args.child_request_to, min(deadline, time.time() + args.wait_peer_timeout))
            child.stdin.write("GO\n")
            child.stdin.flush()
        except Exception as ex:
            fp.log.exception("child target not reachable")
            fp.result({"event": "requests_done", "cell": info["child"]["fqcn"], "all_ok": False, "error": repr(ex)})

    if args.request_to:
        try:
            if args.role == "child":
                # the parent sends GO once the target is reachable through it
                if not fp.GO.wait(timeout=min(max(0.0, deadline - time.time()), args.wait_peer_timeout)):
                    raise RuntimeError("parent never said GO")
            else:
                wait_reachable(cell, args.request_to, min(deadline, time.time() + args.wait_peer_timeout))
            ok = fp.run_requests(cell, fqcn, args.request_to, args)
            fp.result({"event": "requests_done", "cell": fqcn, "all_ok": ok})
        except Exception as ex:  # report, do not hang
            fp.log.exception("requests failed")
            fp.result({"event": "requests_done", "cell": fqcn, "all_ok": False, "error": repr(ex)})

    if args.request_to or (child is not None and args.child_request_to):
        if child is not None:
            child.wait(timeout=max(0.0, deadline - time.time()))
            relay.join(timeout=5)
        time.sleep(args.linger)
        cell.stop()
        fp.finish(0)

    # serve until the watchdog or the stdin watcher ends the process
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
