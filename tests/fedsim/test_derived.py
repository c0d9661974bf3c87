"""The run's derived data (sparse mixing matrices) lives in the federation, converted once per matrix; algorithm
objects hold only their parameters."""

import dataclasses

import torch

import topologies
from fedsim.algorithms import AsyncGossip, Gossip
from fedsim.derived import Derived
from fedsim.engine import simulate
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.power import DecentralizedPower
from fedsim.mixing import SparseW


def test_an_entry_is_rebuilt_only_for_a_new_source():
    d, calls, a, b = Derived(), [], object(), object()

    def build(tag):
        return lambda: calls.append(tag) or tag

    assert d.get("W", a, build("a")) == "a" and d.get("W", a, build("x")) == "a"
    assert d.get("W", b, build("b")) == "b" and d.get("W", a, build("a2")) == "a2"   # one entry per name
    assert calls == ["a", "b", "a2"] and len(d) == 1


def test_algorithms_hold_only_their_parameters(trainer, mlp):
    for alg in (Gossip(trainer(mlp)), AsyncGossip(trainer(mlp)), DecentralizedFedPG(3), DecentralizedPower(3)):
        values = {f.name: getattr(alg, f.name) for f in dataclasses.fields(alg)}
        assert not any(isinstance(v, dict) for v in values.values()), type(alg).__name__
        assert not hasattr(alg, "_cache"), type(alg).__name__


def test_a_static_graph_is_converted_once_per_run_and_a_time_varying_one_per_matrix(make_fed, mlp, trainer,
                                                                                  monkeypatch):
    calls = []
    real = SparseW.from_scipy

    def counting(W, *args, **kwargs):
        calls.append(id(W))
        return real(W, *args, **kwargs)

    monkeypatch.setattr(SparseW, "from_scipy", staticmethod(counting))
    ring = topologies.metropolis_hastings(topologies.ring(6))
    fed = make_fed(6, schedule=topologies.Static(ring))
    simulate(Gossip(trainer(mlp, steps=1)), fed, 4, eval_every=0)
    assert len(calls) == 1
    calls.clear()
    failing = topologies.LinkFailures(topologies.ring(6), q=0.3, seed=1)   # a new matrix every round
    simulate(Gossip(trainer(mlp, steps=1)), make_fed(6, schedule=failing), 4, eval_every=0)
    assert len(calls) == 4
    again = simulate(Gossip(trainer(mlp, steps=1)), fed, 4, eval_every=0)        # a second run on the same fed
    assert torch.isfinite(again.state.x).all() and len(fed.derived) == 1
