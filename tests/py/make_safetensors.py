#!/usr/bin/env python3
"""Write a deterministic .safetensors file (numpy arrays from a seed) for interop tests.

  make_safetensors.py --out model.safetensors [--seed 7] [--count 6] [--scale 1]

Tensors are ferry_peer.make_arrays(seed, count, scale): layer<i>.<kind> with dtypes
F32, F64, I32, I64, U8, F16 in turn. Prints one line
RESULT {"path", "size", "sha256" (of the file), "tensors": {name: {dtype, st_dtype, shape, sha256}}}
where dtype is numpy's (e.g. "<f4"), st_dtype the safetensors code (e.g. "F32") and sha256
covers the tensor's little-endian C-order bytes. Same output shape as check_safetensors.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry_peer as fp  # noqa: E402
from check_safetensors import describe_file  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--scale", type=int, default=1, help="multiply the first dimension of every tensor")
    p.add_argument("--metadata", action="append", default=[], metavar="K=V", help="__metadata__ entry (repeatable)")
    args = p.parse_args()

    from safetensors.numpy import save_file

    arrays = fp.make_arrays(args.seed, args.count, args.scale)
    metadata = dict(kv.split("=", 1) for kv in args.metadata) or None
    save_file(arrays, args.out, metadata=metadata)
    fp.result(describe_file(args.out))


if __name__ == "__main__":
    main()
