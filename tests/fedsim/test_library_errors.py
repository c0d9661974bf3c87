"""Mistakes a researcher makes with the library API get a ValueError / TypeError that names the problem."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

import topologies
from fedsim.algorithms import AsyncGossip, Gossip
from fedsim.averaging import Averaging
from fedsim.engine import simulate
from fedsim.training import ClientData, LocalSGD


def _two_triangles():
    return nx.disjoint_union(nx.complete_graph(3), nx.complete_graph(3))


def test_a_disconnected_topology_is_refused_unless_asked_for():
    W = topologies.metropolis_hastings(_two_triangles())
    with pytest.raises(topologies.DisconnectedGraphError, match=r"disconnected: 2 components \(sizes 3, 3\)"):
        topologies.Static(W)
    assert topologies.Static(W, allow_disconnected=True).n == 6


def test_decentralized_power_on_a_disconnected_round_says_so():
    from fedsim.fedpca.fedpg import PCAFederation
    from fedsim.fedpca.power import DecentralizedPower
    from fedsim.fedpca.problem import PCAClients
    from fedsim.rng import Streams

    g = np.random.default_rng(0)
    clients = PCAClients.from_blocks([g.normal(size=(20, 5)) for _ in range(6)])
    W = topologies.metropolis_hastings(_two_triangles())
    fed = PCAFederation(clients, Streams(0), schedule=topologies.Static(W, allow_disconnected=True))
    with pytest.raises(ValueError, match=r"disconnected \(2 components, \|lambda_2\| = 1\)"):
        simulate(DecentralizedPower(2), fed, 1, eval_every=0)


def test_gossip_options_and_federation_are_checked(make_fed, mlp, trainer):
    tr = trainer(mlp)
    assert Gossip(tr, averaging="variance_corrected").averaging == Averaging("variance_corrected")
    assert AsyncGossip(tr, averaging="plain").averaging == Averaging("plain")
    with pytest.raises(TypeError, match="averaging must be"):
        Gossip(tr, averaging=0.5)
    with pytest.raises(ValueError, match="unknown averaging rule 'foo'"):
        AsyncGossip(tr, averaging="foo")
    for alg in (Gossip(tr), AsyncGossip(tr)):
        with pytest.raises(ValueError, match="needs a topology: Federation"):
            alg.init(make_fed(6))
        with pytest.raises(ValueError, match="the topology has 7 nodes but the federation 6 clients"):
            alg.init(make_fed(6, schedule=topologies.Static(topologies.metropolis_hastings(nx.cycle_graph(7)))))


@pytest.mark.parametrize("options, fragment", [
    ({"lr": -0.1}, "lr=-0.1"), ({"lr": float("nan")}, "lr=nan"), ({"batch_size": 0}, "batch_size=0"),
    ({"steps": -1}, "steps=-1"), ({"momentum": 1.0}, "momentum=1.0"), ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
])
def test_local_sgd_settings_are_checked(mlp, options, fragment):
    with pytest.raises(ValueError, match="LocalSGD needs") as info:
        LocalSGD(mlp, **{"lr": 0.1, **options})
    assert fragment in str(info.value)


def test_samples_with_nan_are_refused():
    x = np.zeros((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        ClientData.from_parts(x, np.zeros(4), [np.arange(2), np.arange(2, 4)])


def test_fedavg_samples_no_more_clients_than_there_are(make_fed, mlp, trainer):
    from fedsim.algorithms import FedAvg

    for k in (0, 7):
        with pytest.raises(ValueError, match=f"clients_per_round = {k} must be in 1..6"):
            FedAvg(trainer(mlp), k).init(make_fed(6))


def test_a_model_or_test_set_that_does_not_fit_the_data_is_named_before_training(make_fed, trainer):
    import torch

    from fedsim.algorithms import FedAvg
    from fedsim.models import build_model

    ring = topologies.Static(topologies.metropolis_hastings(nx.cycle_graph(6)))
    fed = make_fed(6, schedule=ring)
    for alg in (Gossip(trainer(build_model("mlp", (1, 28, 28), 10, (16,)))),
                AsyncGossip(trainer(build_model("mlp", (1, 28, 28), 10, (16,)))),
                FedAvg(trainer(build_model("mlp", (1, 28, 28), 10, (16,))), 3)):
        with pytest.raises(ValueError, match=r"the model does not take samples of shape \(1, 8, 8\)"):
            alg.init(fed)
    with pytest.raises(ValueError, match="the model has 5 outputs but the labels go up to 9"):
        Gossip(trainer(build_model("mlp", (1, 8, 8), 5, (16,)))).init(fed)
    short = dataclasses.replace(fed, test_x=fed.test_x[:, :, :4])
    with pytest.raises(ValueError, match=r"the test set .* does not match the clients' samples of shape \(1, 8, 8\)"):
        Gossip(trainer(build_model("mlp", (1, 8, 8), 10, (16,)))).init(short)
    assert torch.is_tensor(Gossip(trainer(build_model("mlp", (1, 8, 8), 10, (16,)))).init(fed).x)


@pytest.mark.parametrize("x, y, parts, fragment", [
    (np.zeros((5, 2), np.float32), np.arange(5), [], "no clients"),
    (np.zeros((5, 2), np.float32), np.arange(4), [np.arange(4)], "5 samples x but 4 labels"),
    (np.zeros((5, 2), np.float32), np.arange(5), [np.array([0, 7])], "indexes sample 7, outside the pool's 0..4"),
    (np.zeros((5, 2), np.float32), np.arange(5), [np.array([-1, 0])], "indexes sample -1"),
    (np.zeros((5, 2), np.float32), np.arange(5) - 1, [np.arange(5)], "labels must be class indices >= 0, got -1"),
])
def test_a_malformed_pool_or_partition_is_refused_when_packed(x, y, parts, fragment):
    """Each of these ran until the first batch and stopped there with a raw torch or Python error."""
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ClientData.from_parts(x, y, parts)


def test_numpy_float64_samples_are_converted_to_the_federations_dtype(make_fed, mlp, trainer):
    """NumPy's default float64 samples with float32 parameters stopped training at the first matmul ("expected
    scalar type Double but found Float"): the Federation converts floating-point samples to its dtype; integer
    samples (raw pixels) are refused with what to do."""
    import torch

    fed = make_fed(4, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(4))))
    wide = dataclasses.replace(fed, data=dataclasses.replace(fed.data, x=fed.data.x.double()),
                               test_x=fed.test_x.double())
    assert wide.data.x.dtype == torch.float32 and wide.test_x.dtype == torch.float32
    a = simulate(Gossip(trainer(mlp)), fed, 2).state.x
    torch.testing.assert_close(simulate(Gossip(trainer(mlp)), wide, 2).state.x, a, atol=1e-6, rtol=0)
    raw = dataclasses.replace(fed, data=dataclasses.replace(fed.data, x=(fed.data.x * 16).to(torch.uint8)))
    with pytest.raises(ValueError, match="the samples x are uint8, the parameters float32: the models take "
                                         "floating-point samples"):
        Gossip(trainer(mlp)).init(raw)


@pytest.mark.parametrize("solver", ["tracking", "admm"])
def test_decentralized_pca_with_a_topology_of_another_size_is_refused(solver):
    """12 graph nodes for 10 clients stopped at the first mix with a raw tensor-size error."""
    import torch

    from fedsim.fedpca.decentralized import DecentralizedFedPG
    from fedsim.fedpca.fedpg import PCAFederation
    from fedsim.fedpca.problem import PCAClients
    from fedsim.rng import Streams

    g = np.random.default_rng(0)
    clients = PCAClients.from_blocks([g.standard_normal((20, 6)) for _ in range(10)])
    fed = PCAFederation(clients, Streams(0), schedule=topologies.Static(topologies.metropolis_hastings(
        topologies.ring(12))))
    with pytest.raises(ValueError, match="the topology has 12 nodes but the federation 10 clients"):
        DecentralizedFedPG(2, solver=solver).init(fed)
    assert torch.is_tensor(clients.C)


def test_tap_filters_and_results_are_checked(make_fed, mlp, trainer):
    """A misspelt kind recorded nothing and said nothing; a string kind matched by substring ("link" would be
    uplink and downlink); a tap returning None failed with an AttributeError deep in the engine."""
    from fedsim.messages import Capture, LinkDrop

    for tap in (Capture, lambda kinds: LinkDrop(0.1, kinds=kinds)):
        with pytest.raises(ValueError, match="unknown message kind 'gosip'; known: downlink, uplink, gossip"):
            tap(kinds=("gosip",))
        with pytest.raises(ValueError, match="unknown message kind 'link'"):
            tap(kinds="link")
    assert Capture(kinds="gossip").kinds == ("gossip",) and LinkDrop(0.1, kinds="uplink").kinds == ("uplink",)
    fed = make_fed(4, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(4))))
    with pytest.raises(TypeError, match="returned NoneType; a tap must return the Messages"):
        simulate(Gossip(trainer(mlp)), fed, 1, taps=[lambda msgs: None])


def test_negative_seeds_and_one_dimensional_pca_blocks_are_refused():
    """Streams(-1) gave exactly the draws of Streams(2**64 - 1); a 1-D block failed with an IndexError."""
    from fedsim.fedpca.problem import PCAClients
    from fedsim.rng import Streams

    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        Streams(-1)
    assert Streams(0).seed == 0
    with pytest.raises(ValueError, match=r"client 0: expected an \(n, d\) block of n samples, got shape \(6,\)"):
        PCAClients.from_blocks([np.ones(6)])
