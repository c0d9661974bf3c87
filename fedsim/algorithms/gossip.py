"""Decentralized learning over a graph: D-PSGD (local SGD, then gossip averaging), push-sum when directed.

Every node i holds ``x_i`` and a push-sum weight ``w_i`` (1 on undirected graphs, where it stays 1);
its model is ``z_i = x_i / w_i``. A round: active nodes train ``z_i`` locally (``local_steps = 0``
gives plain gossip averaging); every node sends ``x_i`` (with ``w_i`` under push-sum) to its
out-neighbours; taps may drop or change messages; then every node combines its own ``x_i`` with the
payloads that arrived, with the weights of the round's mixing matrix W_t (``SparseW.mix``):
``x <- W_t x`` when nothing was lost or changed. With a column-stochastic W_t this is stochastic gradient
push (Assran et al., 2019): the weight travels in the same message as the values, as the last column.

The combine step follows ``averaging`` (``fedsim.averaging``): ``plain`` mixes with W_t as above; ``beta`` and
``variance_corrected`` are the buffer rules of Tian et al. (2024), over the models that arrived this round
(undirected graphs only: push-sum's weights make sense with ``plain`` mixing alone).

Momentum buffers (``momentum > 0``) are per-node state, kept across rounds by default (a node is one
long-lived optimiser); ``keep_momentum=False`` restarts them every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedsim.averaging import Averaging, average_node, average_received, corrected_slices
from fedsim.messages import Messages
from fedsim.mixing import SparseW, combine
from fedsim.metrics import held_out_metrics, weight_var_ratio
from fedsim.rng import sample_clients
from fedsim.state import ParamSpec, init_population, xavier_variance
from fedsim.training import LocalSGD, check_model_fits, check_momentum_has_effect, local_step


@dataclass(frozen=True)
class GossipState:
    """Stacked node parameters ``x`` ``[N, P]``, push-sum weights ``w`` ``[N]``, with momentum each node's
    momentum buffer ``momentum`` ``[N, P]``, and with a delay of d rounds the messages in flight: the payloads
    of the last d rounds ``flight_payload`` [d, N, P'] (oldest first) and their delivered flags
    ``flight_delivered`` [d, E] (None otherwise)."""

    x: torch.Tensor
    w: torch.Tensor
    momentum: torch.Tensor | None = None
    flight_payload: torch.Tensor | None = None
    flight_delivered: torch.Tensor | None = None

    @property
    def models(self) -> torch.Tensor:
        return self.x / self.w[:, None]


def averaging_of(averaging: Averaging | str) -> Averaging:
    """An ``Averaging``, or a rule name for one with default options (``"variance_corrected"``)."""
    if isinstance(averaging, str):
        return Averaging(averaging)
    if not isinstance(averaging, Averaging):
        raise TypeError(f"averaging must be an fedsim.averaging.Averaging or a rule name, got {averaging!r}")
    return averaging


def check_schedule(fed, algorithm: str) -> None:
    """Gossip needs the federation's topology, one node per client."""
    if fed.schedule is None:
        raise ValueError(f"{algorithm} needs a topology: Federation(..., schedule=topologies.Static(W)) or another "
                         "topologies schedule")
    nodes, clients = fed.schedule.at(0).shape[0], fed.data.n_clients
    if nodes != clients:
        raise ValueError(f"the topology has {nodes} nodes but the federation {clients} clients (one node each)")


def consensus_distance(z: torch.Tensor) -> float:
    """Mean squared distance of the node models to their average."""
    return float(((z - z.mean(0)) ** 2).sum(1).mean())


@dataclass(frozen=True)
class Gossip:
    """D-PSGD / push-sum over the federation's topology schedule.

    ``active_fraction`` of the nodes (sampled per round) train; all nodes mix. ``same_init`` starts
    every node from one model; otherwise each node draws its own initialisation.
    """

    trainer: LocalSGD
    active_fraction: float = 1.0
    same_init: bool = True
    vectorized: bool = True
    eval_nodes: int = 10
    keep_momentum: bool = True
    averaging: Averaging = Averaging()
    init_scheme: str = "default"
    delay: int = 0

    def __post_init__(self):
        check_momentum_has_effect(self.trainer, self.keep_momentum)
        object.__setattr__(self, "averaging", averaging_of(self.averaging))
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0 rounds, got {self.delay}")

    def init(self, fed) -> GossipState:
        check_schedule(fed, "gossip")
        check_model_fits(self.trainer.model, fed.data, fed.test_x, fed.test_y, fed.dtype)
        n = fed.data.n_clients
        if fed.schedule.directed and self.averaging.rule != "plain":
            raise ValueError(f"averaging rule {self.averaging.rule!r} needs an undirected topology: on a directed "
                             "graph push-sum keeps the average unbiased only with plain mixing")
        x = init_population(self.trainer.model, torch.arange(n), fed.streams, shared=self.same_init,
                            dtype=fed.dtype, device=fed.device, init=self.init_scheme)
        buffers = torch.zeros_like(x) if self.trainer.momentum and self.keep_momentum else None
        flight = (None, None)
        if self.delay:
            if fed.schedule.at(0) is not fed.schedule.at(1):
                raise ValueError("a delay in synchronous gossip needs a static topology (messages in flight keep "
                                 "the edges they were sent on)")
            width = x.shape[1] + (1 if fed.schedule.directed else 0)
            edges = len(self._mixing(fed, 0).off)
            flight = (x.new_zeros(self.delay, n, width),   # nothing arrives in the first d rounds
                      torch.zeros(self.delay, edges, dtype=torch.bool, device=fed.device))
        return GossipState(x, torch.ones(n, dtype=fed.dtype, device=fed.device), buffers, *flight)

    def _mixing(self, fed, t: int) -> SparseW:
        """The round's mixing matrix as a ``SparseW``, converted once per matrix (kept in ``fed.derived``)."""
        W = fed.schedule.at(t)
        return fed.derived.get("sparse W", W, lambda: SparseW.from_scipy(W, directed=fed.schedule.directed,
                                                                         device=fed.device, dtype=fed.dtype))

    def round(self, state: GossipState, t: int, fed, send: Callable[[Messages], Messages]):
        n = fed.data.n_clients
        everyone = self.active_fraction >= 1
        if everyone:
            active = torch.arange(n, device=fed.device)
        else:
            active = sample_clients(fed.streams, t, n, max(1, round(self.active_fraction * n)), "active")
            active = active.to(fed.device)
        push_sum = fed.schedule.directed
        z = state.models if push_sum else state.x
        z_active = z if everyone else z.index_select(0, active)
        kept = state.momentum
        buf_active = None if kept is None else (kept if everyone else kept.index_select(0, active))
        z_new, losses, buf_new = local_step(self.trainer, z_active, active, t, fed.data, fed.streams, buf_active,
                                            self.vectorized)
        if push_sum:  # x = w z, so a change of z_i moves x_i by w_i times as much
            x = state.x.clone()
            x[active] += (z_new - z_active) * state.w[active, None]
        elif everyone:
            x = z_new
        else:
            x = state.x.clone()
            x[active] = z_new
        momentum = kept
        if kept is not None:
            momentum = buf_new if everyone else kept.index_copy(0, active, buf_new)

        W = self._mixing(fed, t)
        senders, receivers = W.edges()
        own = torch.cat([x, state.w[:, None]], 1) if push_sum else x
        msgs = send(Messages.make(t, "gossip", torch.arange(n), own, senders, receivers))
        payload, src, delivered, kept, flight = msgs.payload, msgs.src, msgs.delivered, None, (None, None)
        if self.delay:  # what arrives now left d rounds ago; this round's messages go in flight
            if payload.shape[0] != n or not torch.equal(src.to(senders.device), senders):
                raise ValueError("with a delay, taps may change payload values but not give edges payloads of "
                                 "their own")
            flight = (torch.cat([state.flight_payload[1:], payload[None].to(x.dtype)]),
                      torch.cat([state.flight_delivered[1:], delivered[None].to(state.flight_delivered.device)]))
            payload, src, delivered = state.flight_payload[0], senders, state.flight_delivered[0]
            kept = msgs.delivered if push_sum else None   # push-sum: the sender keeps only what it loses now
        if self.averaging.rule != "plain":
            mixed = self._buffer_rule(x, payload, src, delivered, receivers)
        else:
            mix = W.mix if self.vectorized else W.mix_loop
            mixed = mix(own, payload, src, delivered, kept)
        if push_sum:
            new = GossipState(mixed[:, :-1].contiguous(), mixed[:, -1].contiguous(), momentum, *flight)
        else:
            new = GossipState(mixed, state.w, momentum, *flight)
        return new, {"train_loss": float(losses.mean()), "participants": len(active)}

    def _buffer_rule(self, x: torch.Tensor, payload: torch.Tensor, src: torch.Tensor, delivered: torch.Tensor,
                     dst: torch.Tensor) -> torch.Tensor:
        """The ``beta`` / ``variance_corrected`` rules over the models that arrived (batched or per node)."""
        spec = ParamSpec.of(self.trainer.model)
        ok = delivered.to(src.device)
        rows, receivers = src[ok], dst.to(ok.device)[ok].to(x.device)
        payload = payload.to(x.dtype)
        if not self.vectorized:
            out = x.clone()
            for i in range(len(x)):
                mine = rows[receivers == i]
                out[i] = neighbourhood_step(x[i], payload[mine.to(payload.device)], self.averaging, spec)
            return out
        slices = corrected_slices(spec, self.averaging.tensors) if self.averaging.corrects else []
        return average_received(x, receivers, rows.to(x.device), payload, self.averaging, slices)

    def evaluate(self, state, fed) -> dict[str, float]:
        """Test accuracy/loss of the models in ``models(state)``, and ``diagnostics(state)`` (the engine's
        evaluation rounds)."""
        return {**held_out_metrics(self.trainer.model, self.models(state), fed.test_x, fed.test_y),
                **self.diagnostics(state)}

    def diagnostics(self, state: GossipState) -> dict[str, float]:
        """Extra metrics computed on evaluation rounds: consensus distance, weight variance vs Xavier."""
        return population_diagnostics(state.models, self.trainer.model, self.init_scheme)

    def models(self, state: GossipState) -> dict[str, torch.Tensor]:
        return evaluation_rows(state.models, self.eval_nodes)


def neighbourhood_step(own: torch.Tensor, received: torch.Tensor, averaging: Averaging, spec: ParamSpec,
                       own_weight: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One node's combine step from its own model ``own`` [P] and the models that reached it, ``received`` [k, P]
    in ``SparseW.edges()`` order: plain mixing with its ``own_weight`` and the senders' ``weights`` (``SparseW.inbox``;
    ``mixing.combine``), or the ``beta`` / ``variance_corrected`` rule (``averaging.average_node``). The engine's
    per-node path and a Flower gossip node both call it."""
    if averaging.rule == "plain":
        return combine(own_weight, own, weights, received)
    return average_node(own, received, averaging, spec)


def population_diagnostics(z: torch.Tensor, model, init_scheme: str) -> dict[str, float]:
    """Consensus distance and per-layer weight variance relative to the Xavier value (``fedsim.metrics``)."""
    return {"consensus": consensus_distance(z),
            **weight_var_ratio(z, ParamSpec.of(model), xavier_variance(model, init_scheme))}


def evaluation_rows(z: torch.Tensor, eval_nodes: int) -> dict[str, torch.Tensor]:
    """Parameter rows to evaluate: the network-average model and ``eval_nodes`` evenly spaced nodes (all: 0)."""
    count = len(z) if eval_nodes <= 0 else min(eval_nodes, len(z))
    nodes = torch.linspace(0, len(z) - 1, count).round().long().unique()
    return {"average": z.mean(0, keepdim=True), "nodes": z[nodes.to(z.device)]}
