#!/usr/bin/env python3
"""Record real F3 traffic between NVFlare 2.9 Python cells and ferry, and turn it into the fuzz
seed corpus (fuzz/seeds/TARGET/).

Every scenario puts a recording TCP proxy in front of a listening cell and lets a real peer
connect through it:

  nv-cells      nv_client_cell.py -> nv_server_cell.py     plain, streamed and fire-and-forget
                                                           requests, one with a 10 MiB datum
  py-to-ferry   nv_download_receiver.py -> ferry-peer send  file (streamed requests) and tensors
  ferry-to-py   ferry-peer receive -> nv_download_sender.py file and tensors
  py-to-py      nv_download_receiver.py -> nv_download_sender.py  file, numpy arrays, tensors
  set           ferry get -> ferry serve DIR                 a set manifest (the manifest target)

Each connection's bytes are split into frames, and each target gets the parts it decodes
(fuzz/capture/seeds.py). Run from the repository root after `cargo xtask test-matrix --case
interop-setup` and `cargo build -p ferry-tests --bin ferry-peer -p ferry-cli`:

    target/interop-venv/bin/python fuzz/capture/capture.py [--raw DIR]

`--ferry-only` regenerates only the seeds of what ferry itself writes (tickets in both forms,
set manifests recorded from `ferry serve` -> `ferry get`, resume records): it needs the ferry
binary and a Python with safetensors, not NVFlare.
"""

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = os.path.join(ROOT, "tests", "py")
sys.path.insert(0, HERE)
import seeds  # noqa: E402

FERRY_PEER = os.path.join(ROOT, "target", "debug", "ferry-peer")
FERRY = os.path.join(ROOT, "target", "debug", "ferry")


class Proxy:
    """Accepts on a free port, connects each client to `upstream`, and records both directions."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []  # [(c2s bytearray, s2c bytearray)]
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            rec = (bytearray(), bytearray())
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self.pump, args=(c, u, rec), daemon=True).start()

    @staticmethod
    def pump(c, u, rec):
        peers = {c: (u, rec[0]), u: (c, rec[1])}
        open_ = {c, u}
        while open_:
            r, _, _ = select.select(list(open_), [], [], 0.5)
            for s in r:
                try:
                    data = s.recv(1 << 20)
                except OSError:
                    data = b""
                dst, buf = peers[s]
                if not data:
                    open_.discard(s)
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                buf.extend(data)
                try:
                    dst.sendall(data)
                except OSError:
                    open_.clear()
        c.close()
        u.close()

    def close(self):
        self.sock.close()


LOG = tempfile.TemporaryFile(mode="w+")


def spawn(args, **kw):
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=LOG, text=True, **kw)


def read_line(p, prefix, timeout=120):
    """The JSON of the next stdout line starting with `prefix`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            LOG.seek(0)
            tail = LOG.read()[-3000:]
            raise RuntimeError(f"{p.args[:3]} exited before {prefix}; stderr of the peers:\n{tail}")
        if line.startswith(prefix + " "):
            return json.loads(line[len(prefix) + 1 :])
    raise RuntimeError(f"no {prefix} from {p.args[:3]}")


def wait_event(p, event, timeout=120):
    """Wait for RESULT `event`; every download RESULT before it must have succeeded."""
    while True:
        r = read_line(p, "RESULT", timeout)
        if r.get("error") or r.get("ok") is False or r.get("all_ok") is False:
            raise RuntimeError(f"{p.args[:3]} failed: {r}")
        if r.get("event") == event:
            return r


def stop(*procs):
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def python():
    return os.environ.get("FERRY_INTEROP_PYTHON", os.path.join(ROOT, "target", "interop-venv", "bin", "python"))


