"""Update defences (clipping + Gaussian noise, top-k pruning) and the DefendUploads tap in a FedAvg simulation."""

import csv
import math

import pytest
import torch

import topologies
from attacks.defences import ClipAndNoise, DefendUploads, TopK, clip_and_noise, defence_generator, top_k
from fedsim import data as fdata
from fedsim.algorithms import FedAvg, Gossip
from fedsim.engine import Federation, simulate
from fedsim.messages import SERVER, Capture, Messages
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.training import ClientData, LocalSGD


@pytest.fixture(scope="module")
def digits_fed():
    train, test = fdata.train_test_split(fdata.load_digits(), 0.2, seed=0)
    parts = fdata.partition("iid", train.y, 4, seed=0)
    return Federation(ClientData.from_parts(train.x, train.y, parts), torch.as_tensor(test.x),
                      torch.as_tensor(test.y), Streams(0))


def fedavg(clients_per_round=2, weighted=True):
    model = build_model("mlp", (1, 8, 8), 10, (16,))
    return FedAvg(LocalSGD(model, lr=0.1, steps=2, batch_size=8), clients_per_round, weighted=weighted)


# --- clip_and_noise -------------------------------------------------------------------------------------------

def test_clip_bounds_the_norm_and_leaves_small_updates_untouched():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(1000, generator=g) * 10
    out = clip_and_noise(big, clip=2.0, sigma=0.0, generator=None)
    assert float(out.norm()) <= 2.0 * (1 + 1e-6)
    assert float(out.norm()) == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(out, big * (2.0 / float(big.double().norm())))   # direction kept
    small = big / float(big.norm()) * 1.5
    assert clip_and_noise(small, clip=2.0, sigma=0.0, generator=None) is small  # untouched, same object
    assert clip_and_noise(big, clip=math.inf, sigma=0.0, generator=None) is big
    before = big.clone()
    clip_and_noise(big, clip=1.0, sigma=0.1, generator=g)
    assert torch.equal(big, before)                                                # never in place


def test_noise_std_is_sigma_times_clip():
    # 200,000 draws: the sample std has relative standard error 1/sqrt(2n) = 0.16%; we allow 1% (about 6 SE).
    n, clip, sigma = 200_000, 2.0, 0.05
    out = clip_and_noise(torch.zeros(n), clip, sigma, defence_generator(0, 0, 0))
    assert float(out.std()) == pytest.approx(sigma * clip, rel=0.01)
    assert abs(float(out.mean())) < 5 * sigma * clip / math.sqrt(n)
    # noise is added after clipping: out - clipped update is again N(0, (sigma clip)^2)
    u = torch.full((n,), 1.0)
    noisy = clip_and_noise(u, clip, sigma, defence_generator(0, 0, 0))
    assert float((noisy - u * clip / math.sqrt(n)).std()) == pytest.approx(sigma * clip, rel=0.01)


def test_noise_depends_on_seed_round_and_client_only():
    u = torch.zeros(500)
    draw = lambda seed, rnd, client: clip_and_noise(u, 1.0, 0.1, defence_generator(seed, rnd, client))  # noqa: E731
    assert torch.equal(draw(3, 1, 2), draw(3, 1, 2))
    for other in [(4, 1, 2), (3, 0, 2), (3, 1, 0)]:
        assert not torch.allclose(draw(3, 1, 2), draw(*other))


# --- top_k ----------------------------------------------------------------------------------------------------

def test_top_k_keeps_exactly_the_largest_entries_ties_to_the_lower_index():
    u = torch.tensor([0.5, -3.0, 2.0, -2.0, 0.25, 2.0, 1.0])
    # k = max(1, ceil(fraction * 7)); magnitudes 2.0 tie at indices 2, 3, 5: lower indices win
    assert top_k(u, 3 / 7).tolist() == [0.0, -3.0, 2.0, -2.0, 0.0, 0.0, 0.0]     # k = 3
    assert top_k(u, 0.5).tolist() == [0.0, -3.0, 2.0, -2.0, 0.0, 2.0, 0.0]       # k = ceil(3.5) = 4
    assert top_k(u, 0.01).tolist() == [0.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0]      # k = 1 at least
    assert top_k(u, 1.0) is u
    assert u.tolist() == [0.5, -3.0, 2.0, -2.0, 0.25, 2.0, 1.0]                   # input not modified
    v = torch.arange(30, dtype=torch.float32)
    assert int((top_k(v, 0.1) != 0).sum()) == 3                                  # 0.1 * 30 is 3, not 4


