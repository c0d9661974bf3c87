import pytest
import scipy.stats
import torch

from fedsim.rng import Streams, splitmix64, splitmix64_tensor


def test_tensor_splitmix_matches_python_reference():
    values = [0, 1, 2, 12345, 2**62 + 7, 2**63 - 1, -1, -(2**63)]
    got = splitmix64_tensor(torch.tensor(values, dtype=torch.int64)).tolist()
    want = [splitmix64(v & (2**64 - 1)) for v in values]
    assert [g & (2**64 - 1) for g in got] == want
    # Published first output of SplitMix64 seeded with 0 (Vigna's reference implementation).
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_client_rows_do_not_depend_on_batch_composition():
    s = Streams(7)
    alone = s.uniform("batch", torch.tensor([5]), 3, (4, 6))
    together = s.uniform("batch", torch.tensor([0, 5, 9]), 3, (4, 6))
    assert torch.equal(alone[0], together[1])
    assert not torch.equal(together[0], together[1])


def test_keys_separate_purpose_client_round_and_seed():
    s = Streams(0)
    base = s.key("batch", 1, 2)
    others = [s.key("init", 1, 2), s.key("batch", 2, 2), s.key("batch", 1, 3), Streams(1).key("batch", 1, 2)]
    assert len({base, *others}) == 5
    assert s.key("batch", 1, 2) == Streams(0).key("batch", 1, 2)


def test_uniform_is_uniform_and_in_range():
    u = Streams(3).uniform("x", torch.arange(50), 0, (2000,), dtype=torch.float64).flatten().numpy()
    assert u.min() >= 0 and u.max() < 1
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-4
    u32 = Streams(3).uniform("x", torch.arange(50), 0, (2000,), dtype=torch.float32)
    assert float(u32.max()) < 1.0


def test_randint_respects_per_client_bounds():
    high = torch.tensor([1, 3, 10])
    r = Streams(0).randint("b", torch.arange(3), 0, high, (1000,))
    assert (r >= 0).all() and (r < high[:, None]).all()
    assert set(r[2].tolist()) == set(range(10))
    assert (r[0] == 0).all()


def test_generators_reproducible():
    a = torch.rand(5, generator=Streams(1).generator("sample", round=4))
    b = torch.rand(5, generator=Streams(1).generator("sample", round=4))
    c = torch.rand(5, generator=Streams(1).generator("sample", round=5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert Streams(1).numpy("p").integers(1 << 30) == Streams(1).numpy("p").integers(1 << 30)


def test_seed_must_be_int():
    with pytest.raises(TypeError, match="seed"):
        Streams("0")


def test_numpy_words_on_cpu_equal_the_tensor_path_bit_for_bit():
    """CPU draws go through NumPy uint64 arrays, accelerators through int64 tensor ops: the same bits."""
    import numpy as np

    from fedsim.rng import splitmix64_numpy

    values = [0, 1, 2, 12345, 2**62 + 7, 2**63 - 1, -1, -(2**63)]
    got = splitmix64_numpy(np.array(values, dtype=np.int64).view(np.uint64)).tolist()
    assert got == [splitmix64(v & (2**64 - 1)) for v in values]
    s = Streams(2**40 + 3)
    clients = torch.tensor([0, 7, 2**40, 2**63 - 1, 5])
    for round, shape in ((0, (3, 32)), (None, ()), (17, (5,))):
        assert torch.equal(s.bits("batch", clients, round, shape), s._tensor_words("batch", clients, round, shape))
    u = s.uniform("x", clients[::2], 4, (64,), dtype=torch.float64)   # a non-contiguous view of the ids
    words = s._tensor_words("x", clients[::2].contiguous(), 4, (64,))
    assert torch.equal(u, ((words >> 11) & ((1 << 53) - 1)).to(torch.float64) / (1 << 53))
