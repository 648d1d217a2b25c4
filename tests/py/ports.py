"""Ports for NVFlare listeners, shared by the interop peers here and the benchmark's Python roles
(crates/ferry/examples/bench_py): a free port to give a listener, and whether it listens yet."""

import os
import random
import socket
import sys
import time


# Where a free port is looked for: below the kernel's ephemeral range, so a port handed out
# here is not also handed to another process's bind(0) or outgoing connection (NVFlare's
# internal listeners, clients) between our check and NVFlare's bind.
_PICK_FROM = 10000
_PICK_TRIES = 200


# The exit status of a peer whose port was taken (EX_TEMPFAIL: starting it again may work).
EXIT_PORT_TAKEN = 75


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for a listener that cannot report a port-0 bind (NVFlare's).

    Picked at random below the ephemeral range (another process asking the kernel for any
    port never gets it); the kernel's pick where that range is empty or all taken.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    if low - 1 > _PICK_FROM:
        for _ in range(_PICK_TRIES):
            port = rng.randrange(_PICK_FROM, low)
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _own_socket_inodes() -> set:
    inodes = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return inodes
    for fd in names:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listener_owner(host: str, port: int):
    """Who listens on TCP `port`: "self" (this process), "other", or None (nobody yet).

    From /proc/net/tcp{,6}: bound is not enough (NVFlare's listener thread binds, then
    listens, and a connect between the two is refused), and a listener of another process on
    the same port means ours failed to bind (NVFlare only logs that). Where /proc is missing, a
    connect to host:port that is accepted says "self" (the listener then sees a connection
    that closes at once, which it logs and drops).
    """
    tables = [t for t in ("/proc/net/tcp", "/proc/net/tcp6") if os.path.exists(t)]
    if not tables:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return "self"
        except OSError:
            return None
    listening = []
    for table in tables:
        with open(table) as f:
            next(f, None)  # the header line
            for line in f:
                fields = line.split()
                # local_address is HEXADDR:HEXPORT; state 0A is LISTEN; field 9 the inode
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    listening.append(fields[9])
    if not listening:
        return None
    own = _own_socket_inodes()
    return "self" if any(i in own for i in listening) else "other"


def wait_port_listening(host: str, port: int, deadline: float) -> None:
    """Wait until this process (the cell's listener thread) listens on host:port.

    If another process listens there, the port was taken between `free_port` and the bind
    and this process's listener will never come up (NVFlare only logs the failed bind, and
    its threads keep the process alive): say so on stderr and end the process at once with
    status `EXIT_PORT_TAKEN`, which the test harness takes as "start it again".
    """
    while time.time() < deadline:
        owner = listener_owner(host, port)
        if owner == "self":
            return
        if owner == "other":
            sys.stderr.write(
                f"port {port} on {host} is taken by another process, so this cell's listener could not "
                "bind it; start the peer again (it picks another port)\n"
            )
            sys.stderr.flush()
            os._exit(EXIT_PORT_TAKEN)
        time.sleep(0.05)
    raise RuntimeError(f"listener on {host}:{port} did not come up")
