"""Ports for NVFlare listeners, shared by the interop peers here and the benchmark's Python roles
(crates/ferry/examples/bench_py): a free port to give a listener, and whether it listens yet."""

import os
import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (NVFlare's TCP listener cannot report a port-0 bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_listening(host: str, port: int) -> bool:
    """Whether a socket is listening on TCP `port` (any address), from /proc/net/tcp{,6}.

    Bound is not enough: NVFlare's listener thread binds, then listens, and a connect between
    the two is refused. Where /proc is missing, a connect to host:port that is accepted says it
    instead (the listener then sees a connection that closes at once, which it logs and drops).
    """
    tables = [t for t in ("/proc/net/tcp", "/proc/net/tcp6") if os.path.exists(t)]
    if not tables:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            return False
    for table in tables:
        with open(table) as f:
            next(f, None)  # the header line
            for line in f:
                fields = line.split()
                # local_address is HEXADDR:HEXPORT; state 0A is LISTEN
                if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_port_listening(host: str, port: int, deadline: float) -> None:
    """Wait until somebody (the cell's listener thread) listens on host:port."""
    while time.time() < deadline:
        if port_listening(host, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"listener on {host}:{port} did not come up")
