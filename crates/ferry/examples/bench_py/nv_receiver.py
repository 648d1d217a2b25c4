#!/usr/bin/env python3
"""NVFlare 2.9 receiver for `bench_download`, using NVFlare's own receiver code.

Connects as client root cell --fqcn to --url, prints READY, waits for
`GO {"source": fqcn, "refs": [...]}` on stdin, then:

  --mode hash    download_object with a consumer that hashes each chunk (sha256) and returns
                 {"received_bytes": n} like NVFlare's file consumer (stop-and-wait)
  --mode file    download_file into --out-dir, then fsync (durable, like the other systems)
  --mode arrays  download_arrays (numpy, pipelined) into memory
  --mode small   download_object of every ref in turn (hashing consumer); per-fetch latency

DONE {"bytes"} when the transfer is complete (the orchestrator's clock stops here);
RESULT {"bytes", "sha256", "cpu_s" (GO .. DONE), "maxrss_kib", "latencies_ms"?, "error"?}.
"""

import argparse
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvbench as nb  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--fqcn", required=True)
    p.add_argument("--mode", choices=["hash", "file", "arrays", "small"], required=True)
    p.add_argument("--out-dir")
    p.add_argument("--per-request-timeout", type=float, default=60.0)
    nb.add_common_args(p)
    args = p.parse_args()
    nb.start(args, args.fqcn)
    deadline = time.time() + args.timeout

    from nvflare.app_common.np.np_downloader import download_arrays
    from nvflare.fuel.f3.streaming.download_service import Consumer, download_object
    from nvflare.fuel.f3.streaming.file_downloader import download_file

    class HashConsumer(Consumer):
        """Hashes the bytes instead of writing them; state handling as NVFlare's file consumer."""

        def __init__(self):
            Consumer.__init__(self)
            self.h = hashlib.sha256()
            self.n = 0
            self.error = None

        def consume(self, ref_id, state, data):
            self.h.update(data)
            self.n += len(data)
            return {"received_bytes": self.n}

        def download_completed(self, ref_id):
            pass

        def download_failed(self, ref_id, reason):
            self.error = reason

    cell = nb.make_cell(args.fqcn, args.url)
    cell.start()
    nb.wait_peer(cell, nb.SERVER_FQCN, deadline)
    nb.emit("READY", {"fqcn": args.fqcn})

    go = nb.wait_go(max(1.0, deadline - time.time()))
    source, refs = go["source"], go["refs"]
    cpu0 = nb.cpu_seconds()
    res = {"error": None}
    timeout = args.per_request_timeout

    if args.mode == "hash":
        c = HashConsumer()
        download_object(from_fqcn=source, ref_id=refs[0], per_request_timeout=timeout, cell=cell, consumer=c)
        res.update(error=c.error, bytes=c.n, sha256=c.h.hexdigest())
        done = {"bytes": c.n}
    elif args.mode == "file":
        err, path = download_file(
            from_fqcn=source, ref_id=refs[0], per_request_timeout=timeout, cell=cell, location=args.out_dir
        )
        size = 0
        if not err:
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            size = os.path.getsize(path)
        res.update(error=err, bytes=size)
        done = {"bytes": size}
    elif args.mode == "arrays":
        err, arrays = download_arrays(from_fqcn=source, ref_id=refs[0], per_request_timeout=timeout, cell=cell)
        n = sum(a.nbytes for a in arrays.values()) if arrays else 0
        res.update(error=err, bytes=n)
        done = {"bytes": n}
    else:
        lat = []
        n = 0
        for rid in refs:
            c = HashConsumer()
            t = time.perf_counter()
            download_object(from_fqcn=source, ref_id=rid, per_request_timeout=timeout, cell=cell, consumer=c)
            lat.append((time.perf_counter() - t) * 1000.0)
            if c.error:
                res["error"] = c.error
                break
            n += c.n
            res["sha256"] = c.h.hexdigest()
        res.update(bytes=n, latencies_ms=lat)
        done = {"bytes": n}

    cpu = nb.cpu_seconds() - cpu0
    nb.emit("DONE", done)
    # Verification happens after DONE: it is not part of the transfer.
    if args.mode == "file" and not res["error"]:
        res["sha256"] = nb.file_sha256(path)
        os.unlink(path)
    elif args.mode == "arrays" and not res["error"]:
        res["sha256"] = nb.arrays_sha256(arrays)
    res.update(cpu_s=cpu, maxrss_kib=nb.maxrss_kib())
    nb.emit("RESULT", res)
    if res["error"]:
        nb.leave(1)
    nb.linger_until_stdin_eof()


if __name__ == "__main__":
    main()
