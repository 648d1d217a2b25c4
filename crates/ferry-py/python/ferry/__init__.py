"""ferry: send files, tensor dicts and bytes to many receivers by pull, from Python.

A ``Sender`` listens for receivers and serves its objects in one transaction; each
``add_file`` / ``add_tensors`` / ``add_bytes`` returns a *ticket*, a string that tells a
receiver everything it needs (the same tickets the ``ferry`` command prints and reads). A
receiver passes the ticket to ``get`` (into a directory; a set ticket of ``ferry serve DIR``
gets the whole directory), ``download_tensors`` (a dict of numpy arrays or torch tensors over
ferry's own buffers) or ``download_bytes``. ``Ticket(t)`` reads a ticket into its fields. ``aget`` /
``aget_tensors`` / ``adownload_bytes`` are the asyncio versions.

The GIL is released while bytes move. Ctrl-C cancels a transfer cleanly (the peer is told) and
raises ``Interrupted``; other failures raise ``UsageError`` (bad input; nothing transferred) or
``TransferError`` (the transfer failed; ``e.refusal`` is the sender's refusal code, if any). Senders and receivers speak NVFlare 2.9's wire, so
NVFlare cells can be either side.

    >>> import ferry, numpy as np
    >>> with ferry.Sender() as s:                          # doctest: +SKIP
    ...     t = s.add_tensors({"w": np.ones(4, np.float32)})
    ...     # elsewhere: ferry.download_tensors(t)["w"]
    ...     s.wait()
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Dict, Optional, Union

from . import _aio, _tensors
from ._ferry import (
    CancelToken,
    Event,
    FerryError,
    Interrupted,
    Outcome,
    Progress,
    Sender,
    TensorBuffer,
    Ticket,
    TLS,
    TransferError,
    UsageError,
    __version__,
    download_bytes,
    get,
)
from ._ferry import download_tensors as _download_tensors

__all__ = [
    "CancelToken",
    "Event",
    "FerryError",
    "Interrupted",
    "Outcome",
    "Progress",
    "Sender",
    "TLS",
    "TensorBuffer",
    "Ticket",
    "TransferError",
    "UsageError",
    "__version__",
    "adownload_bytes",
    "aget",
    "aget_tensors",
    "download_bytes",
    "download_tensors",
    "get",
]

PathLike = Union[str, "os.PathLike[str]"]
TicketLike = Union[str, Ticket]


def download_tensors(
    ticket: TicketLike,
    framework: str = "numpy",
    *,
    writable: bool = False,
    name: Optional[str] = None,
    tls: Optional[TLS] = None,
    progress: Optional[Callable[[Progress], Any]] = None,
    request_timeout: float = 60.0,
    cancel: Optional[CancelToken] = None,
) -> Dict[str, Any]:
    """Download the tensor dict of ``ticket`` into memory.

    Returns ``{name: array}`` in the sender's order, with dtypes and shapes as sent:
    numpy arrays (``framework="numpy"``) or torch tensors (``framework="torch"``). The arrays
    are views of the buffers ferry received into; nothing is copied on the Python side. They
    are read-only unless ``writable=True`` (then each tensor is copied once, as it is handed
    over, and the received buffer released). torch has no read-only tensors: with the default
    ``writable=False`` do not modify the tensors you get (copy them, or pass ``writable=True``).

    Tensors that were views of one buffer on the sender (tied weights) share one buffer again.
    ``progress`` is called on this thread with a ``Progress`` about every 50 ms; ``name``
    is this receiver's cell name (default: the TLS certificate's CN, else ``ferry-py-PID``);
    ``cancel`` is a ``CancelToken`` another thread may cancel. Raises ``UsageError``,
    ``TransferError`` or ``Interrupted``.
    """
    if framework not in ("numpy", "torch"):
        raise UsageError(f"framework={framework!r}: expected 'numpy' or 'torch'")
    entries = _download_tensors(
        ticket,
        writable=writable,
        name=name,
        tls=tls,
        progress=progress,
        request_timeout=request_timeout,
        cancel=cancel,
    )
    if framework == "torch":
        return _tensors.to_torch(entries)
    return _tensors.to_numpy(entries)


async def aget(ticket: TicketLike, out_dir: PathLike, **kwargs: Any) -> "pathlib.Path":
    """``get`` for asyncio: ``path = await ferry.aget(ticket, out_dir)``.

    Takes the same keyword arguments as ``get`` (except ``cancel``: cancel the task instead,
    which cancels the transfer and tells the sender). ``progress`` runs on the event loop.
    """
    return await _aio.run(get, ticket, out_dir, **kwargs)


async def aget_tensors(ticket: TicketLike, framework: str = "numpy", **kwargs: Any) -> Dict[str, Any]:
    """``download_tensors`` for asyncio: ``tensors = await ferry.aget_tensors(ticket)``."""
    return await _aio.run(download_tensors, ticket, framework, **kwargs)


async def adownload_bytes(ticket: TicketLike, **kwargs: Any) -> bytes:
    """``download_bytes`` for asyncio: ``data = await ferry.adownload_bytes(ticket)``."""
    return await _aio.run(download_bytes, ticket, **kwargs)
