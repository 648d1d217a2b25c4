#!/usr/bin/env python3
"""A real NVFlare 2.9 client root cell (default `site-1`) for Ferry's interop tests.

It connects to --url (tcp://HOST:PORT, or stcp:// with --tls-*; typically a Ferry
listener named `server`), serves the echo/notify handlers of ferry_peer.py on `task` and
`ferry_stream`, and sends requests to --target (default: the peer it connected to):
plain CoreCell requests on `task` and streamed requests (Cell.send_request on the stream
channel `ferry_stream`, i.e. the sm__* ByteStreamer path, even for small payloads).
--big-bytes N adds an N-byte field (>= 10 MiB exercises FOBS datums).

READY {"fqcn", "url", "peer", "tls"}
RESULT lines: {"event": "reply", ...} per reply, {"event": "echo"|"notify", ...} per request
served, and finally {"event": "requests_done", "all_ok"}.
With --stay the cell keeps serving after its requests (until --timeout / stdin EOF),
otherwise it exits --linger seconds after them. --no-requests only serves.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry_peer as fp  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fqcn", default="site-1")
    p.add_argument("--url", required=True, help="tcp://HOST:PORT or stcp://HOST:PORT of the listener")
    p.add_argument("--peer", help="FQCN of the listening cell (default: whoever answers the handshake)")
    p.add_argument("--target", help="FQCN to send requests to (default: the peer)")
    p.add_argument("--no-requests", action="store_true", help="only serve the echo handlers")
    p.add_argument("--stay", action="store_true", help="keep serving after the requests")
    p.add_argument("--linger", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument(
        "--allow-unconnected",
        action="store_true",
        help="go on if no peer stays connected within --connect-timeout (a cell the listener refuses: "
        "its connection may close before it is ever seen as connected); READY then says peer null",
    )
    fp.add_request_args(p)
    fp.add_tls_args(p)
    fp.add_common_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    fp.start_common(args, args.fqcn)
    deadline = time.time() + args.timeout
    creds = fp.credentials(args, listener=False)
    if creds and args.url.startswith("tcp://"):
        args.url = "stcp://" + args.url[len("tcp://") :]

    cell = fp.make_cell(args.fqcn, root_url=args.url, creds=creds)
    fp.register_echo_handlers(cell, args.fqcn)
    cell.start()
    try:
        peer = fp.wait_for_peer(cell, args.peer, min(deadline, time.time() + args.connect_timeout))
    except RuntimeError:
        if not args.allow_unconnected:
            raise
        peer = None
    fp.ready({"fqcn": args.fqcn, "url": args.url, "peer": peer, "tls": bool(creds)})

    if not args.no_requests:
        target = args.target or peer
        try:
            ok = fp.run_requests(cell, args.fqcn, target, args)
            fp.result({"event": "requests_done", "cell": args.fqcn, "all_ok": ok})
        except Exception as ex:
            fp.log.exception("requests failed")
            fp.result({"event": "requests_done", "cell": args.fqcn, "all_ok": False, "error": repr(ex)})
        if not args.stay:
            time.sleep(args.linger)
            cell.stop()
            fp.finish(0)

    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
