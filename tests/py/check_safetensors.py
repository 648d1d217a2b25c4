#!/usr/bin/env python3
"""Load a .safetensors file with safetensors.numpy.load_file and describe every tensor.

  check_safetensors.py --file model.safetensors

Prints one line
RESULT {"path", "size", "sha256" (of the file), "metadata": {..} | null,
        "tensors": {name: {dtype, st_dtype, shape, sha256}}}
dtype is numpy's dtype string (e.g. "<f4"), st_dtype the safetensors code from the file
header (e.g. "F32"), sha256 covers the tensor's little-endian C-order bytes. A file that
safetensors cannot load prints RESULT {"path", "error"} and exits 1.
"""

import argparse
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry_peer as fp  # noqa: E402


def _header(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def describe_file(path: str) -> dict:
    from safetensors.numpy import load_file

    arrays = load_file(path)
    header = _header(path)
    tensors = fp.array_checksums(arrays)
    for name, rec in tensors.items():
        rec["st_dtype"] = header.get(name, {}).get("dtype")
    return {
        "path": os.path.abspath(path),
        "size": os.path.getsize(path),
        "sha256": fp.file_sha256(path),
        "metadata": header.get("__metadata__"),
        "tensors": tensors,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", required=True)
    args = p.parse_args()
    try:
        fp.result(describe_file(args.file))
    except Exception as ex:
        fp.result({"path": os.path.abspath(args.file), "error": f"{type(ex).__name__}: {ex}"})
        sys.exit(1)


if __name__ == "__main__":
    main()
