#!/usr/bin/env python3
"""NVFlare 2.9 producer for `bench_download`: one ObjectDownloader transaction on a real Cell.

  --kind file    FileDownloadable (add_file) of --file, NVFlare's default 5 MiB chunks
  --kind arrays  ArrayDownloadable (add_arrays) of --total-bytes of float32 arrays, --array-bytes each
  --kind small   --count refs, each a FileDownloadable of the same small --file

Listens as the server root cell `server` on a free port; waits for the transaction's
TransferOutcome (all --num-receivers downloaded every ref, or failure) and exits.
READY {"url", "port", "fqcn", "tx_id", "refs": [...], "sha256"}
RESULT {"status", "cpu_s" (since the baseline: after imports and data generation), "maxrss_kib"}
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvbench as nb  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["file", "arrays", "small"], required=True)
    p.add_argument("--file")
    p.add_argument("--total-bytes", type=int, default=0)
    p.add_argument("--array-bytes", type=int, default=4 << 20)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--num-receivers", type=int, default=1)
    nb.add_common_args(p)
    args = p.parse_args()
    nb.start(args, "nv-sender")
    deadline = time.time() + args.timeout

    from nvflare.app_common.np.np_downloader import add_arrays
    from nvflare.fuel.f3.streaming.file_downloader import add_file
    from nvflare.fuel.f3.streaming.obj_downloader import ObjectDownloader

    arrays = None
    digest = None
    if args.kind == "arrays":
        arrays = nb.make_arrays(args.total_bytes, args.array_bytes)
        digest = nb.arrays_sha256(arrays)
    else:
        digest = nb.file_sha256(args.file)

    port = nb.free_port()
    url = f"tcp://127.0.0.1:{port}"
    cell = nb.make_cell(nb.SERVER_FQCN, url)
    cell.start()
    nb.wait_port_listening("127.0.0.1", port, deadline)

    cpu0 = nb.cpu_seconds()
    downloader = ObjectDownloader(
        cell=cell, timeout=args.timeout, num_receivers=args.num_receivers
    )
    refs = []
    if args.kind == "arrays":
        refs.append(add_arrays(downloader, arrays))
    else:
        for _ in range(args.count):
            refs.append(add_file(downloader, os.path.abspath(args.file)))
    waiter = downloader.get_waiter()
    nb.emit(
        "READY",
        {"url": url, "port": port, "fqcn": nb.SERVER_FQCN, "tx_id": downloader.tx_id, "refs": refs, "sha256": digest},
    )
    outcome = waiter.wait(timeout=max(1.0, deadline - time.time() - 2.0))
    cpu = nb.cpu_seconds() - cpu0
    status = outcome.status if outcome is not None else "no outcome before the deadline"
    nb.emit("RESULT", {"status": status, "cpu_s": cpu, "maxrss_kib": nb.maxrss_kib()})
    nb.leave(0 if outcome is not None and outcome.completed else 1)


if __name__ == "__main__":
    main()