def scenario_nv_cells(work):
    server = spawn([python(), os.path.join(PY, "nv_server_cell.py"), "--exit-on-stdin-eof"])
    ready = read_line(server, "READY")
    proxy = Proxy(ready["port"])
    out = []
    for extra in (["--kinds", "plain,stream,notify", "--request-count", "2"],
                  ["--kinds", "stream", "--big-bytes", str(10 * 1024 * 1024)]):
        client = spawn([python(), os.path.join(PY, "nv_client_cell.py"), "--url", f"tcp://127.0.0.1:{proxy.port}",
                        "--exit-on-stdin-eof", *extra])
        wait_event(client, "requests_done")
        stop(client)
    time.sleep(0.5)
    stop(server)
    proxy.close()
    return proxy.conns


def scenario_py_to_ferry(work):
    f = os.path.join(work, "sent.bin")
    with open(f, "wb") as fh:
        fh.write(bytes((i * 31 + 7) % 251 for i in range(40000)))
    sender = spawn([FERRY_PEER, "send", "--listen", "tcp://127.0.0.1:0", "--file", f, "--chunk-size", "16384",
                    "--tensors", "3", "--tensor-bytes", "512", "--exit-on-stdin-eof"])
    ready = read_line(sender, "READY")
    port = int(ready["url"].rsplit(":", 1)[1])
    proxy = Proxy(port)
    os.makedirs(os.path.join(work, "py-out"))
    recv = spawn([python(), os.path.join(PY, "nv_download_receiver.py"), "--connect", f"tcp://127.0.0.1:{proxy.port}",
                  "--source", "server", "--file-ref", ready["file_ref"], "--tensors-ref", ready["tensors_ref"],
                  "--out-dir", os.path.join(work, "py-out"), "--exit-on-stdin-eof"])
    wait_event(recv, "downloads_done")
    stop(recv)
    time.sleep(0.5)
    stop(sender)
    proxy.close()
    return proxy.conns, {"file": ready["file_ref"], "tensors": ready["tensors_ref"]}


def scenario_ferry_to_py(work, receiver_py):
    f = os.path.join(work, "sent2.bin")
    with open(f, "wb") as fh:
        fh.write(bytes((i * 17 + 3) % 251 for i in range(30000)))
    args = [python(), os.path.join(PY, "nv_download_sender.py"), "--listen", "--file", f, "--chunk-size", "8192",
            "--tensors", "3", "--tensor-chunk-size", "600", "--exit-on-stdin-eof"]
    if receiver_py:
        args += ["--arrays", "4", "--array-chunk-size", "1500"]
    sender = spawn(args)
    ready = read_line(sender, "READY")
    proxy = Proxy(ready["port"])
    refs = {"file": ready["file"]["ref_id"], "tensors": ready["tensors"]["ref_id"]}
    if receiver_py:
        refs["arrays"] = ready["arrays"]["ref_id"]
        os.makedirs(os.path.join(work, "py-out2"))
        recv = spawn([python(), os.path.join(PY, "nv_download_receiver.py"), "--connect",
                      f"tcp://127.0.0.1:{proxy.port}", "--source", "server", "--file-ref", refs["file"],
                      "--arrays-ref", refs["arrays"], "--tensors-ref", refs["tensors"],
                      "--out-dir", os.path.join(work, "py-out2"), "--exit-on-stdin-eof"])
        wait_event(recv, "downloads_done")
    else:
        os.makedirs(os.path.join(work, "ferry-out"))
        recv = spawn([FERRY_PEER, "receive", "--url", f"tcp://127.0.0.1:{proxy.port}", "--fqcn", "site-1",
                      "--source", "server", "--file-ref", refs["file"], "--tensors-ref", refs["tensors"],
                      "--out-dir", os.path.join(work, "ferry-out"), "--exit-on-stdin-eof"])
        wait_event(recv, "done")
    stop(recv)
    time.sleep(0.5)
    stop(sender)
    proxy.close()
    return proxy.conns, refs


