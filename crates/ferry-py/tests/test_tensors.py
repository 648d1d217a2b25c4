"""Tensor dicts: numpy arrays (always) and torch tensors (when torch is installed) sent from
their own memory and received as views of ferry's buffers."""

from __future__ import annotations

import gc
import subprocess
import weakref

import numpy as np
import pytest

import ferry
from conftest import LONG


def sample():
    """Every dtype numpy has that safetensors knows, a 0-d array, an empty one, tied names."""
    rng = np.random.default_rng(5)
    d = {
        "layer.0.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(17),
        "half": rng.standard_normal((8, 8)).astype(np.float16),
        "idx": rng.integers(-100, 100, (3, 5, 7), dtype=np.int32),
        "u8": rng.integers(0, 255, 1000, dtype=np.uint8),
        "i8": rng.integers(-100, 100, 9, dtype=np.int8),
        "i16": rng.integers(-100, 100, 9, dtype=np.int16),
        "u16": rng.integers(0, 100, 9, dtype=np.uint16),
        "u32": rng.integers(0, 100, 9, dtype=np.uint32),
        "i64": rng.integers(-(2**40), 2**40, 100, dtype=np.int64),
        "u64": rng.integers(0, 2**40, 4, dtype=np.uint64),
        "mask": rng.integers(0, 2, 11).astype(bool),
        "cplx": (rng.standard_normal(6) + 1j * rng.standard_normal(6)).astype(np.complex64),
        "step": np.array(42, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float64),
    }
    d["tied"] = d["layer.0.weight"]
    return d


def test_a_numpy_dict_arrives_with_names_dtypes_shapes_and_values(tmp_path):
    d = sample()
    with ferry.Sender(receivers=1) as s:
        t = s.add_tensors(d, name="model.safetensors")
        assert (ferry.Ticket(t).kind, ferry.Ticket(t).name) == ("tensors", "model.safetensors")
        got = ferry.download_tensors(t)
        # The sender's order, except that a tied name follows the name it is tied to.
        assert [k for k in got if k != "tied"] == [k for k in d if k != "tied"]
        assert set(got) == set(d)
        for k, v in d.items():
            assert got[k].dtype == v.dtype, k
            assert got[k].shape == v.shape, k
            assert np.array_equal(got[k], v), k
        assert s.wait(LONG).completed
    # Views of ferry's buffers: read-only, and tied names share one buffer again.
    w = got["layer.0.weight"]
    assert not w.flags.writeable and not w.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0
    assert np.shares_memory(got["tied"], w)
    assert not np.shares_memory(got["layer.0.bias"], w)
    base = w
    while getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, ferry.TensorBuffer) and base.readonly


def test_writable_gives_private_copies(tmp_path):
    d = sample()
    with ferry.Sender(receivers=1) as s:
        got = ferry.download_tensors(s.add_tensors(d), writable=True)
        s.wait(LONG)
    w = got["layer.0.weight"]
    assert w.flags.writeable
    w += 1.0
    assert np.array_equal(w, d["layer.0.weight"] + 1.0)
    assert np.shares_memory(got["tied"], w), "tied names still share their (private) buffer"


