"""Files and bytes: Sender.add_file / add_bytes → ferry.get / download_bytes, the tickets the
`ferry` command reads and prints, outcomes, events, progress and errors."""

from __future__ import annotations

import os
import pathlib
import subprocess
import threading
import time

import pytest

import ferry
from conftest import LONG, sha256, write_file


def test_a_file_reaches_a_receiver_verified_and_the_outcome_says_so(tmp_path):
    src = write_file(tmp_path / "model.bin", 5 * (1 << 20) + 123)
    events = []
    with ferry.Sender(receivers=1, on_event=events.append) as s:
        t = s.add_file(src)
        assert t.startswith("ferry1") and t.isalnum() and t.islower(), t
        info = ferry.Ticket(t)
        assert (info.kind, info.name, info.size, info.source) == ("file", "model.bin", src.stat().st_size, "ferry-sender")
        assert info.address == s.address and info.address.startswith("127.0.0.1:") and not info.tls
        assert len(info.blake3) == 64 and str(info) == t == info.compact
        assert s.tickets == [t]
        seen = []
        out = ferry.get(t, tmp_path / "out", progress=seen.append)
        assert out == tmp_path / "out" / "model.bin"
        assert sha256(out) == sha256(src)
        assert not (tmp_path / "out" / "model.bin.part").exists()
        assert seen and seen[-1].state == "completed"
        assert seen[-1].bytes_done == seen[-1].total_bytes == src.stat().st_size
        assert all(a.bytes_done <= b.bytes_done for a, b in zip(seen, seen[1:]))
        o = s.wait(LONG)
    assert o.completed and o.status == "completed" and o.reason == "all_receivers_succeeded"
    (statuses,) = o.receivers.values()
    assert list(statuses.values()) == ["success"]
    kinds = [e.kind for e in events if e.kind != "progress"]
    assert kinds == ["downloaded_to_one", "downloaded_to_all", "transaction_done"], kinds
    assert events[-1].outcome.completed
    assert events[0].ticket == t or events[0].kind == "progress"
    assert events[0].cause is None and events[0].refusal is None


def test_wait_returns_after_on_event_saw_the_end_even_when_the_transfer_ended_first():
    """The transaction can end before `wait` is called while on_event is still catching up (a
    slow callback, a busy machine): `wait` still returns only once the callback has seen
    transaction_done. (It used to return the known outcome at once, events still pending.)"""
    gate = threading.Event()
    kinds = []

    def slow(e):
        gate.wait(LONG)
        kinds.append(e.kind)

    with ferry.Sender(receivers=1, on_event=slow) as s:
        t = s.add_bytes(os.urandom(100_000), name="b.bin")
        ferry.download_bytes(t)
        deadline = time.monotonic() + LONG
        while s.outcome is None:  # the transaction ends; the callback is held at its first event
            assert time.monotonic() < deadline, "the transaction did not end"
            time.sleep(0.01)
        assert "transaction_done" not in kinds
        gate.set()
        o = s.wait(LONG)
        assert kinds and kinds[-1] == "transaction_done", kinds
    assert o.completed


def test_tickets_in_either_form_and_as_ticket_objects(tmp_path):
    blob = os.urandom(100_000)
    with ferry.Sender(receivers=2, ticket_format="url") as s:
        t = s.add_bytes(blob, name="blob.bin")
        assert t.startswith("ferry+tcp://127.0.0.1:") and "kind=file" in t and "name=blob.bin" in t
        info = ferry.Ticket(t)
        assert info.url == t and info == t and info == info.compact and hash(info) == hash(ferry.Ticket(info.compact))
        assert info.ref_id in t and info.source == "ferry-sender"
        # Receivers take a str of either form or a Ticket.
        assert ferry.download_bytes(info, name="site-1") == blob
        assert ferry.get(info.compact, tmp_path / "out", name="site-2").read_bytes() == blob
        assert s.wait(LONG).completed
    assert 'kind="file"' in repr(info) and 'name="blob.bin"' in repr(info)
    with pytest.raises(ferry.UsageError, match="ticket_format"):
        ferry.Sender(ticket_format="yaml")
    # A ticket carries at most 1,024 bytes of its sender's name: a longer one is refused here,
    # not by every receiver of the tickets it would print.
    with pytest.raises(ferry.UsageError, match="name is 1025 bytes.*shorter cell name"):
        ferry.Sender(name="n" * 1025)
    with pytest.raises(ferry.UsageError, match="malformed ticket"):
        ferry.Ticket(info.compact[:-3])
    with pytest.raises(ferry.UsageError, match="expected a str"):
        ferry.get(42, tmp_path)


