"""Shared plumbing for Ferry's NVFlare peer scripts (not a test itself).

Every peer script speaks the same line protocol on stdout, which the Rust test support
(`ferry-tests`, `PyPeer`) reads:

* exactly one ``READY <json>`` line once the cell is listening / connected;
* any number of ``RESULT <json>`` lines carrying what the Rust test must check;
* nothing else. Logs (NVFlare's and ours) go to stderr.

A script never runs forever: a watchdog ends the process after ``--timeout`` seconds
(exit code 3, after a ``RESULT {"error": "timeout"}`` line), and with
``--exit-on-stdin-eof`` the process also ends when its stdin is closed, which happens
when the Rust test process that spawned it goes away.

This module only *uses* NVFlare's public classes (Cell, Message, DownloadService, ...).
"""

import argparse
import hashlib
import json
import logging
import os
import queue
import sys
import threading
import time

# free_port and wait_port_listening are also used through this module (nv_server_cell.py).
from ports import free_port, wait_port_listening  # noqa: F401

# Keep stdout for the line protocol only: anything NVFlare (or a library) prints goes to stderr.
_PROTOCOL_OUT = sys.stdout
sys.stdout = sys.stderr
_OUT_LOCK = threading.Lock()

# Set when a "GO" line arrives on stdin (with --exit-on-stdin-eof): lets a parent process
# (or a Rust test) tell a peer that it may start sending.
GO = threading.Event()
STDIN_LINES = queue.Queue()

log = logging.getLogger("ferry_peer")

# Names shared by the peer scripts and the Rust tests.
ECHO_TOPIC = "echo"
NOTIFY_TOPIC = "notify"
PLAIN_CHANNEL = "task"  # in NVFlare's CHANNELS_TO_EXCLUDE: plain CoreCell request/reply
STREAM_CHANNEL = "ferry_stream"  # not excluded: Cell streams requests and replies (sm__* protocol)
REPLY_HEADER = "x-ferry-reply"  # app header every echo reply carries (value = replying cell's FQCN)
REQUEST_HEADER = "x-ferry-req"  # app header a request may carry; echoed back as x-ferry-echo
ECHO_HEADER = "x-ferry-echo"


def emit(kind: str, obj) -> None:
    """Write one protocol line (`READY`/`RESULT`) to the real stdout, flushed."""
    line = f"{kind} {json.dumps(obj, sort_keys=True)}\n"
    with _OUT_LOCK:
        _PROTOCOL_OUT.write(line)
        _PROTOCOL_OUT.flush()


def ready(obj) -> None:
    emit("READY", obj)


def result(obj) -> None:
    emit("RESULT", obj)


def finish(code: int = 0) -> None:
    """Flush and leave the process at once (NVFlare keeps non-daemon threads alive)."""
    try:
        logging.shutdown()
    except Exception:
        pass
    with _OUT_LOCK:
        _PROTOCOL_OUT.flush()
    sys.stderr.flush()
    os._exit(code)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=120.0, help="overall deadline in seconds (default 120)")
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin is closed (the Rust PyPeer passes this so orphans cannot survive)",
    )
    p.add_argument("--log-level", default="INFO", help="python logging level for stderr (default INFO)")


def add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", help="PEM root CA; with --tls-cert/--tls-key turns on mutual TLS (scheme stcp)")
    p.add_argument("--tls-cert", help="PEM certificate of this cell (CN = FQCN root)")
    p.add_argument("--tls-key", help="PEM private key of this cell")


def start_common(args, name: str, read_stdin: bool = False) -> None:
    """Logging to stderr, the overall watchdog and the stdin watcher.

    The stdin watcher runs with --exit-on-stdin-eof or read_stdin: a "GO" line sets `GO`,
    other non-empty lines are queued in `STDIN_LINES`, EOF ends the process (with the flag).
    """
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )

    def watchdog():
        time.sleep(args.timeout)
        log.error("overall deadline of %ss reached; exiting", args.timeout)
        result({"error": "timeout", "script": name})
        finish(3)

    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()

    if args.exit_on_stdin_eof or read_stdin:

        def stdin_watch():
            try:
                for line in sys.stdin:
                    line = line.strip()
                    if line == "GO":
                        GO.set()
                    elif line:
                        STDIN_LINES.put(line)
            except Exception:
                pass
            if args.exit_on_stdin_eof:
                log.info("stdin closed; exiting")
                finish(4)

        threading.Thread(target=stdin_watch, name="stdin-watch", daemon=True).start()


def next_stdin_json(timeout: float) -> dict:
    """The next JSON object line from stdin (needs start_common(..., read_stdin=True))."""
    line = STDIN_LINES.get(timeout=timeout)
    return json.loads(line)


