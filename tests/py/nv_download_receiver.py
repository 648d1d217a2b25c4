#!/usr/bin/env python3
"""NVFlare 2.9 DownloadService *receiver* for Ferry's interop tests.

Downloads refs from a source cell with NVFlare's own receiver code:
file refs with `download_file` (streamed requests on download_service__, _ChunkConsumer,
confirm at the end) and numpy refs with `download_arrays` (ArrayConsumer, pipelined).

  --listen [--host H --port P]   be the server root cell `server` (the Ferry source connects)
  --connect URL                  be client root cell `site-1` and connect to a Ferry listener

Which refs: --source FQCN with --file-ref / --arrays-ref, or --refs-from-stdin: after READY
the script reads one JSON line {"source": fqcn, "file_ref"?, "arrays_ref"?, "tensors_ref"?} from
stdin (so a test can start the receiver before it knows the ref ids, e.g. listen mode).
The download starts once the source's FQCN root is connected (--wait-source, default on
in listen mode) — a source behind the connected peer is reached by forwarding.

READY {"fqcn", "url", "port", "tls", "mode", "peer"}
RESULT {"event": "file", "ref_id", "source", "error", "path", "size", "sha256"}
RESULT {"event": "arrays", "ref_id", "source", "error", "arrays": {name: {dtype, shape, sha256}}}
RESULT {"event": "tensors", ... same as arrays}  (--tensors-ref: each item one safetensors blob,
        decoded with safetensors.numpy — NVFlare's TensorConsumer format without torch)
RESULT {"event": "downloads_done", "all_ok"}
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry_peer as fp  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.add_endpoint_args(p, "server", "site-1")
    p.add_argument("--source", help="FQCN of the cell that owns the refs")
    p.add_argument("--file-ref", help="ref id of a file to download with download_file")
    p.add_argument("--arrays-ref", help="ref id of numpy arrays to download with download_arrays")
    p.add_argument("--tensors-ref", help="ref id of a safetensors-item object (TensorConsumer's format, no torch)")
    p.add_argument("--refs-from-stdin", action="store_true", help="read {source, file_ref, arrays_ref} from stdin")
    p.add_argument("--out-dir", help="directory for downloaded files (default: a new temp dir)")
    p.add_argument("--per-request-timeout", type=float, default=30.0)
    p.add_argument(
        "--wait-source",
        choices=["auto", "yes", "no"],
        default="auto",
        help="wait until the source's FQCN root is directly connected before downloading (auto: in listen mode)",
    )
    p.add_argument("--wait-source-timeout", type=float, default=60.0)
    # Long enough for the fire-and-forget confirm to leave on a loaded machine before the cell
    # stops; tests kill the process once they saw what they wait for, so it costs no time.
    p.add_argument("--linger", type=float, default=5.0)
    fp.add_common_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    fp.start_common(args, "receiver", read_stdin=args.refs_from_stdin)
    deadline = time.time() + args.timeout

    from nvflare.app_common.np.np_downloader import download_arrays
    from nvflare.fuel.f3.streaming.file_downloader import download_file

    cell, fqcn, info = fp.bring_up(args, deadline)
    fp.ready(info)

    source, file_ref, arrays_ref = args.source, args.file_ref, args.arrays_ref
    if args.refs_from_stdin:
        req = fp.next_stdin_json(timeout=max(0.0, deadline - time.time()))
        source = req.get("source", source)
        file_ref = req.get("file_ref", file_ref)
        arrays_ref = req.get("arrays_ref", arrays_ref)
        tensors_ref = req.get("tensors_ref", args.tensors_ref)
    else:
        tensors_ref = args.tensors_ref
    if not source or not (file_ref or arrays_ref or tensors_ref):
        raise SystemExit("need a source FQCN and at least one ref id")

    wait_source = args.wait_source == "yes" or (args.wait_source == "auto" and args.listen)
    if wait_source:
        fp.wait_for_peer(cell, source.split(".")[0], min(deadline, time.time() + args.wait_source_timeout))

    all_ok = True
    if file_ref:
        out_dir = args.out_dir or tempfile.mkdtemp(prefix="ferry-interop-recv-")
        try:
            err, path = download_file(
                from_fqcn=source,
                ref_id=file_ref,
                per_request_timeout=args.per_request_timeout,
                cell=cell,
                location=out_dir,
            )
        except Exception as ex:
            err, path = f"exception: {ex!r}", None
        rec = {"event": "file", "ref_id": file_ref, "source": source, "error": err, "path": path}
        if not err and path and os.path.exists(path):
            rec["size"] = os.path.getsize(path)
            rec["sha256"] = fp.file_sha256(path)
        all_ok = all_ok and not err
        fp.result(rec)

    if arrays_ref:
        try:
            err, arrays = download_arrays(
                from_fqcn=source,
                ref_id=arrays_ref,
                per_request_timeout=args.per_request_timeout,
                cell=cell,
            )
        except Exception as ex:
            err, arrays = f"exception: {ex!r}", None
        rec = {"event": "arrays", "ref_id": arrays_ref, "source": source, "error": err}
        if not err and arrays is not None:
            rec["arrays"] = fp.array_checksums(arrays)
        all_ok = all_ok and not err
        fp.result(rec)

    if tensors_ref:
        from nvflare.fuel.f3.streaming.download_service import download_object

        _, consumer_cls = fp.tensor_item_classes()
        consumer = consumer_cls()
        try:
            download_object(
                from_fqcn=source,
                ref_id=tensors_ref,
                per_request_timeout=args.per_request_timeout,
                cell=cell,
                consumer=consumer,
            )
            err, tensors = consumer.error, consumer.result
        except Exception as ex:
            err, tensors = f"exception: {ex!r}", None
        rec = {"event": "tensors", "ref_id": tensors_ref, "source": source, "error": err}
        if not err and tensors is not None:
            rec["arrays"] = fp.array_checksums(tensors)
        all_ok = all_ok and not err
        fp.result(rec)

    fp.result({"event": "downloads_done", "cell": fqcn, "all_ok": all_ok})
    time.sleep(args.linger)
    cell.stop()
    fp.finish(0)


if __name__ == "__main__":
    main()
