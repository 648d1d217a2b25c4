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


def start_sender(peers, path, receivers=1, tx_timeout=600.0):
    s = peers([sys.executable, CHILD, "send", str(path), "--receivers", str(receivers), "--tx-timeout", str(tx_timeout)])
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


def test_a_killed_receiver_comes_back_under_its_name_and_completes(peers, big, tmp_path):
    sender, ticket, pid = start_sender(peers, big)
    # Killed at its first progress report, most of the file still to come.
    r = peers([sys.executable, CHILD, "get", ticket, str(tmp_path / "dead"), "--then", "kill"])
    killed = r.next("STALLED")["name"]
    assert r.proc.wait(timeout=LONG) == -signal.SIGKILL
    assert not (tmp_path / "dead" / "big.bin").exists()
    # The receiver's next run, under the name it had (the sender keeps its place for it), gets
    # the whole file; the killed run left no status of its own.
    p = ferry.get(ticket, tmp_path / "alive", name=killed)
    assert sha256(p) == sha256(big)
    outcome = sender.next("RESULT")["outcome"]
    assert outcome["status"] == "completed", outcome
    (statuses,) = outcome["receivers"].values()
    assert statuses == {killed: "success"}, outcome


def test_a_declared_receiver_that_cancels_fails_with_its_cause(tmp_path):
    """Identity mode: a receiver's cancel makes it final (failed) and says why; the
    transaction, every declared receiver final, ends failed."""
    src = write_file(tmp_path / "a.bin", 128 << 20)
    events = []
    token = ferry.CancelToken()

    def progress(p):
        if p.state == "active" and p.bytes_done > 0:
            token.cancel()

    with ferry.Sender(allow=["site-1"], timeout=LONG, reconnect_timeout=LONG, on_event=events.append) as s:
        t = s.add_file(src)
        with pytest.raises(ferry.Interrupted):
            ferry.get(t, tmp_path / "out", name="site-1", progress=progress, cancel=token)
        o = s.wait(LONG)
    assert o is not None and o.status == "failed" and o.receivers == {t: {"site-1": "failed"}}, o
    (failed,) = [e for e in events if e.kind == "downloaded_to_one"]
    assert (failed.receiver, failed.status, failed.cause) == ("site-1", "failed", "cancelled by the receiver")
    with pytest.raises(ferry.UsageError, match="reconnect_timeout"):
        ferry.Sender(reconnect_timeout=0)


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