# --- errors ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: clip_and_noise(torch.ones(3), -1.0, 0.1, None), "clip must be > 0"),
    (lambda: clip_and_noise(torch.ones(3), 0.0, 0.1, None), "clip must be > 0"),
    (lambda: clip_and_noise(torch.ones(3), 1.0, -0.1, None), "sigma must be finite and >= 0"),
    (lambda: clip_and_noise(torch.ones(3), math.inf, 0.1, None), "needs a finite clip"),
    (lambda: clip_and_noise(torch.ones(3), 1.0, 0.1, None), "needs a torch.Generator"),
    (lambda: clip_and_noise(torch.tensor([1.0, math.nan]), 1.0, 0.0, None), "1 NaN"),
    (lambda: top_k(torch.tensor([1.0, math.inf]), 0.5), "1 infinite"),
    (lambda: top_k(torch.ones(2, 3), 0.5), "flat 1-D"),
    (lambda: top_k(torch.ones(3), 0.0), r"fraction must be in \(0, 1\]"),
    (lambda: top_k(torch.ones(3), 1.5), r"fraction must be in \(0, 1\]"),
    (lambda: top_k(torch.ones(3), math.nan), r"fraction must be in \(0, 1\]"),
    (lambda: ClipAndNoise(clip=-1.0, sigma=0.0), "clip must be > 0"),
    (lambda: TopK(fraction=2.0), r"fraction must be in \(0, 1\]"),
])
def test_invalid_arguments_raise_named_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tap_refuses_gossip_and_an_uplink_without_its_downlink(digits_fed):
    tap = DefendUploads(TopK(0.5), seed=0)
    up = Messages.make(0, "uplink", [0], torch.ones(1, 4), [0], [SERVER])
    with pytest.raises(ValueError, match="before its downlink"):
        tap(up)
    sched = topologies.Static(topologies.metropolis_hastings(topologies.ring(4)))
    fed = Federation(digits_fed.data, digits_fed.test_x, digits_fed.test_y, Streams(0), sched)
    with pytest.raises(ValueError, match="gossip"):
        simulate(Gossip(fedavg().trainer), fed, 1, taps=[tap], eval_every=0)


# --- the tap in a FedAvg simulation ---------------------------------------------------------------------------

def test_curious_server_after_the_tap_sees_only_defended_updates(digits_fed):
    alg = fedavg(clients_per_round=2)
    defence = ClipAndNoise(clip=0.05, sigma=0.01)
    raw, spy = Capture(receivers=[SERVER], rounds=[0]), Capture(receivers=[SERVER], rounds=[0])
    simulate(alg, digits_fed, 2, taps=[raw, DefendUploads(defence, seed=7), spy], eval_every=0)
    start = alg.init(digits_fed).params
    assert len(spy.records) == len(raw.records) == 2
    for r, s in zip(raw.records, spy.records):
        assert r.sender == s.sender
        want = start + defence(r.payload - start, defence_generator(7, 0, r.sender))
        assert torch.equal(s.payload, want)            # the tap's own per-row computation, repeated: bit-equal
        assert float((s.payload - start).double().norm()) < float((r.payload - start).double().norm())
        assert not torch.allclose(s.payload, r.payload)


def test_fedavg_aggregates_the_defended_updates(digits_fed):
    alg = fedavg(clients_per_round=1, weighted=False)
    spy = Capture(receivers=[SERVER], rounds=[0])
    out = simulate(alg, digits_fed, 1, taps=[DefendUploads(TopK(0.1), seed=0), spy], eval_every=0)
    start = alg.init(digits_fed).params
    assert torch.equal(out.state.params, spy.records[0].payload)   # the mean of one row is that row, exactly
    assert int((out.state.params != start).sum()) <= math.ceil(0.1 * start.numel())


@pytest.mark.parametrize("defence", [ClipAndNoise(math.inf, 0.0), TopK(1.0)], ids=["clip=inf,sigma=0", "fraction=1"])
def test_no_op_defences_leave_training_bit_identical(digits_fed, defence):
    plain = simulate(fedavg(), digits_fed, 3, eval_every=0)
    defended = simulate(fedavg(), digits_fed, 3, taps=[DefendUploads(defence, seed=0)], eval_every=0)
    assert torch.equal(plain.state.params, defended.state.params)
    assert plain.history == defended.history


# --- the sweep script (smoke) ---------------------------------------------------------------------------------

@pytest.mark.needs_data("mnist", "mnist-victims")
def test_sweep_script_writes_csv_and_plot_and_resumes(tmp_path, capsys, data_root):
    from experiments.leakage_defences import main

    argv = ["--data-dir", str(data_root), "--quick", "--sweeps", "topk", "--iterations", "3", "--rounds", "1",
            "--clients", "4", "--clients-per-round", "2", "--local-steps", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert [(r["sweep"], float(r["strength"]), r["attack"]) for r in rows] == [
        ("topk", 1.0, "ig"), ("topk", 0.5, "ig"), ("topk", 0.1, "ig"), ("topk", 0.01, "ig")]
    assert all(0 <= float(r["test_acc"]) <= 1 and -1 <= float(r["ssim"]) <= 1 for r in rows)
    assert (tmp_path / "leakage_defences.png").read_bytes()[:4] == b"\x89PNG"
    assert "topk" in capsys.readouterr().out
    before = (tmp_path / "results.csv").read_text()
    assert main(argv) == 0                                         # resume: everything is skipped
    assert (tmp_path / "results.csv").read_text() == before
    assert capsys.readouterr().err.count("skipped") == 4
