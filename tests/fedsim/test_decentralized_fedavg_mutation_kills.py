"""Decentralized FedPG (both solvers) and FedAvg on the cases mutation testing found untested (docs/testing.md).

References: numpy's eigendecomposition of the pooled matrix and hand-computed objectives (PCA), the documented
hyperparameter ranges and error messages, the per-client training loop ``LocalSGD.train_loop`` and the
documented initial-weight distributions (FedAvg). Tolerances: float64 PCA quantities agree to ~1e-14 (we
allow 1e-10; the converged subspace 1e-8 rad); float32 training to ~1e-7 (we allow 1e-5, as in
test_mutation_kills.py); sample variances of ~10^3 uniform draws to a few per cent (we allow 15 %).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import topologies
from fedsim.algorithms import FedAvg
from fedsim.algorithms.fedavg import aggregate
from fedsim.engine import simulate
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import PCAFederation
from fedsim.messages import Capture
from fedsim.rng import Streams

F64 = torch.float64
TOL = 1e-10
ATOL = 1e-5


def _numpy_top_k(clients, k):
    S = clients.C.numpy().sum(0) / clients.n.numpy().sum()
    vecs = np.linalg.eigh(S)[1]
    return torch.tensor(vecs[:, ::-1][:, :k].copy())


def _angle(A, B):
    """Largest principal angle between span(A) and span(B), by numpy: arcsin ||(I - Qb Qb^T) Qa||_2 (accurate
    for small angles, unlike the arccos of the cosines)."""
    qa, qb = np.linalg.qr(A.numpy())[0], np.linalg.qr(B.numpy())[0]
    return float(np.arcsin(min(1.0, np.linalg.norm(qa - qb @ (qb.T @ qa), 2))))


def _weighted_objective(clients, Z):
    """sum_i w_i (tr C_i - tr Z^T C_i Z) / n_i, w_i = n_i / sum n (hand-written from the definition)."""
    w = clients.n / clients.n.sum()
    return float(sum(w[i] * (torch.trace(C) - torch.trace(Z.T @ C @ Z)) / clients.n[i]
                     for i, C in enumerate(clients.C)))


# -- decentralized FedPG: the default (tracking) solver ------------------------------------------------------

def test_tracking_default_converges_to_the_pooled_top_k_and_evaluates_it(clients):
    """The default solver (gradient tracking + power steps) on a complete graph, where one exchange averages
    exactly: its rounds (messages of round t), subspace and evaluation reach numpy's pooled top-2 eigenspace."""
    k = 2
    ref = _numpy_top_k(clients, k)
    sched = topologies.Static(topologies.metropolis_hastings(topologies.complete(5)))
    fed = PCAFederation(clients, Streams(0), reference=ref, schedule=sched)
    alg = DecentralizedFedPG(k)
    spy = Capture(kinds=("gossip",))
    res = simulate(alg, fed, 12, taps=[spy], eval_every=0)      # ~1e-15 rad by round 10 (ADMM: 1e-2)
    assert sorted({r.round for r in spy.records}) == list(range(12))
    Z = alg.subspace(res.state)
    assert Z.shape == (8, k)
    assert _angle(Z, ref) < 1e-8
    got = alg.evaluate(res.state, fed)
    assert got["angle_to_reference"] < 1e-8
    assert got["objective"] == pytest.approx(_weighted_objective(clients, ref), abs=1e-9)


# -- decentralized FedPG: hyperparameters and topology checks -------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"eta": 0.0}, "eta > 0"),
    ({"rho": 0.0}, "rho > 0"),
    ({"local_steps": -1}, "local_steps >= 0"),
    ({"solver": "newton"}, "unknown solver 'newton'; known: tracking, admm"),
])
def test_decentralized_bad_hyperparameters_are_refused_and_named(kw, message):
    """eta = 0 and rho = 0 each on their own are refused (the documented ranges are eta > 0, rho > 0,
    local_steps >= 0), and the message names the bad option or lists the known solvers."""
    with pytest.raises(ValueError, match=message):
        DecentralizedFedPG(2, **kw)