def test_files_keep_their_relative_names_and_bytes_round_trip(tmp_path):
    src = write_file(tmp_path / "a.bin", 1000)
    blob = os.urandom(3 * (1 << 20) + 7)
    with ferry.Sender(receivers=1) as s:
        t_file = s.add_file(src, name="ckpt/shard-0.bin")
        t_bytes = s.add_bytes(blob, name="blob.bin")
        t_array = s.add_bytes(bytearray(b"copied once"))
        t_mem = s.add_bytes(blob[:1000])
        p = ferry.get(t_file, tmp_path / "out")
        assert p == tmp_path / "out" / "ckpt" / "shard-0.bin" and p.read_bytes() == src.read_bytes()
        assert ferry.get(t_bytes, tmp_path / "out").read_bytes() == blob
        assert ferry.download_bytes(t_array) == b"copied once"
        assert ferry.download_bytes(t_mem) == blob[:1000]
        o = s.wait(LONG)
    assert o.completed
    assert list(o.receivers) == [t_file, t_bytes, t_array, t_mem]


def test_the_ferry_command_reads_python_tickets_and_python_reads_its_tickets(tmp_path, ferry_bin):
    src = write_file(tmp_path / "weights.bin", 2 * (1 << 20) + 5)
    with ferry.Sender(receivers=1) as s:
        t = s.add_file(src)
        r = subprocess.run(
            [str(ferry_bin), "get", t, "-o", str(tmp_path / "cli")],
            capture_output=True,
            text=True,
            timeout=LONG,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(tmp_path / "cli" / "weights.bin")
        assert sha256(tmp_path / "cli" / "weights.bin") == sha256(src)
        assert s.wait(LONG).completed

    serve = subprocess.Popen(
        [str(ferry_bin), "serve", str(src), "--listen", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ticket = serve.stdout.readline().strip()
        assert ticket.startswith("ferry1") and ferry.Ticket(ticket).kind == "file", serve.stderr.read()
        p = ferry.get(ticket, tmp_path / "py")
        assert sha256(p) == sha256(src)
        assert serve.wait(timeout=LONG) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_identity_mode_refuses_a_receiver_outside_allow(tmp_path):
    src = write_file(tmp_path / "a.bin", 4096)
    events = []
    with ferry.Sender(allow=["site-1"], timeout=LONG, on_event=events.append) as s:
        t = s.add_file(src)
        with pytest.raises(ferry.TransferError, match="allowed receivers") as e:
            ferry.get(t, tmp_path / "x", name="site-9")
        assert e.value.refusal == "NOT_EXPECTED_RECEIVER"
        assert not (tmp_path / "x" / "a.bin").exists()
        assert ferry.get(t, tmp_path / "y", name="site-1").read_bytes() == src.read_bytes()
        o = s.wait(LONG)
    assert o.completed
    assert list(o.receivers[t]) == ["site-1"]
    (refused,) = [e for e in events if e.kind == "refused"]
    assert (refused.receiver, refused.refusal, refused.ticket) == ("site-9", "NOT_EXPECTED_RECEIVER", t)


def test_refusals_are_typed_codes_a_program_can_match(tmp_path):
    """Count mode: a receiver beyond the count is refused while the one holding the place is
    downloading (RECEIVER_LIMIT_REACHED); once the transaction is over, a late pull is refused
    (TRANSACTION_FINISHED)."""
    big = write_file(tmp_path / "big.bin", 128 << 20)
    events, tried = [], []
    with ferry.Sender(receivers=1, timeout=LONG, on_event=events.append) as s:
        t_big, t_small = s.add_file(big), s.add_bytes(b"small")

        def progress(p):
            # site-1 is mid-transfer, connected: it holds the only place.
            if not tried and p.state == "active" and p.bytes_done > 0:
                try:
                    ferry.download_bytes(t_small, name="site-2")
                    tried.append(None)
                except ferry.TransferError as e:
                    tried.append(e)

        ferry.get(t_big, tmp_path / "out", name="site-1", progress=progress)
        assert tried and tried[0] is not None, "site-2 was served although site-1 held the place"
        assert tried[0].refusal == "RECEIVER_LIMIT_REACHED"
        assert "already serves all the receivers it expects" in str(tried[0])
        assert ferry.download_bytes(t_small, name="site-1") == b"small"
        assert s.wait(LONG).completed
        with pytest.raises(ferry.TransferError, match="transfer is over") as e:
            ferry.download_bytes(t_small, name="site-3")
        assert e.value.refusal == "TRANSACTION_FINISHED"
    refused = [(e.receiver, e.refusal, e.ticket) for e in events if e.kind == "refused"]
    assert ("site-2", "RECEIVER_LIMIT_REACHED", t_small) in refused, refused
    # Failures without a refusal have none.
    with pytest.raises(ferry.UsageError) as e:
        ferry.get("ferry+tcp://nowhere", tmp_path)
    assert e.value.refusal is None


def test_bad_input_is_a_usage_error_and_transfers_nothing(tmp_path):
    with pytest.raises(ferry.UsageError, match="malformed ticket"):
        ferry.get("ferry+tcp://nowhere", tmp_path)
    with pytest.raises(ferry.UsageError, match="expected tcp://"):
        ferry.Sender(listen="http://127.0.0.1:0")
    with pytest.raises(ferry.UsageError, match="cannot serve"):
        with ferry.Sender() as s:
            s.add_file(tmp_path / "missing.bin")
    with pytest.raises(ferry.UsageError, match="not a plain relative path"):
        with ferry.Sender() as s:
            s.add_bytes(b"x", name="../escape")
    src = write_file(tmp_path / "a.bin", 10)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.bin").write_bytes(b"old")
    with ferry.Sender() as s:
        t = s.add_file(src)
        with pytest.raises(ferry.UsageError, match="already exists; pass overwrite=True"):
            ferry.get(t, tmp_path / "out")
        assert (tmp_path / "out" / "a.bin").read_bytes() == b"old"
        assert ferry.get(t, tmp_path / "out", overwrite=True).read_bytes() == src.read_bytes()
        with pytest.raises(ferry.UsageError, match="tensor dict"):
            ferry.download_tensors(t)
    with pytest.raises(ferry.UsageError, match="TLS sender"):
        ferry.get(ferry.Ticket(t).url.replace("ferry+tcp://", "ferry+stcp://"), tmp_path)
    assert issubclass(ferry.UsageError, ferry.FerryError) and issubclass(ferry.TransferError, ferry.FerryError)
    assert issubclass(ferry.Interrupted, KeyboardInterrupt) and not issubclass(ferry.Interrupted, Exception)


def test_a_ticket_answered_by_another_cell_is_refused(tmp_path):
    src = write_file(tmp_path / "a.bin", 10)
    with ferry.Sender(name="ferry-sender") as s:
        t = s.add_file(src)
        forged = ferry.Ticket(t).url.replace("/ferry-sender/", "/other-sender/")
        with pytest.raises(ferry.UsageError, match='is the cell "ferry-sender", but the ticket names the sender "other-sender"'):
            ferry.get(forged, tmp_path / "out")
        assert not (tmp_path / "out" / "a.bin").exists()


def test_a_sender_that_is_gone_is_a_transfer_error(tmp_path):
    src = write_file(tmp_path / "a.bin", 10)
    s = ferry.Sender()
    t = s.add_file(src)
    s.close()
    with pytest.raises(ferry.TransferError, match="nothing listens"):
        ferry.get(t, tmp_path / "out")
    assert not (tmp_path / "out" / "a.bin").exists()
    with pytest.raises(ferry.UsageError, match="closed"):
        s.add_bytes(b"late")


def test_exit_deletes_the_transaction(tmp_path):
    src = write_file(tmp_path / "a.bin", 10)
    confirmed = threading.Event()

    def on_event(e):
        if e.kind == "downloaded_to_one":
            confirmed.set()

    with ferry.Sender(receivers=2, on_event=on_event) as s:
        t = s.add_file(src)
        ferry.get(t, tmp_path / "one")
        # The receiver's confirm travels after get() returns; wait for the sender to count it.
        assert confirmed.wait(LONG)
    o = s.outcome
    assert o is not None and not o.completed and o.done_status == "deleted" and o.reason == "deleted"
    assert list(o.receivers[t].values()) == ["success"]
    assert s.wait(0).done_status == "deleted"


def test_wait_times_out_with_none_and_an_event_callback_error_does_not_stop_the_transfer(tmp_path):
    src = write_file(tmp_path / "a.bin", 10)
    calls = []

    def broken(e):
        calls.append(e.kind)
        raise RuntimeError("callback bug")

    hook_calls = []
    old = __import__("sys").unraisablehook
    __import__("sys").unraisablehook = lambda u: hook_calls.append(u)
    try:
        with ferry.Sender(receivers=1, on_event=broken) as s:
            t = s.add_file(src)
            assert s.wait(0.05) is None
            ferry.get(t, tmp_path / "out")
            assert s.wait(LONG).completed
    finally:
        __import__("sys").unraisablehook = old
    assert "transaction_done" in calls
    assert hook_calls and isinstance(hook_calls[0].exc_value, RuntimeError)


def test_other_threads_run_while_a_download_waits(tmp_path):
    """The GIL is released while bytes move: a Python thread keeps counting meanwhile."""
    src = write_file(tmp_path / "big.bin", 64 << 20)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    with ferry.Sender() as s:
        t = s.add_file(src)
        th = threading.Thread(target=count)
        th.start()
        before = len(ticks)
        # No progress callback: nothing runs Python code during the call, so the counter
        # thread only runs if the call released the GIL.
        ferry.get(t, tmp_path / "out")
        during = len(ticks) - before
        stop.set()
        th.join()
    assert during > 0