def credentials(args, listener: bool) -> dict:
    """NVFlare credential dict for the TLS arguments (empty dict = clear TCP).

    A listener presents its certificate as server_cert/server_key, a connector as
    client_cert/client_key; the CA verifies the peer. The default connection_security is
    mTLS: a listener requires a client certificate, and under mTLS the HELLO's FQCN root must
    equal the peer certificate's CN.
    """
    if not args.tls_ca:
        return {}
    if not (args.tls_cert and args.tls_key):
        raise SystemExit("--tls-ca needs --tls-cert and --tls-key")
    creds = {"ca_cert": os.path.abspath(args.tls_ca)}
    if listener:
        creds["server_cert"] = os.path.abspath(args.tls_cert)
        creds["server_key"] = os.path.abspath(args.tls_key)
    else:
        creds["client_cert"] = os.path.abspath(args.tls_cert)
        creds["client_key"] = os.path.abspath(args.tls_key)
    return creds


def make_cell(fqcn: str, root_url: str = None, creds: dict = None, parent_url: str = None, internal_listener=False):
    """Create (not start) an NVFlare `Cell` (the StreamCell-wrapping class applications use)."""
    from nvflare.fuel.f3.cellnet.cell import Cell

    creds = creds or {}
    return Cell(
        fqcn=fqcn,
        root_url=root_url,
        secure=bool(creds),
        credentials=creds,
        create_internal_listener=internal_listener,
        parent_url=parent_url,
    )


def connected_peers(cell) -> list:
    """FQCNs this cell has a direct connection (agent) to."""
    core = getattr(cell, "core_cell", cell)
    with core.agent_lock:
        return sorted(core.agents.keys())


def wait_for_peer(cell, fqcn: str = None, deadline: float = None) -> str:
    """Wait until `fqcn` is directly connected (or, with fqcn=None, until any peer is).

    Returns the FQCN that was found.
    """
    while deadline is None or time.time() < deadline:
        peers = connected_peers(cell)
        if fqcn is None and peers:
            return peers[0]
        if fqcn is not None and fqcn in peers:
            return fqcn
        time.sleep(0.05)
    raise RuntimeError(f"peer {fqcn or '<any>'} did not connect in time (connected: {connected_peers(cell)})")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def describe(obj):
    """JSON-able view of a decoded FOBS payload: bytes become {"bytes_len", "sha256"}."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        return {"bytes_len": len(b), "sha256": sha256(b)}
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return {"python_type": type(obj).__name__, "repr": repr(obj)[:200]}


def app_headers(msg) -> dict:
    """The message's application headers (everything that is not cn__*/sm__*)."""
    out = {}
    for k, v in msg.headers.items():
        if isinstance(k, str) and not k.startswith(("cn__", "sm__")):
            out[k] = describe(v)
    return out


