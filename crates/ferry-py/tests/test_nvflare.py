"""Interop with real NVFlare 2.9 cells (the scripts of tests/py, run as subprocesses): files and
tensor dicts both ways, outcomes COMPLETED on both sides."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

import ferry
from conftest import LONG, PY_PEERS, sha256, write_file

pytest.importorskip("nvflare")


def checksums(arrays):
    """Shaped like ferry_peer.array_checksums."""
    out = {}
    for name, a in arrays.items():
        c = np.asarray(a, order="C")
        out[name] = {"dtype": c.dtype.str, "shape": list(c.shape), "sha256": hashlib.sha256(c.tobytes()).hexdigest()}
    return out


def pin_of(ticket):
    """The `size=...&b3=...` part of a URL ticket: the pin of a ticket's content."""
    t = ferry.Ticket(ticket)
    return f"size={t.size}&b3={t.blake3}"


def ref_of(ticket):
    return ferry.Ticket(ticket).ref_id


def test_ferry_receives_a_file_and_a_tensor_dict_from_an_nvflare_sender(peers, tmp_path):
    src = write_file(tmp_path / "model.bin", (3 << 20) + 17)
    nv = peers(
        [
            sys.executable,
            str(PY_PEERS / "nv_download_sender.py"),
            "--listen",
            "--file",
            str(src),
            "--chunk-size",
            str(1 << 20),
            "--tensors",
            "6",
            "--num-receivers",
            "1",
            "--timeout",
            str(LONG),
            "--exit-on-stdin-eof",
            "--log-level",
            "WARNING",
        ]
    )
    ready = nv.next("READY")
    host = f"127.0.0.1:{ready['port']}"
    f = ready["file"]
    # NVFlare hands out ref ids, not tickets. A ticket is where, who, what, and the pin (size
    # and digest) of the content the receiver expects: the pins come from a ferry sender of the
    # same content (the same file; the same arrays, made as the NVFlare script makes them).
    sys.path.insert(0, str(PY_PEERS))
    import ferry_peer

    with ferry.Sender() as pins:
        file_pin = pin_of(pins.add_file(src))
        tensors_pin = pin_of(pins.add_tensors(ferry_peer.make_arrays(11, 6)))
    file_ticket = f"ferry+tcp://{host}/{ready['fqcn']}/{f['ref_id']}?kind=file&name=model.bin&{file_pin}"
    tensors_ticket = f"ferry+tcp://{host}/{ready['fqcn']}/{ready['tensors']['ref_id']}?kind=tensors&name=t.safetensors&{tensors_pin}"
    path = ferry.get(file_ticket, tmp_path / "out")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"] == sha256(src)
    got = ferry.download_tensors(tensors_ticket)
    assert checksums(got) == ready["tensors"]["checksums"]
    outcome = nv.next("RESULT", event="outcome")
    assert outcome["status"] == "completed" and outcome["completed"], outcome


def test_an_nvflare_receiver_gets_a_file_and_a_tensor_dict_from_a_ferry_sender(peers, tmp_path):
    src = write_file(tmp_path / "model.bin", (5 << 20) + 3)
    rng = np.random.default_rng(3)
    arrays = {
        "layer0.weight": rng.standard_normal((256, 64)).astype(np.float32),
        "layer0.bias": rng.standard_normal(64).astype(np.float64),
        "steps": np.arange(100, dtype=np.int64),
    }
    (tmp_path / "nv").mkdir()
    with ferry.Sender(receivers=1) as s:
        t_file = s.add_file(src)
        t_tensors = s.add_tensors(arrays)
        nv = peers(
            [
                sys.executable,
                str(PY_PEERS / "nv_download_receiver.py"),
                "--connect",
                s.url,
                "--source",
                s.name,
                "--file-ref",
                ref_of(t_file),
                "--tensors-ref",
                ref_of(t_tensors),
                "--out-dir",
                str(tmp_path / "nv"),
                "--timeout",
                str(LONG),
                "--exit-on-stdin-eof",
                "--log-level",
                "WARNING",
            ]
        )
        got_file = nv.next("RESULT", event="file")
        assert got_file["error"] is None and got_file["sha256"] == sha256(src), got_file
        got_tensors = nv.next("RESULT", event="tensors")
        assert got_tensors["error"] is None and got_tensors["arrays"] == checksums(arrays), got_tensors
        assert nv.next("RESULT", event="downloads_done")["all_ok"]
        outcome = s.wait(LONG)
    assert outcome.completed, outcome
    assert all(st == {"site-1": "success"} for st in outcome.receivers.values()), outcome.receivers
