"""Cancel, Ctrl-C, a receiver killed, resume, with the sender in a process of its own. The
receiver acts at its first progress report (within ~0.1 s of the start, while most of a 384 MiB
file is still to come); a receiver interrupted by Ctrl-C first freezes the sender (SIGSTOP), so
the transfer is provably in the middle, and thaws it before the cancel."""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
import time

import pytest

import ferry
from conftest import LONG, sha256, write_file

CHILD = str(pathlib.Path(__file__).with_name("children.py"))
# Large enough that the first progress report (at most ~0.1 s after the start) comes long
# before the end, even on loopback: the tests freeze the sender at that report.
SIZE = 384 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return write_file(tmp_path_factory.mktemp("src") / "big.bin", SIZE)


def stalled_midway(res):
    """The receiver saw a partial transfer when it froze the sender."""
    assert "path" not in res, f"the download finished before the sender was frozen: {res}"


def start_sender(peers, path, receivers=1, tx_timeout=600.0, extra=()):
    s = peers([sys.executable, CHILD, "send", str(path), "--receivers", str(receivers), "--tx-timeout", str(tx_timeout), *extra])
    ready = s.next("READY")
    return s, ready["ticket"], ready["pid"]


def resume_sender(pid):
    os.kill(pid, signal.SIGCONT)


def assert_withdrew(sender, name):
    """The receiver's cancel reached the sender: in count mode it gives its place back (the
    `withdrew` event, nobody replacing it) instead of failing the transfer for the others."""
    ev = sender.next("EVENT", event="withdrew", receiver=name)
    assert ev["replaced_by"] is None, ev


def end_sender(sender):
    """Ctrl-C the sender (its transaction waits for a receiver to take the free place)."""
    sender.proc.send_signal(signal.SIGINT)
    res = sender.next("RESULT")
    assert res["outcome"]["done_status"] == "deleted", res
    return res["outcome"]


def get_when_placed(ticket, out, name):
    """ferry.get, again while the sender still gives the only place to a receiver that was
    killed: it frees the place once it has seen that receiver's connection close."""
    deadline = time.monotonic() + LONG
    while True:
        try:
            return ferry.get(ticket, out, name=name)
        except ferry.TransferError as e:
            if e.refusal != "RECEIVER_LIMIT_REACHED" or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_ctrl_c_cancels_the_download_and_tells_the_sender(peers, big, tmp_path):
    sender, ticket, pid = start_sender(peers, big)
    out = tmp_path / "out"
    r = peers([sys.executable, CHILD, "get", ticket, str(out), "--stall", str(pid), "--then", "wait"])
    stalled = r.next("STALLED")
    # Thaw the sender first, so it reads the cancel before the receiver's connection closes;
    # the receiver acts on Ctrl-C within one 50 ms tick, long before the rest (≥ 180 MiB) could
    # arrive.
    resume_sender(pid)
    r.proc.send_signal(signal.SIGINT)
    res = r.next("RESULT")
    stalled_midway(res)
    assert "interrupted" in res and "cancelled" in res["interrupted"], res
    assert not (out / "big.bin").exists() and not (out / "big.bin.part").exists()
    assert_withdrew(sender, stalled["name"])
    r.close()
    assert r.proc.returncode == 130
    outcome = end_sender(sender)
    assert all(not st for st in outcome["receivers"].values()), ("a receiver that cancelled has no status", outcome)


def test_a_killed_receiver_does_not_count_and_the_next_one_completes(peers, big, tmp_path):
    sender, ticket, pid = start_sender(peers, big)
    # Killed at its first progress report (most of the file still to come), the sender running:
    # a sender frozen meanwhile may read the dead receiver's queued pulls after it saw the
    # connection close, and take it for present again (reported).
    r = peers([sys.executable, CHILD, "get", ticket, str(tmp_path / "dead"), "--then", "kill"])
    killed = r.next("STALLED")["name"]
    assert r.proc.wait(timeout=LONG) == -signal.SIGKILL
    p = get_when_placed(ticket, tmp_path / "alive", "site-2")
    assert sha256(p) == sha256(big)
    # Its connection closed while it held the only place: site-2 takes the place.
    withdrew = sender.next("EVENT", event="withdrew", receiver=killed)
    assert withdrew["replaced_by"] == "site-2", withdrew
    outcome = sender.next("RESULT")["outcome"]
    assert outcome["status"] == "completed"
    (statuses,) = outcome["receivers"].values()
    assert statuses == {"site-2": "success"}, f"{killed} was killed and must not count"