def test_admm_with_zero_local_steps_keeps_the_consensus_start(clients):
    """local_steps = 0 is allowed: no local step, so from the common start U_i - U_j = 0 and the dual stays 0."""
    fed = PCAFederation(clients, Streams(0), schedule=topologies.Static(topologies.metropolis_hastings(
        topologies.ring(5))))
    alg = DecentralizedFedPG(2, rho=1.0, local_steps=0)
    s0 = alg.init(fed)
    state = simulate(alg, fed, 2, eval_every=0).state
    torch.testing.assert_close(state.U, s0.U, atol=0, rtol=0)
    torch.testing.assert_close(state.Y, torch.zeros_like(state.Y), atol=TOL, rtol=0)


def test_admm_refuses_a_directed_or_missing_topology_and_names_it(clients):
    """The ADMM solver (not only the tracking one) checks its schedule: none, or a directed push-sum one."""
    alg = DecentralizedFedPG(2, solver="admm")
    directed = topologies.PushSum(topologies.directed_exponential(5))
    with pytest.raises(ValueError, match="undirected topology"):
        alg.init(PCAFederation(clients, Streams(0), schedule=directed))
    with pytest.raises(ValueError, match=r"needs a topology \(PCAFederation\.schedule\)"):
        alg.init(PCAFederation(clients, Streams(0)))


# -- FedAvg ----------------------------------------------------------------------------------------------

def test_aggregate_is_the_weighted_mean_in_the_payload_dtype():
    """Fractional float64 weights on a float32 payload: the weighted mean (numpy, float64), kept in float32."""
    g = torch.Generator().manual_seed(0)
    payload = torch.randn(4, 6, generator=g)
    weights = torch.tensor([0.1, 0.25, 0.4, 1.7], dtype=F64)
    got = aggregate(payload, weights)
    want = (weights.numpy()[:, None] * payload.double().numpy()).sum(0) / weights.numpy().sum()
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-6, rtol=0)


def test_fedavg_with_one_client_per_round_takes_its_model(make_fed, mlp, trainer):
    """clients_per_round = 1 is in the documented range 1..n: the global model becomes the sampled client's."""
    fed = make_fed(4)
    tr = trainer(mlp)
    alg = FedAvg(tr, clients_per_round=1)
    s0 = alg.init(fed)
    spy = Capture(kinds=("uplink",))
    res = simulate(alg, fed, 1, taps=[spy], eval_every=0)
    (client,) = {r.sender for r in spy.records}
    trained = tr.train_loop(s0.params[None], torch.tensor([client]), 0, fed.data, fed.streams)
    assert res.history[0]["participants"] == 1
    torch.testing.assert_close(res.state.params, trained.params[0], atol=ATOL, rtol=0)


def test_fedavg_xavier_fan_in_init_and_its_weight_variance_diagnostic(make_fed, mlp, trainer):
    """init_scheme = "xavier_fan_in": weights uniform in +-sqrt(3 / fan_in) (variance 1 / fan_in), biases 0;
    ``diagnostics`` divides each weight tensor's variance by 1 / fan_in (not Glorot's 2 / (fan_in + fan_out))."""
    fed = make_fed(4)
    alg = FedAvg(trainer(mlp), clients_per_round=2, init_scheme="xavier_fan_in")
    state = alg.init(fed)
    params = state.params.double()
    ratios, offset = {}, 0
    for name, p in mlp.named_parameters():
        x = params[offset:offset + p.numel()]
        offset += p.numel()
        if p.ndim < 2:
            assert float(x.abs().max()) == 0.0
            continue
        fan_in = p.shape[1]
        bound = math.sqrt(3.0 / fan_in)
        assert float(x.abs().max()) <= bound
        assert float(x.abs().max()) > 0.9 * bound > 1.5 / math.sqrt(fan_in)   # beyond PyTorch's default bound
        ratios[name] = float(((x - x.mean()) ** 2).mean()) * fan_in
        assert ratios[name] == pytest.approx(1.0, abs=0.15)
    got = alg.diagnostics(state)
    for name, r in ratios.items():
        assert got[f"weight_var_ratio.{name}"] == pytest.approx(r, rel=1e-5)
    assert got["weight_var_ratio"] == pytest.approx(sum(ratios.values()) / len(ratios), rel=1e-5)