def test_ferry_get_writes_a_loadable_safetensors_file(tmp_path):
    from safetensors.numpy import load_file

    d = {k: v for k, v in sample().items() if k != "tied"}
    with ferry.Sender(receivers=1) as s:
        p = ferry.get(s.add_tensors(d, name="ckpt/model.safetensors"), tmp_path)
        assert s.wait(LONG).completed
    assert p == tmp_path / "ckpt" / "model.safetensors"
    back = load_file(str(p))
    assert set(back) == set(d)
    for k, v in d.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_a_relay_serves_a_python_tensor_dict_to_python_receivers(tmp_path, ferry_bin):
    """Sender.add_tensors -> `ferry relay` -> download_tensors and ferry.get: the relay's
    ticket is the origin's kind, size and digest, and both receivers get the sender's dict."""
    from safetensors.numpy import load_file

    d = sample()
    with ferry.Sender(receivers=1) as s:
        t = ferry.Ticket(s.add_tensors(d, name="model.safetensors"))
        relay = subprocess.Popen(
            [str(ferry_bin), "relay", t.compact, "--listen", "tcp://127.0.0.1:0",
             "--receivers", "2", "--spill-dir", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            down = ferry.Ticket(relay.stdout.readline().strip())
            assert (down.kind, down.size, down.blake3) == ("tensors", t.size, t.blake3)
            assert down.address != t.address
            # Two receivers: each under its own name (one process would otherwise be one).
            got = ferry.download_tensors(down, name="site-1")
            assert set(got) == set(d)
            for k, v in d.items():
                assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
            assert np.shares_memory(got["tied"], got["layer.0.weight"])
            p = ferry.get(down, tmp_path / "out", name="site-2")
            back = load_file(str(p))
            assert set(back) == set(d)
            for k, v in d.items():
                assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
            assert relay.wait(timeout=LONG) == 0, relay.stderr.read()
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()
        # The origin served one receiver: the relay.
        o = s.wait(LONG)
        assert o.completed


def test_the_sender_serves_the_arrays_own_memory_and_releases_it(tmp_path):
    """add_tensors keeps the arrays alive (no copy) until the transaction is over, even when
    the caller drops them; then it lets them go."""
    a = np.arange(1 << 20, dtype=np.float32)
    expected = a.copy()
    ref = weakref.ref(a)
    s = ferry.Sender(receivers=1)
    t = s.add_tensors({"a": a})
    del a
    gc.collect()
    assert ref() is not None, "the sender holds the array it serves"
    got = ferry.download_tensors(t)
    assert np.array_equal(got["a"], expected)
    assert s.wait(LONG).completed
    s.close()
    # The last reference went away on a runtime thread; PyO3 applies such releases the next
    # time Python is entered from Rust.
    ferry.Sender().close()
    gc.collect()
    assert ref() is None, "the array is released once the transaction is over"


def test_arrays_that_cannot_be_sent_without_copying_are_refused_with_advice():
    with ferry.Sender() as s:
        with pytest.raises(ferry.UsageError, match="ascontiguousarray"):
            s.add_tensors({"t": np.ones((4, 4), np.float32).T})
        with pytest.raises(ferry.UsageError, match="big-endian"):
            s.add_tensors({"b": np.ones(3, dtype=">f4")})
        with pytest.raises(ferry.UsageError, match="no safetensors equivalent"):
            s.add_tensors({"s": np.array(["a", "b"])})
        with pytest.raises(ferry.UsageError, match="numpy array or a torch tensor"):
            s.add_tensors({"l": [1, 2, 3]})
        with pytest.raises(ferry.UsageError, match="mapping"):
            s.add_tensors([np.ones(3)])
        with pytest.raises(ferry.UsageError, match="names must be str"):
            s.add_tensors({1: np.ones(3)})
        with pytest.raises(ferry.UsageError, match="framework"):
            ferry.download_tensors("ferry+tcp://h:1/s/R1?kind=tensors", framework="jax")


def test_torch_tensors_both_ways():
    torch = pytest.importorskip("torch")
    d = {
        "w": torch.randn(64, 32),
        "bf": torch.randn(8, 8).to(torch.bfloat16),
        "grad": torch.randn(5, requires_grad=True),
        "n": torch.tensor(3, dtype=torch.int64),
    }
    with ferry.Sender(receivers=1) as s:
        t = s.add_tensors(d)
        got = ferry.download_tensors(t, framework="torch")
        assert s.wait(LONG).completed
    for k, v in d.items():
        assert got[k].dtype == v.dtype and tuple(got[k].shape) == tuple(v.shape), k
        assert torch.equal(got[k], v.detach()), k
    with ferry.Sender() as s:
        with pytest.raises(ferry.UsageError, match="contiguous"):
            s.add_tensors({"t": torch.ones(4, 4).t()})
