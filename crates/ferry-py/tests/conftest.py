"""Shared fixtures of the `ferry` wheel's test suite.

Run by `cargo xtask test-matrix --case test-ferry-py`, which builds the wheel, installs it into
the interop virtualenv (target/interop-venv: NVFlare 2.9, numpy, safetensors) and runs pytest
there with FERRY_BIN set to the `ferry` command. Every test uses real sockets on loopback, real
files and, for interop, real NVFlare cells (the scripts of tests/py, run as subprocesses).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
PY_PEERS = REPO / "tests" / "py"

# Deadlines: ten times what each step takes on a busy 2-core machine; they only bound a hang.
LONG = 120.0


def write_file(path: pathlib.Path, size: int) -> pathlib.Path:
    """A file of `size` random bytes, written in 1 MiB pieces."""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(1 << 20, left)
            f.write(os.urandom(n))
            left -= n
    return path


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Peer:
    """A subprocess speaking the READY/RESULT line protocol (tests/py/README.md)."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None):
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stderr: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def next(self, kind: str, timeout: float = LONG, **match: Any) -> Dict[str, Any]:
        """The next `KIND {json}` line whose fields include `match`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} {match} within {timeout}s; stderr:\n{self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"peer exited ({self.proc.wait()}) before {kind} {match}; stderr:\n{self.tail()}")
            head, _, rest = line.partition(" ")
            if head != kind:
                continue
            obj = json.loads(rest or "{}")
            if all(obj.get(k) == v for k, v in match.items()):
                return obj

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        return "".join(self.stderr[-30:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def peers():
    """Start line-protocol subprocesses; all are ended when the test ends."""
    started: List[Peer] = []

    def start(args: List[str], env: Optional[Dict[str, str]] = None) -> Peer:
        p = Peer(args, env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def python_child(code: str) -> List[str]:
    """Arguments that run `code` in a fresh interpreter of this venv."""
    return [sys.executable, "-c", code]


@pytest.fixture
def ferry_bin() -> pathlib.Path:
    """The `ferry` command (FERRY_BIN, set by the test matrix)."""
    path = os.environ.get("FERRY_BIN")
    if not path:
        pytest.fail("FERRY_BIN is not set: run this suite with `cargo xtask test-matrix --case test-ferry-py`")
    return pathlib.Path(path)
