#!/usr/bin/env python3
"""NVFlare 2.9 DownloadService *producer* for Ferry's interop tests.

Creates one ObjectDownloader transaction on a real Cell and adds a file
(FileDownloadable via add_file) and/or a dict of deterministic numpy arrays
(ArrayDownloadable via add_arrays), then waits for the transaction's TransferOutcome
(TransferWaiter) and reports it.

  --listen [--host H --port P]   be the server root cell `server` (Ferry connects to it)
  --connect URL                  be client root cell `site-1` and connect to a Ferry listener

READY {"fqcn", "url", "port", "tls", "mode", "peer", "tx_id",
       "file": {"ref_id", "path", "size", "sha256", "chunk_size"} | null,
       "arrays": {"ref_id", "count", "max_chunk_size", "checksums": {name: {dtype, shape, sha256}}} | null,
       "tensors": same shape as "arrays" | null}
--tensors N offers arrays as one-safetensors-blob-per-item (NVFlare's TensorDownloadable
item format, produced with safetensors.numpy because torch is not installed).
RESULT {"event": "downloaded_to_one", "receiver", "status", "ref": "file"}   (file callback, per receiver)
RESULT {"event": "tx_done", "status"}                                          (transaction_done_cb)
RESULT {"event": "outcome", "status", "reason", "done_status", "num_receivers",
        "receivers": {ref_id: {receiver_fqcn: status}}, "completed": bool}
The process exits --linger seconds after the outcome (the tombstone window stays open
that long), or after --timeout.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry_peer as fp  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.add_endpoint_args(p, "server", "site-1")
    p.add_argument("--file", help="file to offer (FileDownloadable)")
    p.add_argument("--chunk-size", type=int, default=None, help="file chunk size (NVFlare default 5 MiB)")
    p.add_argument("--file-ref-id", help="use this ref id for the file instead of a generated one")
    p.add_argument("--arrays", type=int, default=0, help="offer this many deterministic numpy arrays (0 = none)")
    p.add_argument("--seed", type=int, default=7, help="seed of the arrays (numpy default_rng)")
    p.add_argument("--array-scale", type=int, default=1, help="multiply the first dimension of every array")
    p.add_argument("--array-chunk-size", type=int, default=2 * 1024 * 1024, help="max_chunk_size of add_arrays")
    p.add_argument(
        "--tensors",
        type=int,
        default=0,
        help="offer this many deterministic arrays as safetensors items (TensorDownloadable's format, no torch)",
    )
    p.add_argument("--tensor-seed", type=int, default=11)
    p.add_argument("--tensor-chunk-size", type=int, default=2 * 1024 * 1024)
    p.add_argument("--num-receivers", type=int, default=1, help="expected receivers (0 = unknown)")
    p.add_argument("--receiver-ids", help="comma list of expected receiver FQCNs (identity completion)")
    p.add_argument("--tx-timeout", type=float, default=60.0, help="transaction timeout in seconds")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the outcome")
    fp.add_common_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    if not args.file and not args.arrays and not args.tensors:
        raise SystemExit("nothing to offer: give --file, --arrays N and/or --tensors N")
    fp.start_common(args, "sender")
    deadline = time.time() + args.timeout

    from nvflare.app_common.np.np_downloader import add_arrays
    from nvflare.fuel.f3.streaming.file_downloader import add_file
    from nvflare.fuel.f3.streaming.obj_downloader import ObjectDownloader

    cell, fqcn, info = fp.bring_up(args, deadline)

    def tx_done(tx_id, status, objects, **kwargs):
        fp.result({"event": "tx_done", "tx_id": tx_id, "status": status})

    receiver_ids = [r for r in (args.receiver_ids or "").split(",") if r] or None
    downloader = ObjectDownloader(
        cell=cell,
        timeout=args.tx_timeout,
        num_receivers=args.num_receivers,
        transaction_done_cb=tx_done,
        receiver_ids=receiver_ids,
    )
    info["tx_id"] = downloader.tx_id
    info["file"] = None
    info["arrays"] = None

    if args.file:
        path = os.path.abspath(args.file)

        def file_cb(to_receiver, status, file_name, **kwargs):
            if to_receiver:
                fp.result({"event": "downloaded_to_one", "ref": "file", "receiver": to_receiver, "status": status})
            else:
                fp.result({"event": "downloaded_to_all", "ref": "file"})

        rid = add_file(downloader, path, chunk_size=args.chunk_size, ref_id=args.file_ref_id, file_downloaded_cb=file_cb)
        info["file"] = {
            "ref_id": rid,
            "path": path,
            "size": os.path.getsize(path),
            "sha256": fp.file_sha256(path),
            "chunk_size": args.chunk_size,
        }

    if args.arrays:
        arrays = fp.make_arrays(args.seed, args.arrays, args.array_scale)
        rid = add_arrays(downloader, arrays, max_chunk_size=args.array_chunk_size)
        info["arrays"] = {
            "ref_id": rid,
            "count": len(arrays),
            "seed": args.seed,
            "max_chunk_size": args.array_chunk_size,
            "checksums": fp.array_checksums(arrays),
        }

    info["tensors"] = None
    if args.tensors:
        downloadable_cls, _ = fp.tensor_item_classes()
        tensors = fp.make_arrays(args.tensor_seed, args.tensors, args.array_scale)
        rid = downloader.add_object(downloadable_cls(tensors, args.tensor_chunk_size))
        info["tensors"] = {
            "ref_id": rid,
            "count": len(tensors),
            "seed": args.tensor_seed,
            "max_chunk_size": args.tensor_chunk_size,
            "checksums": fp.array_checksums(tensors),
        }

    waiter = downloader.get_waiter()
    fp.ready(info)

    outcome = waiter.wait(timeout=max(0.0, deadline - time.time() - 1.0))
    if outcome is None:
        fp.result({"event": "outcome", "status": None, "error": "no outcome before the deadline", "done": waiter.done()})
    else:
        fp.result(
            {
                "event": "outcome",
                "tx_id": outcome.tx_id,
                "status": outcome.status,
                "reason": outcome.reason,
                "done_status": outcome.done_status,
                "num_receivers": outcome.num_receivers,
                "completed": bool(outcome.completed),
                "receivers": {r.ref_id: dict(r.receiver_statuses) for r in outcome.refs},
            }
        )
    time.sleep(args.linger)
    cell.stop()
    fp.finish(0)


if __name__ == "__main__":
    main()
