"""FedAvg (McMahan et al., 2017) on a star: broadcast, local SGD on sampled clients, weighted average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedsim.messages import SERVER, Messages
from fedsim.state import init_population
from fedsim.training import LocalSGD


@dataclass(frozen=True)
class FedAvgState:
    """The server's global model, flat ``[P]``."""

    params: torch.Tensor


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
    downlink or uplink message is dropped by a tap take no part in the round.
    """

    trainer: LocalSGD
    clients_per_round: int
    weighted: bool = True
    vectorized: bool = True

    def init(self, fed) -> FedAvgState:
        params = init_population(self.trainer.model, torch.zeros(1, dtype=torch.int64), fed.streams,
                                 dtype=fed.dtype, device=fed.device)[0]
        return FedAvgState(params)

    def round(self, state: FedAvgState, t: int, fed, send: Callable[[Messages], Messages]):
        clients = sample_clients(fed, t, self.clients_per_round).to(fed.device)
        down = send(Messages.make(t, "downlink", [SERVER], state.params[None], torch.zeros(len(clients)), clients))
        clients = clients[down.delivered.to(clients.device)]
        start = state.params.expand(len(clients), -1)
        train = self.trainer.train if self.vectorized else self.trainer.train_loop
        local, losses = train(start, clients, t, fed.data, fed.streams)
        up = send(Messages.make(t, "uplink", clients, local, torch.arange(len(clients)),
                                torch.full((len(clients),), SERVER)))
        ok = up.delivered.to(local.device)
        metrics = {"train_loss": float(losses.mean()) if len(losses) else float("nan"),
                   "participants": int(ok.sum())}
        if not bool(ok.any()):
            return state, metrics
        weights = fed.data.counts[clients[ok]] if self.weighted else torch.ones(int(ok.sum()), device=fed.device)
        # the server averages what arrived: taps may have changed the payload (e.g. a client-side defence)
        return FedAvgState(aggregate(up.payload[up.src[ok]].to(local.device), weights)), metrics

    def models(self, state: FedAvgState) -> dict[str, torch.Tensor]:
        """Parameter rows to evaluate: the global model."""
        return {"global": state.params[None]}
