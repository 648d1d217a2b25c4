"""Type stubs of the extension module ferry._ferry (the Rust side of `import ferry`)."""

import os
import pathlib
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Union

_Path = Union[str, "os.PathLike[str]"]

__version__: str

class FerryError(Exception):
    """Base class of ferry's errors (except Interrupted, which is a KeyboardInterrupt)."""

    refusal: Optional[
        Literal[
            "NOT_EXPECTED_RECEIVER",
            "RECEIVER_LIMIT_REACHED",
            "TRANSACTION_FINISHED",
            "UNKNOWN_REF",
            "INVALID_REQUEST",
            "SHUT_DOWN",
        ]
    ]
    """The code a ferry sender refused the pull with, or None."""

class UsageError(FerryError):
    """Bad input: an argument, a ticket, a file or a destination that cannot be used (the CLI's exit code 2)."""

class TransferError(FerryError):
    """The transfer failed: the sender is gone or refused, the data did not verify (the CLI's exit code 1)."""

class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a cancel stopped the transfer; the peer was told (the CLI's exit code 130)."""

class TLS:
    """Mutual TLS settings: this cell's certificate and key, and the CA both sides trust."""

    def __init__(self, cert: _Path, key: _Path, ca: _Path) -> None: ...
    @property
    def cert(self) -> pathlib.Path: ...
    @property
    def key(self) -> pathlib.Path: ...
    @property
    def ca(self) -> pathlib.Path: ...
    @property
    def common_name(self) -> Optional[str]:
        """The certificate's CN: the default name of a TLS receiver."""

class CancelToken:
    """Cancels the operation it is passed to (from any thread)."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

class Ticket:
    """A ticket read into its fields (either written form); str() is the compact form."""

    def __init__(self, ticket: str) -> None: ...
    @property
    def kind(self) -> Literal["file", "tensors", "set"]: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def blake3(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def ref_id(self) -> str: ...
    @property
    def tls(self) -> bool: ...
    @property
    def compact(self) -> str: ...
    @property
    def url(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

_Ticket = Union[str, Ticket]

class Progress:
    """Progress of one download (or of a whole set), as passed to a `progress=` callback."""

    @property
    def bytes_done(self) -> int: ...
    @property
    def total_bytes(self) -> Optional[int]: ...
    @property
    def resumed_from(self) -> int: ...
    @property
    def chunks_done(self) -> Optional[int]: ...
    @property
    def files_done(self) -> Optional[int]: ...
    @property
    def files(self) -> Optional[int]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def bytes_per_sec(self) -> float: ...
    @property
    def state(self) -> Literal["start", "active", "completed", "failed", "aborted"]: ...

class Outcome:
    """What a transaction ended with."""

    @property
    def status(self) -> Literal["completed", "failed", "aborted"]: ...
    @property
    def reason(self) -> str: ...
    @property
    def done_status(self) -> str: ...
    @property
    def completed(self) -> bool: ...
    @property
    def receivers(self) -> Dict[str, Dict[str, str]]:
        """{ticket: {receiver: "success" | "failed"}}, in the order the objects were added."""

class Event:
    """One lifecycle event of a sender's transaction, passed to `on_event`."""

    @property
    def kind(
        self,
    ) -> Literal["progress", "downloaded_to_one", "downloaded_to_all", "refused", "withdrew", "transaction_done"]: ...
    @property
    def ticket(self) -> Optional[str]: ...
    @property
    def receiver(self) -> Optional[str]: ...
    @property
    def status(self) -> Optional[Literal["success", "failed"]]: ...
    @property
    def cause(self) -> Optional[str]: ...
    @property
    def refusal(self) -> Optional[Literal["NOT_EXPECTED_RECEIVER", "RECEIVER_LIMIT_REACHED"]]: ...
    @property
    def replaced_by(self) -> Optional[str]: ...
    @property
    def bytes_done(self) -> Optional[int]: ...
    @property
    def outcome(self) -> Optional[Outcome]: ...

class TensorBuffer:
    """One received tensor's bytes, exposed to numpy as a flat uint8 array interface."""

    @property
    def __array_interface__(self) -> Dict[str, Any]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    def __len__(self) -> int: ...

class Sender:
    """Serve files, tensor dicts and bytes to receivers, as one transaction."""

    def __init__(
        self,
        listen: str = "tcp://127.0.0.1:0",
        *,
        name: str = "ferry-sender",
        receivers: int = 1,
        allow: Optional[List[str]] = None,
        tls: Optional[TLS] = None,
        timeout: float = 600.0,
        reconnect_timeout: float = 30.0,
        advertise: Optional[str] = None,
        chunk_size: int = 1048576,
        cache_bytes: int = 8388608,
        ticket_format: Literal["compact", "url"] = "compact",
        on_event: Optional[Callable[[Event], Any]] = None,
    ) -> None: ...
    @property
    def url(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def tx_id(self) -> str: ...
    @property
    def tickets(self) -> List[str]: ...
    @property
    def outcome(self) -> Optional[Outcome]: ...
    def add_file(self, path: _Path, *, name: Optional[str] = None) -> str: ...
    def add_tensors(self, tensors: Mapping[str, Any], *, name: Optional[str] = None) -> str: ...
    def add_bytes(self, data: Union[bytes, bytearray, memoryview], *, name: Optional[str] = None) -> str: ...
    def wait(self, timeout: Optional[float] = None) -> Optional[Outcome]: ...
    def delete(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Sender": ...
    def __exit__(self, *exc: Any) -> bool: ...

def get(
    ticket: _Ticket,
    out_dir: _Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    name: Optional[str] = None,
    tls: Optional[TLS] = None,
    progress: Optional[Callable[[Progress], Any]] = None,
    request_timeout: float = 60.0,
    cancel: Optional[CancelToken] = None,
) -> pathlib.Path: ...
def download_tensors(
    ticket: _Ticket,
    *,
    writable: bool = False,
    name: Optional[str] = None,
    tls: Optional[TLS] = None,
    progress: Optional[Callable[[Progress], Any]] = None,
    request_timeout: float = 60.0,
    cancel: Optional[CancelToken] = None,
) -> List[Tuple[str, str, Tuple[int, ...], TensorBuffer]]: ...
def download_bytes(
    ticket: _Ticket,
    *,
    name: Optional[str] = None,
    tls: Optional[TLS] = None,
    progress: Optional[Callable[[Progress], Any]] = None,
    request_timeout: float = 60.0,
    cancel: Optional[CancelToken] = None,
) -> bytes: ...
