"""Set tickets (one ticket for a whole `ferry serve` of a directory or several paths) fetched by
`ferry.get`: the verified manifest, every file with its mode and time, one progress for the
set, resume after an interruption, and existing destinations refused."""

from __future__ import annotations

import os
import subprocess

import pytest

import ferry
from conftest import LONG, sha256, write_file


class Serve:
    """`ferry serve PATHS...` on a free port; its first stdout line is the ticket."""

    def __init__(self, ferry_bin, *paths, receivers=1):
        self.proc = subprocess.Popen(
            [str(ferry_bin), "serve", *map(str, paths), "--listen", "tcp://127.0.0.1:0", "--receivers", str(receivers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ticket = self.proc.stdout.readline().strip()
        if not self.ticket:
            raise AssertionError(f"ferry serve printed no ticket: {self.proc.stderr.read()}")

    def wait(self):
        code = self.proc.wait(timeout=LONG)
        return code, self.proc.stderr.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serve(ferry_bin):
    started = []

    def start(*paths, receivers=1):
        s = Serve(ferry_bin, *paths, receivers=receivers)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def make_tree(root):
    """ckpt/{a.bin, sub/b.bin, empty.txt}: files with their own modes and times."""
    (root / "ckpt" / "sub").mkdir(parents=True)
    a = write_file(root / "ckpt" / "a.bin", (2 << 20) + 11)
    b = write_file(root / "ckpt" / "sub" / "b.bin", 70_000)
    e = root / "ckpt" / "empty.txt"
    e.write_bytes(b"")
    os.chmod(a, 0o640)
    os.chmod(b, 0o755)
    os.utime(b, (1_600_000_000, 1_600_000_000))
    return {"a.bin": a, "sub/b.bin": b, "empty.txt": e}


def test_a_served_directory_arrives_whole_with_modes_and_times(tmp_path, serve):
    files = make_tree(tmp_path / "src")
    s = serve(tmp_path / "src" / "ckpt")
    t = ferry.Ticket(s.ticket)
    assert (t.kind, t.name) == ("set", "ckpt")
    seen = []
    root = ferry.get(s.ticket, tmp_path / "out", progress=seen.append)
    assert root == tmp_path / "out" / "ckpt"
    for rel, src in files.items():
        got = root / rel
        assert sha256(got) == sha256(src), rel
        assert got.stat().st_mode & 0o777 == src.stat().st_mode & 0o777, rel
        assert int(got.stat().st_mtime) == int(src.stat().st_mtime), rel
    assert not list(root.rglob("*.part"))
    total = sum(f.stat().st_size for f in files.values())
    last = seen[-1]
    assert (last.state, last.files_done, last.files, last.total_bytes) == ("completed", 3, 3, total), last
    assert last.bytes_done == total and last.resumed_from == 0 and last.chunks_done is None
    assert all(a.bytes_done <= b.bytes_done for a, b in zip(seen, seen[1:]))
    code, err = s.wait()
    assert code == 0, err


def test_several_paths_are_one_set_below_out_dir(tmp_path, serve):
    a = write_file(tmp_path / "a.bin", 1000)
    (tmp_path / "d").mkdir()
    b = write_file(tmp_path / "d" / "b.bin", 2000)
    s = serve(a, tmp_path / "d")
    assert ferry.Ticket(s.ticket).kind == "set"
    root = ferry.get(s.ticket, tmp_path / "out")
    assert root == tmp_path / "out"
    assert sha256(root / "a.bin") == sha256(a) and sha256(root / "d" / "b.bin") == sha256(b)
    assert s.wait()[0] == 0


def test_overwrite_replaces_what_is_there(tmp_path, serve):
    files = make_tree(tmp_path / "src")
    out = tmp_path / "out"
    (out / "ckpt").mkdir(parents=True)
    (out / "ckpt" / "empty.txt").write_bytes(b"old")
    s = serve(tmp_path / "src" / "ckpt")
    with pytest.raises(ferry.UsageError, match="already exists"):
        ferry.get(s.ticket, out)
    assert (out / "ckpt" / "empty.txt").read_bytes() == b"old"
    root = ferry.get(s.ticket, out, overwrite=True)
    assert all(sha256(root / rel) == sha256(src) for rel, src in files.items())
    assert s.wait()[0] == 0


def test_existing_files_are_refused_then_kept_with_resume(tmp_path, serve):
    files = make_tree(tmp_path / "src")
    out = tmp_path / "out"
    (out / "ckpt").mkdir(parents=True)
    # One member is already here, complete; another name holds other bytes.
    (out / "ckpt" / "a.bin").write_bytes(files["a.bin"].read_bytes())
    s = serve(tmp_path / "src" / "ckpt")
    with pytest.raises(ferry.UsageError, match="already exists; pass overwrite=True .*resume=True"):
        ferry.get(s.ticket, out)
    assert not (out / "ckpt" / "sub").exists(), "nothing is fetched when a destination is refused"
    seen = []
    # This process is the same receiver (ferry-py-PID) as before: the sender's only place is
    # its own.
    root = ferry.get(s.ticket, out, resume=True, progress=seen.append)
    assert all(sha256(root / rel) == sha256(src) for rel, src in files.items())
    size_a = files["a.bin"].stat().st_size
    assert seen[-1].resumed_from == size_a and seen[-1].state == "completed"
    assert seen[-1].bytes_done == sum(f.stat().st_size for f in files.values()) - size_a
    assert s.wait()[0] == 0


def test_an_interrupted_set_resumes_where_it_stopped(tmp_path, serve):
    (tmp_path / "src" / "big").mkdir(parents=True)
    # Large enough that the first progress report (~50 ms after the start) comes long before
    # the end.
    files = {n: write_file(tmp_path / "src" / "big" / n, 128 << 20) for n in ("x.bin", "y.bin")}
    s = serve(tmp_path / "src" / "big")
    out = tmp_path / "out"
    token = ferry.CancelToken()
    stopped_at = []

    def progress(p):
        if not token.cancelled and p.bytes_done > 0:
            stopped_at.append(p.bytes_done)
            token.cancel()

    with pytest.raises(ferry.Interrupted, match=r"of 2 files of big arrived.*cancelled.*resume=True") as e:
        ferry.get(s.ticket, out, resume=True, progress=progress, cancel=token)
    assert stopped_at, e.value
    parts = [p for p in (out / "big").glob("*.part") if p.stat().st_size > 0]
    assert parts, "resume=True keeps the partial files"
    assert not all((out / "big" / n).exists() for n in files), "the set did not finish"
    seen = []
    root = ferry.get(s.ticket, out, resume=True, progress=seen.append)
    assert all(sha256(root / n) == sha256(src) for n, src in files.items())
    assert seen[-1].state == "completed" and seen[-1].resumed_from > 0
    assert seen[-1].resumed_from + seen[-1].bytes_done == 256 << 20
    assert not list((out / "big").glob("*.part*"))
    assert s.wait()[0] == 0


def test_a_set_ticket_is_for_get_only(tmp_path, serve):
    make_tree(tmp_path / "src")
    s = serve(tmp_path / "src" / "ckpt")
    with pytest.raises(ferry.UsageError, match="set ticket.*ferry.get"):
        ferry.download_bytes(s.ticket)
    with pytest.raises(ferry.UsageError, match="set ticket.*ferry.get"):
        ferry.download_tensors(s.ticket)