def test_a_killed_declared_receiver_fails_once_its_reconnect_timeout_passes(peers, big, tmp_path):
    sender, ticket, pid = start_sender(peers, big, extra=("--allow", "site-1", "--reconnect-timeout", "2"))
    # Killed at its first progress report (most of the file still to come), the sender running.
    r = peers([sys.executable, CHILD, "get", ticket, str(tmp_path / "dead"), "--then", "kill", "--name", "site-1"])
    r.next("STALLED")
    assert r.proc.wait(timeout=LONG) == -signal.SIGKILL
    failed = sender.next("EVENT", event="downloaded_to_one", receiver="site-1")
    assert failed["status"] == "failed" and "connection was lost" in failed["cause"], failed
    outcome = sender.next("RESULT")["outcome"]
    assert outcome["status"] == "failed", outcome
    (statuses,) = outcome["receivers"].values()
    assert statuses == {"site-1": "failed"}, outcome


def test_resume_continues_from_the_kept_part_file(peers, big, tmp_path):
    # One place: the interrupted receiver gives it back (its cancel), the resumed one takes it.
    sender, ticket, pid = start_sender(peers, big)
    out = tmp_path / "out"
    r = peers([sys.executable, CHILD, "get", ticket, str(out), "--stall", str(pid), "--resume", "--then", "wait"])
    r.next("STALLED")
    resume_sender(pid)
    r.proc.send_signal(signal.SIGINT)
    res = r.next("RESULT")
    stalled_midway(res)
    assert "partial data kept" in res["interrupted"], res
    part = out / "big.bin.part"
    assert part.exists() and not (out / "big.bin").exists()
    assert_withdrew(sender, res["name"])
    seen = []
    p = ferry.get(ticket, out, resume=True, progress=seen.append)
    assert sha256(p) == sha256(big) and not part.exists()
    assert seen[-1].state == "completed"
    assert seen[-1].bytes_done < SIZE, "only the missing part was transferred"
    assert seen[-1].resumed_from > 0 and seen[-1].resumed_from + seen[-1].bytes_done == SIZE
    # The resumed receiver (this process, a new cell) holds the place and completes it.
    outcome = sender.next("RESULT")["outcome"]
    assert outcome["status"] == "completed", outcome
    assert outcome["receivers"] == {ticket: {f"ferry-py-{os.getpid()}": "success"}}, outcome
    r.close()
    assert r.proc.returncode == 130


def test_a_cancel_token_cancels_from_another_thread(peers, big, tmp_path):
    sender, ticket, pid = start_sender(peers, big)
    token = ferry.CancelToken()
    stalled = threading.Event()

    def progress(p):
        # The first report comes within ~0.1 s of the start, long before the end; the cancel
        # acts at once (the download watches the token, not the ticks).
        if not stalled.is_set() and p.state == "active" and p.bytes_done > 0:
            stalled.set()
            threading.Thread(target=token.cancel).start()

    with pytest.raises(ferry.Interrupted, match="cancelled"):
        ferry.get(ticket, tmp_path / "out", progress=progress, cancel=token, name="site-1")
    assert token.cancelled and not (tmp_path / "out" / "big.bin").exists()
    assert_withdrew(sender, "site-1")
    end_sender(sender)


def test_ctrl_c_in_a_sender_deletes_its_transaction(peers, big):
    sender, ticket, pid = start_sender(peers, big)
    sender.proc.send_signal(signal.SIGINT)
    res = sender.next("RESULT")
    assert "transaction was deleted" in res["interrupted"]
    assert res["outcome"]["done_status"] == "deleted"
    assert sender.proc.wait(timeout=LONG) == 130
