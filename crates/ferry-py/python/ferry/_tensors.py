"""Received tensors as numpy arrays or torch tensors over ferry's own buffers (no copy).

Each tensor arrives as a ``TensorBuffer``: a flat ``uint8`` array interface over the bytes
ferry received. numpy wraps it with ``numpy.asarray`` (the buffer becomes the array's base, so
the bytes live as long as the array), and the array is then viewed with the tensor's dtype and
reshaped, both views. torch tensors are made from that array with ``torch.from_numpy``.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

# safetensors dtype -> numpy dtype name (numpy itself)
_NUMPY = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
}

# safetensors dtype -> ml_dtypes name (numpy has no such dtype of its own)
_ML_DTYPES = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}

# safetensors dtype -> torch dtype attribute
_TORCH = dict(_NUMPY, **_ML_DTYPES)


def _numpy_dtype(np: Any, dtype: str) -> Any:
    if dtype in _NUMPY:
        return np.dtype(_NUMPY[dtype])
    if dtype in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            from ._ferry import UsageError

            raise UsageError(
                f"a tensor is {dtype}, which numpy represents only with the ml_dtypes package: "
                "pip install ml_dtypes, or use framework='torch'"
            ) from None
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[dtype]))
    from ._ferry import UsageError

    raise UsageError(f"a tensor is {dtype}, which numpy cannot represent; use framework='torch'")


def _flat(np: Any, buf: Any) -> Any:
    """The buffer as a flat uint8 numpy array (read-only unless the buffer is writable)."""
    return np.asarray(buf)


def to_numpy(entries: List[Tuple[str, str, Tuple[int, ...], Any]]) -> Dict[str, Any]:
    import numpy as np

    out: Dict[str, Any] = {}
    for name, dtype, shape, buf in entries:
        out[name] = _flat(np, buf).view(_numpy_dtype(np, dtype)).reshape(shape)
    return out


def to_torch(entries: List[Tuple[str, str, Tuple[int, ...], Any]]) -> Dict[str, Any]:
    import numpy as np
    import torch

    out: Dict[str, Any] = {}
    for name, dtype, shape, buf in entries:
        try:
            tdtype = getattr(torch, _TORCH[dtype])
        except (KeyError, AttributeError):
            from ._ferry import UsageError

            raise UsageError(f"tensor {name!r} is {dtype}, which this torch cannot represent") from None
        flat = _flat(np, buf)
        with warnings.catch_warnings():
            # Read-only buffers (the default) make torch warn that it has no read-only
            # tensors; the documented contract is that these tensors are not written to.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(flat)
        if tdtype is not torch.uint8:
            t = t.view(tdtype)
        out[name] = t.reshape(shape)
    return out