def pattern_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic test bytes: byte i = (i * 31 + seed) % 251 (also easy to build in Rust)."""
    if n <= 0:
        return b""
    period = bytes(((i * 31 + seed) % 251) for i in range(251))
    reps, rest = divmod(n, 251)
    # the pattern repeats every 251 bytes because (i + 251) * 31 = i * 31 (mod 251)
    return period * reps + period[:rest]


def register_echo_handlers(cell, fqcn: str, channels=(PLAIN_CHANNEL, STREAM_CHANNEL)) -> None:
    """Echo handler on (channel, "echo") and a recording handler on (channel, "notify").

    echo: replies rc ok with the request payload, plus markers ({"_echo_by", "_echo_origin",
    "_echo_channel", "_echo_topic"} merged into a dict payload, or {"echo": payload, ...} for
    any other payload), header x-ferry-reply = own FQCN and, if the request carried
    x-ferry-req, header x-ferry-echo with the same value. Every echo also prints a RESULT
    line {"event": "echo", ...}.

    notify: prints RESULT {"event": "notify", ...} and sends no reply (fire-and-forget).
    """
    from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey, ReturnCode
    from nvflare.fuel.f3.message import Message

    def echo(request):
        payload = request.payload
        origin = request.get_header(MessageHeaderKey.ORIGIN)
        channel = request.get_header(MessageHeaderKey.CHANNEL)
        topic = request.get_header(MessageHeaderKey.TOPIC)
        markers = {"_echo_by": fqcn, "_echo_origin": origin, "_echo_channel": channel, "_echo_topic": topic}
        if isinstance(payload, dict):
            body = dict(payload)
            body.update(markers)
        else:
            body = {"echo": payload}
            body.update(markers)
        result(
            {
                "event": "echo",
                "cell": fqcn,
                "origin": origin,
                "channel": channel,
                "topic": topic,
                "headers": app_headers(request),
                "payload": describe(payload),
            }
        )
        headers = {MessageHeaderKey.RETURN_CODE: ReturnCode.OK, REPLY_HEADER: fqcn}
        req_hdr = request.get_header(REQUEST_HEADER)
        if req_hdr is not None:
            headers[ECHO_HEADER] = req_hdr
        return Message(headers, body)

    def notify(request):
        result(
            {
                "event": "notify",
                "cell": fqcn,
                "origin": request.get_header(MessageHeaderKey.ORIGIN),
                "channel": request.get_header(MessageHeaderKey.CHANNEL),
                "topic": request.get_header(MessageHeaderKey.TOPIC),
                "headers": app_headers(request),
                "payload": describe(request.payload),
            }
        )
        return None

    for ch in channels:
        cell.register_request_cb(channel=ch, topic=ECHO_TOPIC, cb=echo)
        cell.register_request_cb(channel=ch, topic=NOTIFY_TOPIC, cb=notify)


def add_request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--request-count", type=int, default=1, help="requests per kind (default 1)")
    p.add_argument("--big-bytes", type=int, default=0, help="add a bytes field of this size to each request payload")
    p.add_argument(
        "--kinds",
        default="plain,stream",
        help="comma list of request kinds: plain (CoreCell on --plain-channel), stream (Cell on --stream-channel),"
        " notify (fire-and-forget on the stream channel). Default plain,stream",
    )
    p.add_argument("--plain-channel", default=PLAIN_CHANNEL)
    p.add_argument("--stream-channel", default=STREAM_CHANNEL)
    p.add_argument("--topic", default=ECHO_TOPIC)
    p.add_argument("--request-timeout", type=float, default=30.0, help="per-request timeout in seconds")


def run_requests(cell, fqcn: str, target: str, args) -> bool:
    """Send the requests asked for by `add_request_args` to `target`; one RESULT per reply.

    RESULT shape: {"event": "reply", "kind", "seq", "target", "channel", "topic", "rc", "error",
    "headers": app headers, "payload": describe(reply payload), "sent": describe(request payload)}.
    Returns True when every reply had rc "ok".
    """
    from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey, ReturnCode
    from nvflare.fuel.f3.message import Message

    all_ok = True
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for seq in range(args.request_count):
        for kind in kinds:
            body = {"seq": seq, "kind": kind, "from": fqcn, "text": f"hello {target} from {fqcn}", "nums": [1, 2, 3]}
            body["small"] = pattern_bytes(64, seed=seq)
            if args.big_bytes:
                body["big"] = pattern_bytes(args.big_bytes, seed=seq)
            sent = describe(body)
            headers = {REQUEST_HEADER: f"{kind}-{seq}"}
            if kind == "plain":
                channel = args.plain_channel
            elif kind in ("stream", "notify"):
                channel = args.stream_channel
            else:
                raise SystemExit(f"unknown request kind {kind!r}")
            topic = NOTIFY_TOPIC if kind == "notify" else args.topic
            request = Message(headers, body)
            if kind == "notify":
                cell.fire_and_forget(channel=channel, topic=topic, targets=[target], message=request)
                result({"event": "sent", "cell": fqcn, "kind": kind, "seq": seq, "target": target, "channel": channel, "topic": topic})
                continue
            log.info("sending %s request %s to %s on %s/%s", kind, seq, target, channel, topic)
            reply = cell.send_request(
                channel=channel, topic=topic, target=target, request=request, timeout=args.request_timeout
            )
            rc = reply.get_header(MessageHeaderKey.RETURN_CODE) if reply is not None else None
            # NVFlare's Adapter does not add "ok" to streamed replies that lack a return code.
            ok = rc in (ReturnCode.OK, None) and reply is not None
            all_ok = all_ok and ok
            result(
                {
                    "event": "reply",
                    "cell": fqcn,
                    "kind": kind,
                    "seq": seq,
                    "target": target,
                    "channel": channel,
                    "topic": topic,
                    "rc": rc,
                    "error": reply.get_header(MessageHeaderKey.ERROR) if reply is not None else "no reply",
                    "headers": app_headers(reply) if reply is not None else {},
                    "payload": describe(reply.payload) if reply is not None else None,
                    "sent": sent,
                }
            )
    return all_ok


def add_endpoint_args(p: argparse.ArgumentParser, default_listen_fqcn: str, default_connect_fqcn: str) -> None:
    """--listen (be a server root cell on HOST:PORT) or --connect URL (be a client root cell)."""
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", action="store_true", help="listen on --host/--port as a server root cell")
    mode.add_argument("--connect", metavar="URL", help="connect to URL (tcp:// or stcp://) as a client root cell")
    p.add_argument("--fqcn", help=f"cell FQCN (default {default_listen_fqcn} with --listen, else {default_connect_fqcn})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="listen port; 0 = pick a free one (reported in READY)")
    p.add_argument("--peer", help="with --connect: FQCN of the listening cell (default: whoever answers)")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.set_defaults(_fqcn_defaults=(default_listen_fqcn, default_connect_fqcn))
    add_tls_args(p)


def bring_up(args, deadline: float, before_start=None):
    """Create and start the cell described by add_endpoint_args; returns (cell, fqcn, info).

    `before_start(cell, fqcn)` may register handlers. info = {"fqcn", "url", "port", "tls",
    "mode", "peer"} where "peer" is the connected listener (connect mode) or None.
    """
    listen_default, connect_default = args._fqcn_defaults
    fqcn = args.fqcn or (listen_default if args.listen else connect_default)
    creds = credentials(args, listener=bool(args.listen))
    info = {"fqcn": fqcn, "tls": bool(creds), "mode": "listen" if args.listen else "connect", "peer": None}
    if args.listen:
        port = args.port or free_port(args.host)
        url = f"{'stcp' if creds else 'tcp'}://{args.host}:{port}"
        cell = make_cell(fqcn, root_url=url, creds=creds)
        info.update(url=url, port=port)
    else:
        url = args.connect
        if creds and url.startswith("tcp://"):
            url = "stcp://" + url[len("tcp://") :]
        cell = make_cell(fqcn, root_url=url, creds=creds)
        info.update(url=url, port=None)
    if before_start:
        before_start(cell, fqcn)
    cell.start()
    if args.listen:
        wait_port_listening(args.host, info["port"], deadline)
    else:
        info["peer"] = wait_for_peer(cell, args.peer, min(deadline, time.time() + args.connect_timeout))
    return cell, fqcn, info


# Deterministic numpy test arrays: (name suffix, dtype, shape) per slot; sizes scale with --array-scale.
_ARRAY_SPECS = [
    ("weight", "float32", (64, 32)),
    ("bias", "float64", (17,)),
    ("index", "int32", (3, 5, 7)),
    ("count", "int64", (100,)),
    ("mask", "uint8", (1000,)),
    ("half", "float16", (8, 8)),
]


def make_arrays(seed: int, count: int, scale: int = 1) -> dict:
    """`count` arrays named layer<i>.<kind>, values from numpy's default_rng(seed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        kind, dtype, shape = _ARRAY_SPECS[i % len(_ARRAY_SPECS)]
        shape = (shape[0] * max(1, scale),) + tuple(shape[1:])
        if np.dtype(dtype).kind == "f":
            a = rng.standard_normal(size=shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            a = rng.integers(max(info.min, -(2**31)), min(info.max, 2**31 - 1), size=shape, dtype=dtype)
        out[f"layer{i}.{kind}"] = a
    return out


def array_checksums(arrays: dict) -> dict:
    """{name: {"dtype": numpy dtype str e.g. "<f4", "shape": [...], "sha256": of the C-order bytes}}."""
    import numpy as np

    out = {}
    for name, a in arrays.items():
        # asarray keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
        c = np.asarray(a, order="C")
        out[name] = {"dtype": c.dtype.str, "shape": list(c.shape), "sha256": sha256(c.tobytes())}
    return out


def tensor_item_classes():
    """Torch-free stand-ins for NVFlare's TensorDownloadable / TensorConsumer.

    torch is not in the interop venv, so app_opt/pt/tensor_downloader.py cannot be imported.
    These classes use the same building blocks (CacheableObject / ItemConsumer) and the same
    item format — one safetensors blob per tensor holding a one-key dict, size estimate =
    raw byte count — with safetensors.numpy instead of safetensors.torch (the file format is
    the same library's). Returns (SafetensorsDownloadable, SafetensorsConsumer).
    """
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    from nvflare.fuel.f3.streaming.cacheable import CacheableObject, ItemConsumer

    class SafetensorsDownloadable(CacheableObject):
        def __init__(self, arrays: dict, max_chunk_size: int):
            self.keys = list(arrays.keys())
            super().__init__(arrays, max_chunk_size)

        def get_item_count(self) -> int:
            return len(self.keys)

        def produce_item(self, index: int) -> bytes:
            key = self.keys[index]
            return st_save({key: self.base_obj[key]})

        def get_item_size(self, index: int):
            return int(self.base_obj[self.keys[index]].nbytes)

    class SafetensorsConsumer(ItemConsumer):
        def consume_items(self, items, result):
            if not isinstance(items, list):
                raise TypeError(f"items must be list but got {type(items)}")
            result = {} if result is None else result
            for item in items:
                result.update(st_load(bytes(item)))
            return result

    return SafetensorsDownloadable, SafetensorsConsumer
