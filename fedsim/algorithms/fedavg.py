"""FedAvg (McMahan et al., 2017) on a star: broadcast, local SGD on sampled clients, weighted average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedsim import rng
from fedsim.messages import SERVER, Messages
from fedsim.metrics import held_out_metrics, weight_var_ratio
from fedsim.state import ParamSpec, init_population, xavier_variance
from fedsim.rng import Streams
from fedsim.training import ClientData, LocalSGD, Trained, check_model_fits, check_momentum_has_effect, local_step


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
    return rng.sample_clients(fed.streams, round, fed.data.n_clients, k)


def client_step(trainer: LocalSGD, start: torch.Tensor, rows: torch.Tensor, round: int, data: ClientData,
                streams: Streams, momentum: torch.Tensor | None = None, vectorized: bool = True) -> Trained:
    """The node step: the clients at ``rows`` of ``data`` train from the model(s) ``start`` [m, P] that reached
    them; returns their uploads (``Trained``). A Flower node calls it with its own one-row ``ClientData``."""
    return local_step(trainer, start, rows, round, data, streams, momentum, vectorized)


def server_step(payload: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The server step: the new global model from the uploads that arrived, ``payload`` [m, P] in client-id
    order, and their ``weights`` [m] (sample counts or ones)."""
    return aggregate(payload, weights)


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
        if not 1 <= self.clients_per_round <= fed.data.n_clients:
            raise ValueError(f"clients_per_round = {self.clients_per_round} must be in 1..{fed.data.n_clients} (the "
                             "federation's clients)")
        check_model_fits(self.trainer.model, fed.data, fed.test_x, fed.test_y, fed.dtype)
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
        local, losses, buffers = client_step(self.trainer, start.to(fed.device), clients, t, fed.data, fed.streams,
                                             kept, self.vectorized)
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
        return FedAvgState(server_step(payload.to(fed.device), weights), momentum), metrics

    def evaluate(self, state, fed) -> dict[str, float]:
        """Test accuracy/loss of the models in ``models(state)``, and ``diagnostics(state)`` (the engine's
        evaluation rounds)."""
        return {**held_out_metrics(self.trainer.model, self.models(state), fed.test_x, fed.test_y),
                **self.diagnostics(state)}

    def diagnostics(self, state: FedAvgState) -> dict[str, float]:
        """The global model's weight variance relative to the Xavier value (``fedsim.metrics``)."""
        model = self.trainer.model
        return weight_var_ratio(state.params[None], ParamSpec.of(model), xavier_variance(model, self.init_scheme))

    def models(self, state: FedAvgState) -> dict[str, torch.Tensor]:
        """Parameter rows to evaluate: the global model."""
        return {"global": state.params[None]}