def serve_json(args, lines=1):
    """Start `ferry serve ARGS --json` and return (process, its first `lines` ticket events)."""
    p = subprocess.Popen([FERRY, "serve", *args, "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=LOG, text=True)
    events = []
    while len(events) < lines:
        line = p.stdout.readline()
        if not line:
            LOG.seek(0)
            raise RuntimeError(f"ferry serve {args} printed no ticket:\n{LOG.read()[-3000:]}")
        ev = json.loads(line)
        if ev.get("event") == "ticket":
            events.append(ev)
    return p, events


def ticket_strings(ev):
    """Both written forms of a ticket event and of the members of a set's event."""
    out = [ev["ticket"], ev["url"]]
    for m in ev.get("objects", []):
        out += [m["ticket"], m["url"]]
    return out


def ferry_tickets(work):
    """Tickets as `ferry serve` prints them, in both forms (compact `ferry1...` and URL): a file,
    a directory as one set and as one ticket per object (names with spaces, non-ASCII), a tensor
    dict, and a set served over mutual TLS (`stcp`)."""
    d = os.path.join(work, "tickets")
    os.makedirs(os.path.join(d, "dir", "sub dir"))
    for rel in ("model weights.bin", os.path.join("dir", "a.bin"), os.path.join("dir", "sub dir", "gewichte-ü.bin")):
        with open(os.path.join(d, rel), "wb") as fh:
            fh.write(b"\x01" * 1000)
    st = os.path.join(d, "m.safetensors")
    subprocess.run([python(), os.path.join(PY, "make_safetensors.py"), "--out", st, "--count", "2"], check=True,
                   stdout=subprocess.DEVNULL)
    pki = os.path.join(work, "pki")
    subprocess.run([FERRY, "certs", "init", "--dir", pki], check=True, stdout=subprocess.DEVNULL, stderr=LOG)
    subprocess.run([FERRY, "certs", "issue", "--dir", pki, "server"], check=True, stdout=subprocess.DEVNULL, stderr=LOG)
    tls = ["--tls-cert", os.path.join(pki, "server.crt"), "--tls-key", os.path.join(pki, "server.key"),
           "--tls-ca", os.path.join(pki, "rootCA.pem"), "--name", "server"]
    local = ["--listen", "tcp://127.0.0.1:0", "--timeout", "5s"]
    tickets = []
    for args, lines in (([os.path.join(d, "model weights.bin")], 1),
                        ([os.path.join(d, "dir")], 1),
                        ([os.path.join(d, "dir"), "--ticket-per-object"], 2),
                        ([st, "--tensors"], 1),
                        ([os.path.join(d, "dir"), os.path.join(d, "model weights.bin"), "--listen",
                          "stcp://127.0.0.1:0", "--timeout", "5s", *tls], 1)):
        extra = [] if "--listen" in args else local
        p, events = serve_json([*args, *extra], lines)
        p.kill()
        p.wait()
        for ev in events:
            tickets += ticket_strings(ev)
    return tickets


def ferry_set_manifests(work):
    """Set manifests as a ferry sender serves them, recorded from the wire: `ferry serve` of a
    directory (and of several paths) with `ferry get` of the set's ticket through the recording
    proxy. Returns the manifest bytes."""
    d = os.path.join(work, "set")
    os.makedirs(os.path.join(d, "ckpt", "sub dir"))
    for rel, n in (("ckpt/shard-0.bin", 3000), ("ckpt/shard-1.bin", 10), ("ckpt/sub dir/état.json", 0)):
        with open(os.path.join(d, rel), "wb") as fh:
            fh.write(bytes(i & 0xFF for i in range(n)))
    os.chmod(os.path.join(d, "ckpt", "shard-1.bin"), 0o600)
    manifests = []
    for paths in ([os.path.join(d, "ckpt")], [os.path.join(d, "ckpt", "shard-0.bin"), os.path.join(d, "ckpt", "sub dir")]):
        sender, (ev,) = serve_json([*paths, "--listen", "tcp://127.0.0.1:0", "--ticket-format", "url"])
        port = int(ev["address"].rsplit(":", 1)[1])
        proxy = Proxy(port)
        url = ev["url"].replace(f":{port}/", f":{proxy.port}/", 1)
        out = os.path.join(work, f"set-out-{len(manifests)}")
        subprocess.run([FERRY, "get", url, "-o", out, "--quiet"], check=True, stdout=subprocess.DEVNULL,
                       stderr=LOG, timeout=120)
        sender.wait(30)
        proxy.close()
        for c2s, s2c in proxy.conns:
            for _, payload, enc, _ in seeds.messages(s2c):
                v = seeds.main_value(payload, enc)
                data = v.get("data") if isinstance(v, dict) else None
                if isinstance(data, (bytes, bytearray)) and b"ferry-set/1" in data:
                    manifests.append(bytes(data))
    if not manifests:
        raise RuntimeError("no set manifest in the recorded traffic")
    return manifests


def part_records(work):
    """Resume records in ferry's format (`NAME.part.ferry`) for the part_record target's content:
    3000 bytes, byte i = (31 i + 5) mod 256, whose size and BLAKE3 `ferry serve` pins in a ticket.
    Returns (record JSON, part bytes) pairs: the start, a prefix, a prefix with garbage beyond
    it (a crash leaves holes), a whole part, and another content's record."""
    content = bytes((i * 31 + 5) & 0xFF for i in range(3000))
    f = os.path.join(work, "part-content.bin")
    with open(f, "wb") as fh:
        fh.write(content)
    p, (ev,) = serve_json([f, "--listen", "tcp://127.0.0.1:0", "--timeout", "5s"])
    p.kill()
    p.wait()
    b3 = ev["blake3"]

    def rec(prefix, size=3000, digest=b3):
        return json.dumps({"blake3": digest, "format": "ferry-part/1", "origin": "ferry-sender/Rfile",
                           "prefix": prefix, "size": size}, separators=(",", ":")).encode()

    return [
        (rec(0), b""),
        (rec(1000), content[:1000]),
        (rec(1000), content[:1000] + b"\x00" * 700),
        (rec(3000), content),
        (rec(2000, size=5000, digest="ab" * 32), content[:2000]),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", help="also keep the raw captures (one file per connection and direction) here")
    ap.add_argument("--out", default=os.path.join(ROOT, "fuzz", "seeds"))
    ap.add_argument("--ferry-only", action="store_true",
                    help="only the seeds of what ferry writes (tickets, set manifests, resume records), "
                         "replacing those targets' seeds; needs no NVFlare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        tickets = ferry_tickets(work)
        manifests = ferry_set_manifests(work)
        parts = part_records(work)
        if args.ferry_only:
            for target in ("ticket", "manifest", "part_record"):
                shutil.rmtree(os.path.join(args.out, target), ignore_errors=True)
            s = seeds.Seeds(args.out)
            seeds.write_ferry(s, tickets, manifests, parts)
            seeds.summary(args.out)
            return
        captures = []  # (scenario, conns, refs)
        captures.append(("nv-cells", scenario_nv_cells(work), {}))
        conns, refs = scenario_py_to_ferry(work)
        captures.append(("py-to-ferry", conns, refs))
        conns, refs = scenario_ferry_to_py(work, receiver_py=False)
        captures.append(("ferry-to-py", conns, refs))
        conns, refs = scenario_ferry_to_py(work, receiver_py=True)
        captures.append(("py-to-py", conns, refs))
        if args.raw:
            os.makedirs(args.raw, exist_ok=True)
            for name, conns, _ in captures:
                for i, (c2s, s2c) in enumerate(conns):
                    for d, b in (("c2s", c2s), ("s2c", s2c)):
                        with open(os.path.join(args.raw, f"{name}-{i}-{d}.bin"), "wb") as fh:
                            fh.write(b)
        seeds.write_all(captures, tickets, manifests, parts, args.out)


if __name__ == "__main__":
    main()
