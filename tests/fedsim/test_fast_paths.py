"""The throughput paths of the gossip round: huge-page allocations, the column-blocked mix, local training
that writes fresh tensors (never its inputs)."""

import pytest
import torch

import topologies
from fedsim import memory, mixing
from fedsim.algorithms import Gossip
from fedsim.engine import simulate
from fedsim.mixing import SparseW
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.state import init_population
from fedsim.training import LocalSGD


@pytest.mark.parametrize("shape", [(3, 5), (1100, 2048), (0, 4)])
def test_memory_empty_is_an_ordinary_tensor(shape):
    t = memory.empty(shape, dtype=torch.float32)   # (1100, 2048) float32 is 8.6 MiB: the madvise branch
    assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(1.5)
    assert bool((t == 1.5).all())
    like = memory.empty_like(torch.zeros(2, 3, dtype=torch.float64))
    assert like.shape == (2, 3) and like.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_blocked_mix_equals_dense(monkeypatch, dtype):
    """A population 'larger than the cache' is mixed in column blocks, a ragged last one included."""
    W = topologies.metropolis_hastings(topologies.random_regular(50, 4, seed=3))
    sw = SparseW.from_scipy(W, dtype=dtype)
    x = torch.randn(50, 300, generator=torch.Generator().manual_seed(0), dtype=dtype)
    whole = sw.matmul(x)                                  # small: one sparse matmul
    monkeypatch.setattr(mixing, "_BLOCK_BYTES", 128)      # 32 float32 / 16 float64 columns per block
    monkeypatch.setattr(mixing, "_CACHE_BYTES", 1 << 15)  # 50 x 300 is "larger than the cache"
    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    blocked = sw.matmul(x)
    assert len(calls) == -(-300 // (128 // x.element_size()))     # it did take the blocked path
    want = torch.as_tensor(W.toarray(), dtype=torch.float64) @ x.double()
    torch.testing.assert_close(blocked.double(), want, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    torch.testing.assert_close(blocked, whole, atol=1e-6 if dtype == torch.float32 else 1e-14, rtol=0)
    torch.testing.assert_close(sw.matmul(x[:, 0]), whole[:, 0])   # vectors still work
    torch.testing.assert_close(sw.matmul(x.t().contiguous().t()), whole)  # as do strided populations


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("momentum, weight_decay, steps", [(0.0, 0.0, 1), (0.9, 1e-3, 3)])
def test_training_never_writes_its_inputs(small_fed, fused, momentum, weight_decay, steps):
    model = build_model("mlp", (1, 8, 8), 10, (32,))
    params = init_population(model, torch.arange(8), Streams(1), shared=False)
    buffers = torch.randn(params.shape, generator=torch.Generator().manual_seed(1)) if momentum else None
    keep_p, keep_b = params.clone(), None if buffers is None else buffers.clone()
    tr = LocalSGD(model, lr=0.1, steps=steps, batch_size=16, momentum=momentum, weight_decay=weight_decay,
                  chunk=3, fused_mlp=fused)
    out, _, new_buf = tr.train(params, torch.arange(8), 0, small_fed.data, small_fed.streams, momentum=buffers)
    assert torch.equal(params, keep_p)
    assert buffers is None or torch.equal(buffers, keep_b)
    assert out.data_ptr() != params.data_ptr()
    ref = tr.train_loop(params, torch.arange(8), 0, small_fed.data, small_fed.streams, momentum=buffers)
    torch.testing.assert_close(out, ref.params, atol=1e-5, rtol=0)
    if momentum:
        torch.testing.assert_close(new_buf, ref.momentum, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["mlp", "lenet"])
def test_training_from_one_broadcast_model(small_fed, arch):
    """FedAvg hands every client an expanded view of the global model (stride 0 rows)."""
    model = build_model(arch, (1, 8, 8), 10)
    g = init_population(model, torch.zeros(1, dtype=torch.int64), Streams(0))[0]
    tr = LocalSGD(model, lr=0.1, steps=2, batch_size=8, momentum=0.5, chunk=2)
    clients = torch.arange(5)
    fast = tr.train(g.expand(5, -1), clients, 1, small_fed.data, small_fed.streams)
    slow = tr.train_loop(g.expand(5, -1), clients, 1, small_fed.data, small_fed.streams)
    torch.testing.assert_close(fast.params, slow.params, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.momentum, slow.momentum, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.losses, slow.losses, atol=1e-5, rtol=0)


def test_gossip_round_on_a_blocked_mix_equals_the_loop(small_fed, monkeypatch):
    monkeypatch.setattr(mixing, "_BLOCK_BYTES", 256)
    monkeypatch.setattr(mixing, "_CACHE_BYTES", 1 << 14)
    tr = LocalSGD(build_model("mlp", (1, 8, 8), 10, (32,)), lr=0.1, steps=2, batch_size=16, chunk=3)
    fast = simulate(Gossip(tr, same_init=False), small_fed, 3, eval_every=0).state.x
    slow = simulate(Gossip(tr, same_init=False, vectorized=False), small_fed, 3, eval_every=0).state.x
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_default_chunks_and_any_chunk_trains_the_same(small_fed):
    lenet, mlp = build_model("lenet", (1, 8, 8), 10), build_model("mlp", (1, 8, 8), 10, (32,))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert LocalSGD(lenet, lr=0.1).chunk_for(cpu) == 1 and LocalSGD(lenet, lr=0.1).chunk_for(cuda) == 256
    assert LocalSGD(mlp, lr=0.1).chunk_for(cpu) == 256 and LocalSGD(lenet, lr=0.1, chunk=3).chunk_for(cpu) == 3
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        LocalSGD(mlp, lr=0.1, chunk=0)
    params = init_population(lenet, torch.arange(8), Streams(2), shared=False)
    runs = [LocalSGD(lenet, lr=0.1, steps=2, batch_size=8, chunk=c).train(params, torch.arange(8), 0,
                                                                         small_fed.data, small_fed.streams)
            for c in (None, 1, 3, 8, 256)]
    for other in runs[1:]:   # per-client arithmetic; batch shapes differ, so float sums may round differently
        torch.testing.assert_close(other.params, runs[0].params, atol=1e-5, rtol=0)
