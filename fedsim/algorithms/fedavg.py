"""FedAvg (McMahan et al., 2017) on a star: broadcast, local SGD on sampled clients, weighted average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedsim.messages import SERVER, Messages
from fedsim.metrics import weight_var_ratio
from fedsim.state import ParamSpec, init_population, xavier_variance
from fedsim.training import LocalSGD, check_momentum_has_effect


@dataclass(frozen=True)
class FedAvgState:
    """The server's global model, flat ``[P]``; with ``keep_momentum``, every client's momentum buffer
    ``[n_clients, P]`` (None otherwise)."""

    params: torch.Tensor
    momentum: torch.Tensor | None = None


def aggregate(payload: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the rows of ``payload`` ``[m, P]`` (weights need not be normalised)."""
    w = weights.to(payload.dtype)
    return (w[:, None] * payload).sum(0) / w.sum()


def sample_clients(fed, round: int, k: int) -> torch.Tensor:
    """``k`` distinct clients, sorted, from the ``sample`` stream of this round (all clients if k = n)."""
    n = fed.data.n_clients
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=fed.streams.generator("sample", round=round))[:k].sort().values


@dataclass(frozen=True)
class FedAvg:
    """FedAvg: ``clients_per_round`` clients train locally from the global model; the server averages.

    Aggregation weights are the clients' sample counts (``weighted=True``) or uniform. Clients whose
    downlink or uplink message is dropped by a tap take no part in the round. Clients start from the
    model that arrived on their downlink and the server averages the uplink payloads that arrived (taps
    may change either). Momentum buffers restart every round, as in standard FedAvg, unless
    ``keep_momentum`` (each client then keeps its own buffer between the rounds it takes part in).
    """

    trainer: LocalSGD
    clients_per_round: int
    weighted: bool = True
    vectorized: bool = True
    keep_momentum: bool = False
    init_scheme: str = "default"

    def __post_init__(self):
        check_momentum_has_effect(self.trainer, self.keep_momentum)

    def init(self, fed) -> FedAvgState:
        params = init_population(self.trainer.model, torch.zeros(1, dtype=torch.int64), fed.streams,
                                 dtype=fed.dtype, device=fed.device, init=self.init_scheme)[0]
        buffers = None
        if self.trainer.momentum and self.keep_momentum:
            buffers = torch.zeros(fed.data.n_clients, len(params), dtype=params.dtype, device=params.device)
        return FedAvgState(params, buffers)

    def round(self, state: FedAvgState, t: int, fed, send: Callable[[Messages], Messages]):
        clients = sample_clients(fed, t, self.clients_per_round).to(fed.device)
        down = send(Messages.make(t, "downlink", [SERVER], state.params[None], torch.zeros(len(clients)), clients))
        _, clients, start = down.arrived()
        clients = clients.to(fed.device)
        kept = None if state.momentum is None else state.momentum[clients]
        train = self.trainer.train if self.vectorized else self.trainer.train_loop
        local, losses, buffers = train(start.to(fed.device), clients, t, fed.data, fed.streams, momentum=kept)
        momentum = state.momentum if kept is None else state.momentum.index_copy(0, clients, buffers)
        up = send(Messages.make(t, "uplink", clients, local, torch.arange(len(clients)),
                                torch.full((len(clients),), SERVER)))
        senders, _, payload = up.arrived()
        metrics = {"train_loss": float(losses.mean()) if len(losses) else float("nan"),
                   "participants": len(senders)}
        if len(senders) == 0:
            return FedAvgState(state.params, momentum), metrics
        senders = senders.to(fed.device)
        weights = fed.data.counts[senders] if self.weighted else torch.ones(len(senders), device=fed.device)
        return FedAvgState(aggregate(payload.to(fed.device), weights), momentum), metrics

    def diagnostics(self, state: FedAvgState) -> dict[str, float]:
        """The global model's weight variance relative to the Xavier value (``fedsim.metrics``)."""
        model = self.trainer.model
        return weight_var_ratio(state.params[None], ParamSpec.of(model), xavier_variance(model, self.init_scheme))

    def models(self, state: FedAvgState) -> dict[str, torch.Tensor]:
        """Parameter rows to evaluate: the global model."""
        return {"global": state.params[None]}
