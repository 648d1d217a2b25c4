"""The python examples of docs/python.md, run as they stand (the test supplies `publish` and
the tickets they name)."""

from __future__ import annotations

import asyncio
import re
import textwrap
import threading

import numpy as np
import pytest

import ferry
from conftest import LONG, REPO


def blocks():
    text = (REPO / "docs" / "python.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_guide_has_its_three_examples():
    assert len(blocks()) == 3


def test_the_send_example(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    monkeypatch.chdir(tmp_path)
    save_file({"x": np.arange(10, dtype=np.float32)}, "checkpoint.safetensors")
    got, errors, threads = [], [], []

    def publish(tickets):
        def receiver(i):
            # Four receivers in one process: each needs a name of its own (one process is
            # otherwise one receiver, ferry-py-PID).
            name = f"site-{i}"
            try:
                for t in tickets:
                    if ferry.Ticket(t).kind == "tensors":
                        got.append(ferry.download_tensors(t, name=name))
                    else:
                        got.append(ferry.get(t, tmp_path / f"r{i}", name=name))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads.extend(threading.Thread(target=receiver, args=(i,)) for i in range(4))
        for th in threads:
            th.start()

    send = blocks()[0]
    ns = {"publish": publish, "print": lambda *a: None}
    exec(compile(send, "docs/python.md", "exec"), ns)
    for th in threads:
        th.join(LONG)
    assert not errors, errors
    assert ns["outcome"].completed and len(got) == 12


@pytest.fixture
def tickets(tmp_path):
    s = ferry.Sender(receivers=1)
    src = tmp_path / "f.bin"
    src.write_bytes(b"file")
    t = {
        "file_ticket": s.add_file(src),
        "tensors_ticket": s.add_tensors({"w": np.ones(3, np.float32)}),
        "bytes_ticket": s.add_bytes(b"bytes"),
    }
    yield s, t
    s.close()


def test_the_receive_example(tickets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sender, ns = tickets
    ns = dict(ns, ferry=ferry)
    exec(compile(blocks()[1], "docs/python.md", "exec"), ns)
    assert ns["path"].read_bytes() == b"file" and ns["data"] == b"bytes"
    assert sender.wait(LONG).completed


def test_the_asyncio_example(tickets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sender, ns = tickets
    ns = dict(ns, ferry=ferry)
    body = "async def _example():\n" + textwrap.indent(blocks()[2], "    ") + "    return path, tensors, data\n"
    exec(compile(body, "docs/python.md", "exec"), ns)
    path, tensors, data = asyncio.run(ns["_example"]())
    assert path.read_bytes() == b"file" and data == b"bytes" and tensors["w"].shape == (3,)
    assert sender.wait(LONG).completed
