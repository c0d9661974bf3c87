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


def test_numpy_draws_on_cpu_equal_the_accelerator_path_bit_for_bit(monkeypatch):
    """CPU draws go through NumPy uint64 arrays, accelerators through int64 torch ops: the same bits, the same
    uniforms and integers (the torch path forced on CPU here)."""
    import numpy as np

    import fedsim.rng as rng

    values = [0, 1, 2, 12345, 2**62 + 7, 2**63 - 1, -1, -(2**63)]
    got = rng.splitmix64_numpy(np.array(values, dtype=np.int64).view(np.uint64)).tolist()
    assert got == [splitmix64(v & (2**64 - 1)) for v in values]
    s = Streams(2**40 + 3)
    clients = torch.tensor([0, 7, 2**40, 2**63 - 1, 5])
    cases = [("bits", (clients, r, shape)) for r, shape in ((0, (3, 32)), (None, ()), (17, (5,)))]
    cases += [("uniform", (clients[::2], 4, (64,), dtype)) for dtype in (torch.float64, torch.float32)]
    cases += [("randint", (clients, 9, torch.tensor([1, 3, 10, 2**40, 7]), (50,))), ("randint", (clients, 2, 6))]
    numpy_draws = [getattr(s, name)("x", *args) for name, args in cases]
    monkeypatch.setattr(rng, "_numpy_path", lambda device: False)
    for (name, args), want in zip(cases, numpy_draws):
        got = getattr(s, name)("x", *args)
        assert got.dtype == want.dtype and torch.equal(got, want), name


def test_signed_reinterprets_the_64_bits():
    """``_signed`` is the two's-complement reading of an unsigned 64-bit word (numpy's view as the reference)."""
    import numpy as np

    from fedsim.rng import _signed

    for v in (0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 0xBF58476D1CE4E5B9):
        assert _signed(v) == int(np.array([v], dtype=np.uint64).view(np.int64)[0])


def test_every_key_part_selects_its_own_stream():
    """Client and round select distinct streams in every interface; "no client" / "no round" are streams of their
    own, not client or round 1; the client ids may come in any integer dtype."""
    s = Streams(5)
    assert s.key("p", None, 3) != s.key("p", 1, 3) and s.key("p", 2, None) != s.key("p", 2, 1)
    assert s.key("p", None, None) not in {s.key("p", c, r) for c in range(4) for r in range(4)}
    gen = [torch.rand(4, generator=s.generator("p", c, r)) for c, r in ((1, 4), (2, 4), (1, 5), (None, 4))]
    assert all(not torch.equal(a, b) for i, a in enumerate(gen) for b in gen[i + 1:])
    draws = [s.numpy("p", c, r).random(4) for c, r in ((1, 4), (2, 4), (1, 5), (None, 4))]
    assert all(not (a == b).all() for i, a in enumerate(draws) for b in draws[i + 1:])
    ids = torch.tensor([3, 1, 4])
    for dtype in (torch.int32, torch.int16):
        assert torch.equal(s.bits("b", ids.to(dtype), 2, (3,)), s.bits("b", ids, 2, (3,)))
        assert torch.equal(s.uniform("b", ids.to(dtype), 2, (3,)), s.uniform("b", ids, 2, (3,)))
    assert torch.equal(s.uniform("b", [3, 1, 4], 2, (3,)), s.uniform("b", ids, 2, (3,)))


def test_randint_uses_all_53_bits():
    """Integers below 2^40 come from a float64 uniform: their low 16 bits are spread over all values (a float32
    uniform would leave only multiples of 2^16), and every draw is below its bound."""
    r = Streams(1).randint("b", torch.arange(4), 0, 2**40, (500,))
    assert int(r.max()) < 2**40 and int(r.min()) >= 0
    low = (r % (1 << 16)).flatten()
    assert len(set(low.tolist())) > 1900   # 2,000 draws of 65,536 values: ~1,970 distinct expected


def test_float32_uniforms_stay_below_one_where_rounding_would_reach_it():
    """A word whose 53-bit uniform is within 2^-25 of 1 rounds to 1.0 in float32 (found by a search over this
    stream: seed 0, "x", round 3, client 282, element 9649): it is clamped to the largest float32 below 1, and the
    draw keeps the dtype asked for."""
    u64 = Streams(0).uniform("x", torch.tensor([282]), 3, (10000,), dtype=torch.float64)[0, 9649]
    assert float(u64) >= 1 - 2.0**-25 and float(u64.to(torch.float32)) == 1.0   # the hard case
    u32 = Streams(0).uniform("x", torch.tensor([282]), 3, (10000,), dtype=torch.float32)
    assert u32.dtype == torch.float32 and float(u32.max()) < 1.0
    assert float(u32[0, 9649]) == 1 - 2.0**-24
