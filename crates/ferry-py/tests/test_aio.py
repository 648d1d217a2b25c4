"""asyncio: aget / aget_tensors / adownload_bytes, progress on the event loop, and a cancelled
task cancelling its transfer."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

import ferry
from conftest import LONG, sha256, write_file
from test_faults import assert_withdrew, big, end_sender, start_sender  # noqa: F401


def test_async_downloads(tmp_path):
    src = write_file(tmp_path / "a.bin", 3 << 20)
    arrays = {"w": np.arange(1000, dtype=np.float64)}

    async def main():
        loop = asyncio.get_running_loop()
        threads = set()
        with ferry.Sender(receivers=1) as s:
            t_file, t_tensors, t_bytes = s.add_file(src), s.add_tensors(arrays), s.add_bytes(b"hello")

            def on_progress(p):
                threads.add(asyncio.get_running_loop() is loop)

            path, tensors, data = await asyncio.gather(
                ferry.aget(t_file, tmp_path / "out", progress=on_progress),
                ferry.aget_tensors(t_tensors),
                ferry.adownload_bytes(t_bytes),
            )
            outcome = await loop.run_in_executor(None, s.wait, LONG)
        return path, tensors, data, outcome, threads

    path, tensors, data, outcome, threads = asyncio.run(main())
    assert sha256(path) == sha256(src)
    assert np.array_equal(tensors["w"], arrays["w"])
    assert data == b"hello"
    assert outcome.completed
    # Three overlapping calls of one process are one receiver, over one cell.
    assert all(st == {f"ferry-py-{os.getpid()}": "success"} for st in outcome.receivers.values()), outcome
    assert threads == {True}, "progress callbacks run on the event loop"


def test_cancelling_the_task_cancels_the_transfer(peers, big, tmp_path):
    sender, ticket, pid = start_sender(peers, big)
    out = tmp_path / "out"

    async def main():
        stalled = asyncio.Event()

        def progress(p):
            if not stalled.is_set() and p.state == "active" and p.bytes_done > 0:
                stalled.set()

        task = asyncio.ensure_future(ferry.aget(ticket, out, progress=progress, name="site-1"))
        await stalled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not (out / "big.bin").exists() and not (out / "big.bin.part").exists()
    assert_withdrew(sender, "site-1")
    end_sender(sender)
