#!/usr/bin/env python3
"""`cargo xtask bench python`: a 512 MiB dict of 4 MiB float32 arrays to 4 receiver processes.

Rows, all measured in one run, every sender and receiver its own process on loopback:

  ferry, Python sender -> Python receivers   roles.py (ferry.Sender.add_tensors / ferry.download_tensors)
  ferry, Rust sender -> Python receivers     bench_download's ferry-sender -> roles.py receive
  ferry, Rust sender -> Rust receivers       bench_download's ferry-sender / ferry-receiver --mode memory
  (rust-pin) the same receivers, verifying   ferry-receiver --mode memory-pinned: each item hashed (BLAKE3) and
                                             the dict held to the ticket's pin, the work download_tensors does
  NVFlare 2.9                                bench_py/nv_sender.py --kind arrays / nv_receiver.py --mode arrays
  plain TCP                                  bench_download's tcp-sender / tcp-receiver --mode memory: the same
                                             bytes blasted into one buffer per receiver, no framing, no
                                             verification while receiving (the machine's limit)

Every child speaks bench_download's line protocol (READY, GO, DONE, RESULT). Aggregate
throughput = size x receivers / (last DONE - GO). Peak RSS is the kernel's ru_maxrss from
wait4(2) when this orchestrator reaps each child (this process stays small and imports no numpy,
because a child's figure starts at its parent's high-water mark). Every receiver's bytes are
verified after DONE (sha256 or BLAKE3 against the sender's own digest). Each row is measured
--repeat times, the rows interleaved round by round so that a change in the machine's load hits
every row alike, and the fastest run of each row kept.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import platform
import queue
import subprocess
import sys
import threading
import time

MIB = 1 << 20
HERE = pathlib.Path(__file__).resolve().parent


class Proc:
    def __init__(self, name, args, log_dir, lines, env=None):
        self.name = name
        self.log = open(log_dir / f"{name}.log", "w")
        self.p = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.ready = self.done = self.result = None
        self.usage = None
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()

    def _read(self, lines):
        for line in self.p.stdout:
            lines.put((self, time.monotonic(), line.rstrip("\n")))
        lines.put((self, time.monotonic(), None))

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def reap(self, grace):
        """Close stdin, wait up to `grace` s, kill if needed; wait4 gives the peak RSS."""
        try:
            self.p.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while True:
            pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.p.kill()
                pid, status, ru = os.wait4(self.p.pid, 0)
                break
            time.sleep(0.01)
        self.usage = ru
        self.p.returncode = status
        self.log.close()


class Group:
    def __init__(self, log_dir, env=None):
        self.log_dir = log_dir
        self.env = env
        log_dir.mkdir(parents=True, exist_ok=True)
        self.lines = queue.Queue()
        self.procs = []

    def spawn(self, name, args):
        p = Proc(name, args, self.log_dir, self.lines, self.env)
        self.procs.append(p)
        return p

    def pump(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"deadline reached waiting for {[p.name for p in self.procs if p.result is None]}")
        try:
            p, at, line = self.lines.get(timeout=left)
        except queue.Empty:
            return
        if line is None:
            if p.result is None:
                raise RuntimeError(f"{p.name} ended without RESULT; see {self.log_dir / (p.name + '.log')}")
            return
        kind, _, rest = line.partition(" ")
        if kind not in ("READY", "DONE", "RESULT"):
            return
        obj = json.loads(rest or "{}")
        if kind == "READY":
            p.ready = obj
        elif kind == "DONE":
            p.done = (at, obj)
        else:
            if obj.get("error"):
                raise RuntimeError(f"{p.name} failed: {obj['error']}; see {self.log_dir / (p.name + '.log')}")
            p.result = obj

    def wait(self, deadline, cond):
        while not cond():
            self.pump(deadline)

    def finish(self):
        for p in self.procs:
            if p.usage is None:
                p.reap(20.0)


def file_digests(path, size):
    sha, left = hashlib.sha256(), size
    with open(path, "rb") as f:
        while left > 0:
            b = f.read(min(MIB, left))
            sha.update(b)
            left -= len(b)
    return sha.hexdigest()


def make_source(path, size):
    if path.exists() and path.stat().st_size == size:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            n = min(MIB, left)
            f.write(os.urandom(n))
            left -= n
    tmp.rename(path)


def run_once(ctx, row, n):
    size = ctx.size
    # "SYSTEM@VARIANT": the row of SYSTEM with the variant's environment in every child.
    system, _, variant = row.partition("@")
    env = None
    if variant:
        env = dict(os.environ)
        env.update(ctx.variants[variant])
    work = ctx.work / f"{system}-{variant or 'main'}-{n}-{time.monotonic_ns()}"
    g = Group(work / "logs", env)
    deadline = time.monotonic() + 60 + size * n / (25 * MIB)
    py, rust, nv = ctx.python, ctx.rust_bin, ctx.nv_dir
    timeout = str(int(deadline - time.monotonic() + 60))
    sender_kind = {"py-py": "py", "rust-py": "rust", "rust-rust": "rust", "rust-pin": "rust", "nvflare": "nv",
                   "tcp": "tcp"}[system]
    recv_kind = {"py-py": "py", "rust-py": "py", "rust-rust": "rust", "rust-pin": "rust", "nvflare": "nv",
                 "tcp": "tcp"}[system]
    rust_mode = "memory-pinned" if system == "rust-pin" else "memory"
    try:
        if sender_kind == "py":
            s = g.spawn("sender", [py, str(HERE / "roles.py"), "send", "--file", str(ctx.source), "--len", str(size), "--receivers", str(n)])
        elif sender_kind == "tcp":
            s = g.spawn(
                "sender",
                [str(rust), "tcp-sender", "--kind", "tensors", "--file", str(ctx.source), "--len", str(size),
                 "--receivers", str(n), "--timeout", timeout],
            )
        elif sender_kind == "rust":
            s = g.spawn(
                "sender",
                [str(rust), "ferry-sender", "--kind", "tensors", "--file", str(ctx.source), "--len", str(size),
                 "--receivers", str(n), "--timeout", timeout],
            )
        else:
            s = g.spawn(
                "sender",
                [py, str(nv / "nv_sender.py"), "--kind", "arrays", "--total-bytes", str(size), "--array-bytes",
                 str(4 * MIB), "--num-receivers", str(n), "--timeout", timeout],
            )
        g.wait(deadline, lambda: s.ready is not None)
        url, fqcn, refs = s.ready["url"], s.ready.get("fqcn", "server"), s.ready.get("refs", [])
        host = url.split("://", 1)[1]
        ticket = s.ready.get("ticket")
        if ticket is None and s.ready.get("pin"):
            # A ticket for the Rust sender, pinned as it reported (tensor data size and digest).
            pin = s.ready["pin"]
            ticket = f"ferry+tcp://{host}/{fqcn}/{refs[0]}?kind=tensors&name=bench.safetensors&size={pin['size']}&b3={pin['b3']}"
        recv = []
        for i in range(n):
            name = f"site-{i + 1}"
            if recv_kind == "py":
                args = [py, str(HERE / "roles.py"), "receive", "--fqcn", name]
            elif recv_kind == "rust":
                args = [str(rust), "ferry-receiver", "--url", url, "--fqcn", name, "--mode", rust_mode, "--timeout", timeout]
            elif recv_kind == "tcp":
                args = [str(rust), "tcp-receiver", "--url", url, "--fqcn", name, "--mode", "memory", "--len", str(size),
                        "--timeout", timeout]
            else:
                args = [py, str(nv / "nv_receiver.py"), "--url", url, "--fqcn", name, "--mode", "arrays", "--timeout", timeout]
            recv.append(g.spawn(name, args))
        g.wait(deadline, lambda: all(r.ready is not None for r in recv))
        go = "GO " + json.dumps({"source": fqcn, "refs": refs, "ticket": ticket})
        t0 = time.monotonic()
        for r in recv:
            r.send(go)
        g.wait(deadline, lambda: all(p.result is not None for p in g.procs))
        end = max(r.done[0] for r in recv)
        g.finish()
    finally:
        for p in g.procs:
            if p.usage is None:
                try:
                    p.p.kill()
                except OSError:
                    pass
                p.reap(5.0)
    # Verify every receiver's bytes against the sender's own digest.
    for r in recv:
        res = r.result
        if res.get("bytes") != size:
            raise RuntimeError(f"{system}: {r.name} got {res.get('bytes')} bytes, expected {size}")
        if recv_kind in ("rust", "tcp"):
            want, got = s.ready.get("blake3"), res.get("blake3")
        elif sender_kind == "nv":
            want, got = s.ready.get("sha256"), res.get("sha256")
        else:
            want, got = ctx.sha256, res.get("sha256")
        if not want or want != got:
            raise RuntimeError(f"{system}: {r.name} received other bytes ({got} != {want})")
    wall = max(end - t0, 1e-9)
    return {
        "system": row,
        "receivers": n,
        "size": size,
        "wall_s": wall,
        "mib_s": size * n / MIB / wall,
        "sender_rss_kib": s.usage.ru_maxrss,
        "receiver_rss_kib": max(r.usage.ru_maxrss for r in recv),
        "cpu_transfer_s": s.result.get("cpu_s", 0.0) + sum(r.result.get("cpu_s", 0.0) for r in recv),
        "sender_cpu_s": s.result.get("cpu_s", 0.0),
        "receiver_cpu_s": [r.result.get("cpu_s", 0.0) for r in recv],
    }


LABELS = {
    "py-py": "**ferry**, Python sender → Python receivers (`download_tensors`)",
    "rust-py": "**ferry**, Rust sender → Python receivers (`download_tensors`)",
    "rust-rust": "ferry, Rust sender → Rust receivers",
    "rust-pin": "ferry, Rust sender → Rust receivers verifying the ticket's pin, as `download_tensors` does",
    "nvflare": "NVFlare 2.9 numpy downloader (`add_arrays` / `download_arrays`)",
    "tcp": "plain TCP blast into memory (no framing, no verification while receiving)",
}


def report(ctx, runs, secs):
    by = {r["system"]: r for r in runs}
    nv, rr, tcp = by.get("nvflare"), by.get("rust-rust"), by.get("tcp")
    dict_mib = ctx.size / MIB
    lines = [
        f"`{ctx.command}` — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}. Release build (wheel built by "
        f"maturin, `--release`), loopback, every sender and receiver its own process; "
        f"{ctx.size // MIB} MiB dict of {ctx.size // (4 * MIB)} float32 arrays of 4 MiB to {ctx.receivers} receivers; "
        f"best of {ctx.repeat}, rows interleaved; the whole run took {secs:.0f} s; load average "
        f"{ctx.load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| system | aggregate MiB/s | × NVFlare | × Rust receivers | × plain TCP | sender peak RSS MiB | receiver peak RSS MiB (max) | CPU s/GiB (transfer) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = ("py-py", "rust-py", "rust-rust", "rust-pin", "nvflare", "tcp")
    for key in sorted(by, key=lambda k: (order.index(k.partition("@")[0]), k)):
        r = by[key]
        base, _, variant = key.partition("@")
        label = LABELS[base] + (f" [variant {variant}: {ctx.variant_text[variant]}]" if variant else "")
        gib = r["size"] * r["receivers"] / (1 << 30)
        x_nv = f"{r['mib_s'] / nv['mib_s']:.2f}×" if nv else "—"
        x_rr = f"{r['mib_s'] / rr['mib_s']:.2f}×" if rr else "—"
        x_tcp = f"{r['mib_s'] / tcp['mib_s']:.2f}×" if tcp else "—"
        lines.append(
            f"| {label} | {r['mib_s']:.0f} | {x_nv} | {x_rr} | {x_tcp} | {r['sender_rss_kib'] / 1024:.0f} | "
            f"{r['receiver_rss_kib'] / 1024:.0f} | {r['cpu_transfer_s'] / gib:.2f} |"
        )
    lines += ["", "Targets (from this run):", ""]

    def verdict(ok):
        return "met" if ok else "**missed**"

    def cpu_gib(r):
        return r["cpu_transfer_s"] / (r["size"] * r["receivers"] / (1 << 30))

    def by_cpu(r, base):
        # On a CPU-bound machine (every process shares the cores) CPU per GiB decides the
        # throughput, and it moves far less with the other load than MiB/s does.
        return f"; by CPU per GiB ({cpu_gib(base):.2f} / {cpu_gib(r):.2f} s): {cpu_gib(base) / cpu_gib(r):.2f}×"

    py = by.get("py-py")
    rp = by.get("rust-py")
    if py and nv:
        x = py["mib_s"] / nv["mib_s"]
        limit = ""
        if tcp:
            limit = (f" (the plain-TCP blast, this machine's limit, measures {tcp['mib_s'] / nv['mib_s']:.2f}× NVFlare "
                     f"in the same run; the Python receivers reach {py['mib_s'] / tcp['mib_s']:.2f}× of it)")
        lines.append(
            f"- Python receivers ≥ 5× NVFlare's numpy downloader: {x:.2f}×{limit}{by_cpu(py, nv)} — {verdict(x >= 5)}"
        )
    # The target compares like with like: `download_tensors` verifies the ticket's pin, so its
    # yardstick is Rust receivers verifying the same pin (`rust-pin`). Receivers that verify
    # nothing (`rust-rust`, NVFlare's way) are shown beside it, not a target: the gap to them is
    # the BLAKE3 pass, which a ticket receiver never skips.
    rpin = by.get("rust-pin")
    for base, base_what, is_target in ((rpin, "verifying the same pin", True), (rr, "verifying nothing", False)):
        if not base:
            continue
        for key, what in (("rust-py", "same Rust sender"), ("py-py", "Python sender as well")):
            r = by.get(key)
            if r:
                x = r["mib_s"] / base["mib_s"]
                head = "- Python receivers ≥ 0.9× the Rust receivers" if is_target else "- (not a target) Python receivers against Rust receivers"
                tail = f" — {verdict(x >= 0.9)}" if is_target else ""
                lines.append(f"{head} {base_what} ({what}): {x:.2f}×{by_cpu(r, base)}{tail}")
    for key, what in (("py-py", "from the Python sender"), ("rust-py", "from the Rust sender")):
        r = by.get(key)
        if r:
            mib = r["receiver_rss_kib"] / 1024
            lines.append(
                f"- Python receiver peak RSS ≤ dict + 48 MiB = {dict_mib + 48:.0f} MiB ({what}): "
                f"{mib:.0f} MiB — {verdict(mib <= dict_mib + 48)}"
            )
    if py:
        mib = py["sender_rss_kib"] / 1024
        lines.append(f"- Python sender peak RSS ≤ dict + 64 MiB = {dict_mib + 64:.0f} MiB: {mib:.0f} MiB — {verdict(mib <= dict_mib + 64)}")
    lines += [
        "",
        "Aggregate = size × receivers / (last receiver done − start signal). Peak RSS is `ru_maxrss` from `wait4` "
        "when the orchestrator (a small Python process that imports no numpy) reaps each child; it includes the "
        "interpreter and numpy (about 30 MiB for the Python processes). CPU (transfer) sums the `getrusage` time each "
        "process spent in the transfer (receivers from the start signal to done, senders from `add_tensors` to the "
        "outcome) per GiB delivered. Python receivers get numpy arrays that are views of ferry's receive buffers; "
        "the Python sender serves the arrays' own memory. Every receiver's bytes are hashed after it reported done "
        "and compared with the sender's digest.",
    ]
    return "\n".join(lines) + "\n"


def write_docs(path, body):
    text = path.read_text()
    begin, end = "<!-- bench:python:begin -->", "<!-- bench:python:end -->"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n## Python bindings\n\n" + block + "\n"
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rust-bin", required=True, help="bench_download binary (release)")
    p.add_argument("--nv-dir", required=True, help="directory of nv_sender.py / nv_receiver.py")
    p.add_argument("--work", required=True, help="scratch directory (source file, logs)")
    p.add_argument("--tensor-mib", type=int, default=512)
    p.add_argument("--receivers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--only",
        default="py-py,rust-py,rust-rust,rust-pin,nvflare,tcp",
        help="rows, in the order run each round; SYSTEM@VARIANT runs SYSTEM with a --variant's environment",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE...]",
        help="environment for the rows named SYSTEM@NAME, e.g. base:PYTHONPATH=/tmp/old (another build of the "
        "wheel, installed with pip install --target /tmp/old) to alternate old and new code in one run",
    )
    p.add_argument("--write-docs", help="docs/benchmarks.md to update between the bench:python markers")
    p.add_argument("--json", help="write the raw measurements here")
    p.add_argument("--command", default="cargo xtask bench python")
    a = p.parse_args()
    ctx = argparse.Namespace(
        python=sys.executable,
        rust_bin=pathlib.Path(a.rust_bin),
        nv_dir=pathlib.Path(a.nv_dir),
        work=pathlib.Path(a.work),
        size=a.tensor_mib * MIB,
        receivers=a.receivers,
        repeat=a.repeat,
        command=a.command,
        variants={},
        variant_text={},
    )
    for v in a.variant:
        vname, _, assigns = v.partition(":")
        pairs = [x.split("=", 1) for x in assigns.split(",") if x]
        if not vname or not pairs or any(len(x) != 2 for x in pairs):
            p.error(f"--variant {v!r}: expected NAME:VAR=VALUE[,VAR=VALUE...]")
        ctx.variants[vname] = dict(pairs)
        ctx.variant_text[vname] = ", ".join(f"{k}={val}" for k, val in pairs)
    systems = a.only.split(",")
    for row in systems:
        base, _, variant = row.partition("@")
        if base not in LABELS or (variant and variant not in ctx.variants):
            p.error(f"--only: unknown row {row!r} (systems: {', '.join(LABELS)}; variants: {', '.join(ctx.variants) or 'none'})")
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.source = ctx.work / "source.bin"
    started = time.monotonic()
    ctx.load_start = os.getloadavg()[0]
    make_source(ctx.source, ctx.size)
    ctx.sha256 = file_digests(ctx.source, ctx.size)
    best = {}
    for _ in range(a.repeat):
        for system in systems:
            subprocess.run(["sync"], check=False)
            r = run_once(ctx, system, a.receivers)
            print(f"{system:<16} {r['mib_s']:8.0f} MiB/s  sender {r['sender_rss_kib'] / 1024:5.0f} MiB  "
                  f"receiver {r['receiver_rss_kib'] / 1024:5.0f} MiB  CPU s: sender {r['sender_cpu_s']:.2f}, receivers "
                  f"{' '.join(f'{c:.2f}' for c in r['receiver_cpu_s'])}", file=sys.stderr, flush=True)
            if system not in best or r["mib_s"] > best[system]["mib_s"]:
                best[system] = r
    runs = [best[s] for s in systems]
    body = report(ctx, runs, time.monotonic() - started)
    print(body)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(runs, indent=2))
    if a.write_docs:
        write_docs(pathlib.Path(a.write_docs), body)


if __name__ == "__main__":
    main()
