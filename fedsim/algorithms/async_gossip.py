"""Asynchronous gossip learning in ticks: per-node clocks, inboxes, delays and churn (the authors' time model).

Tian et al. (2024) simulate time in ticks: a node trains one mini-batch every U{8..12} ticks, sends its model to
all its neighbours, keeps what it receives in a buffer and averages once the buffer holds ``degree`` models. Here
a "round" of the engine is one tick, and every tick is a few batched calls over the nodes:

1. churn (``churn > 0``): each online node goes offline with probability ``churn`` for U{churn_ticks} ticks
   (streams ``churn`` and ``churn_ticks`` of (node, tick)). An offline node neither trains, sends nor receives:
   a message that reaches it while it is offline is lost. Its inbox keeps what it held before and it goes on
   collecting when it is back; a clock that came due meanwhile fires at its first tick back.
2. messages in flight (``delay > 0``) that arrive at this tick enter their receivers' inboxes.
3. every online node whose clock fires (``next_train <= tick``) takes ``trainer.steps`` SGD steps (mini-batches
   from the ``batch`` stream of (node, tick); momentum kept per node), draws its next interval U{interval}
   (stream ``clock``) and sends its new model to every neighbour of W_tick: one ``Messages`` batch through the
   taps (loss, capture, byte count), with the mixing weight W_ji as the message's weight for the ``plain`` rule.
4. with ``delay = 0`` the delivered messages enter the inboxes at once, else they arrive ``delay`` ticks later.
5. every online node whose inbox holds at least its degree in W_tick models averages with its rule
   (``fedsim.averaging``: plain = W-weighted, normalised over what is in the inbox; beta; variance_corrected)
   and empties its inbox. Inboxes are running sums (``fedsim.averaging.Inbox``): no stored copies of models.

With ``interval = (1, 1)``, no delay and no churn every node trains, sends and averages in every tick: exactly the
synchronous ``Gossip`` round with the same rule (tested). The state holds everything, messages in flight
included, so a run checkpoints and resumes bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from fedsim.algorithms.gossip import evaluation_rows, population_diagnostics
from fedsim.averaging import Averaging, Inbox, average_inbox, corrected_slices, tensor_variances
from fedsim.messages import Messages
from fedsim.mixing import SparseW
from fedsim.state import ParamSpec, init_population
from fedsim.training import LocalSGD


@dataclass(frozen=True)
class AsyncGossipState:
    """Nodes' models ``x`` [N, P] (and momentum buffers), clocks, offline periods, inboxes and messages in flight.

    In flight: payload rows ``flight_payload`` [R, P] arriving at ``flight_arrival`` [R]; edges ``flight_src``
    (row) -> ``flight_dst`` (node) with ``flight_weight`` [E].
    """

    x: torch.Tensor
    momentum: torch.Tensor | None
    next_train: torch.Tensor
    offline_until: torch.Tensor
    inbox_total: torch.Tensor
    inbox_weight: torch.Tensor
    inbox_count: torch.Tensor
    inbox_variance: torch.Tensor
    flight_payload: torch.Tensor
    flight_arrival: torch.Tensor
    flight_src: torch.Tensor
    flight_dst: torch.Tensor
    flight_weight: torch.Tensor

    VARIABLE_ROWS: ClassVar[tuple[str, ...]] = ("flight_payload", "flight_arrival", "flight_src", "flight_dst",
                                                "flight_weight")

    def __post_init__(self):
        rows, edges = len(self.flight_payload), len(self.flight_src)
        if len(self.flight_arrival) != rows or len(self.flight_dst) != edges or len(self.flight_weight) != edges:
            raise ValueError("messages in flight: payload rows and arrival ticks, or edge fields, differ in number")
        if edges and (int(self.flight_src.min()) < 0 or int(self.flight_src.max()) >= rows):
            raise ValueError("messages in flight: an edge refers to a payload row that does not exist")

    @property
    def models(self) -> torch.Tensor:
        return self.x

    @property
    def inbox(self) -> Inbox:
        return Inbox(self.inbox_total, self.inbox_weight, self.inbox_count, self.inbox_variance)


@dataclass(frozen=True)
class AsyncGossip:
    """Gossip learning on per-node clocks (see the module docstring); ``round(state, tick, ...)`` is one tick."""

    trainer: LocalSGD
    averaging: Averaging = Averaging("beta")
    interval: tuple[int, int] = (8, 12)
    delay: int = 0
    churn: float = 0.0
    churn_ticks: tuple[int, int] = (10, 50)
    same_init: bool = True
    init_scheme: str = "default"
    eval_nodes: int = 10
    vectorized: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        lo, hi = self.interval
        if not 1 <= lo <= hi:
            raise ValueError(f"interval must be (low, high) with 1 <= low <= high, got {self.interval}")
        if self.delay < 0 or not 0 <= self.churn < 1 or not 1 <= self.churn_ticks[0] <= self.churn_ticks[1]:
            raise ValueError(f"need delay >= 0, 0 <= churn < 1 and 1 <= churn_ticks low <= high; got {self.delay}, "
                             f"{self.churn}, {self.churn_ticks}")

    def _slices(self) -> list[slice]:
        spec = ParamSpec.of(self.trainer.model)
        return corrected_slices(spec, self.averaging.tensors) if self.averaging.corrects else []

    def init(self, fed) -> AsyncGossipState:
        if fed.schedule is None or fed.schedule.directed:
            raise ValueError("asynchronous gossip needs an undirected topology")
        n, dev, dt = fed.data.n_clients, fed.device, fed.dtype
        x = init_population(self.trainer.model, torch.arange(n), fed.streams, shared=self.same_init, dtype=dt,
                            device=dev, init=self.init_scheme)
        p, L = x.shape[1], len(self._slices())
        inbox = Inbox.empty(n, p, L, dt, dev)
        zeros = torch.zeros(n, dtype=torch.int64, device=dev)
        none = torch.zeros(0, dtype=torch.int64, device=dev)
        return AsyncGossipState(x, torch.zeros_like(x) if self.trainer.momentum else None, zeros, zeros.clone(),
                                inbox.total, inbox.weight, inbox.count, inbox.variance,
                                x.new_zeros(0, p), none, none.clone(), none.clone(), x.new_zeros(0))

    def _mixing(self, fed, t: int) -> SparseW:
        W = fed.schedule.at(t)
        hit = self._cache.get("W")
        if hit is None or hit[0] is not W:
            sw = SparseW.from_scipy(W, device=fed.device, dtype=fed.dtype)
            degree = torch.bincount(sw.rows[sw.off], minlength=sw.n)
            self._cache["W"] = hit = (W, sw, degree)
        return hit[1], hit[2]

    def round(self, state: AsyncGossipState, t: int, fed, send: Callable[[Messages], Messages]):
        n, dev = fed.data.n_clients, fed.device
        nodes = torch.arange(n, device=dev)
        offline_until = state.offline_until
        if self.churn:
            online = offline_until <= t
            u = fed.streams.uniform("churn", nodes.cpu(), t, dtype=torch.float64).to(dev)
            going = online & (u < self.churn)
            lo, hi = self.churn_ticks
            ticks = fed.streams.randint("churn_ticks", nodes.cpu(), t, hi - lo + 1).to(dev) + lo
            offline_until = torch.where(going, t + ticks, offline_until)
        online = offline_until <= t
        slices = self._slices()
        inbox = state.inbox

        # messages in flight that arrive now
        flight = (state.flight_payload, state.flight_arrival, state.flight_src, state.flight_dst, state.flight_weight)
        if len(state.flight_arrival):
            inbox, flight = self._land(inbox, flight, t, online, slices)

        # nodes whose clock fires train and send
        W, degree = self._mixing(fed, t)
        firing = online & (state.next_train <= t)
        trainers = firing.nonzero().flatten()
        x, momentum, next_train = state.x, state.momentum, state.next_train
        metrics = {"participants": len(trainers), "train_loss": float("nan")}
        if len(trainers):
            train = self.trainer.train if self.vectorized else self.trainer.train_loop
            kept = None if momentum is None else momentum[trainers]
            new, losses, buffers = train(x[trainers], trainers, t, fed.data, fed.streams, momentum=kept)
            x = x.index_copy(0, trainers, new)
            if momentum is not None:
                momentum = momentum.index_copy(0, trainers, buffers)
            lo, hi = self.interval
            step = fed.streams.randint("clock", trainers.cpu(), t, hi - lo + 1).to(dev) + lo
            next_train = next_train.index_copy(0, trainers, t + step)
            metrics["train_loss"] = float(losses.mean())
            inbox, flight = self._send(inbox, flight, new, trainers, firing, W, t, online, slices, send)

        # full inboxes average
        ready = online & (inbox.count >= degree) & (inbox.count > 0)
        if bool(ready.any()):
            own_weight = W.vals[W.diag_pos] if self.averaging.rule == "plain" else None
            mixed = average_inbox(x, inbox, self.averaging, slices, own_weight=own_weight)
            x = torch.where(ready[:, None], mixed, x)
            inbox = inbox.cleared(ready)
        metrics.update(averaged=int(ready.sum()), offline=int((~online).sum()))
        return AsyncGossipState(x, momentum, next_train, offline_until, inbox.total, inbox.weight, inbox.count,
                                inbox.variance, *flight), metrics

    def _send(self, inbox, flight, payload, trainers, firing, W, t, online, slices, send):
        """The trainers' broadcast: through the taps, then into the inboxes (or in flight for ``delay`` ticks)."""
        senders, receivers = W.edges()
        mine = firing[senders]
        weights = W.vals[W.off][mine]
        row = torch.full_like(firing, -1, dtype=torch.int64)
        row[trainers] = torch.arange(len(trainers), device=row.device)
        msgs = send(Messages.make(t, "gossip", trainers, payload, row[senders[mine]], receivers[mine]))
        ok = msgs.delivered.to(payload.device)
        src, dst, w = msgs.src[ok].to(payload.device), msgs.dst[ok].to(payload.device), weights[ok]
        if self.averaging.rule != "plain":
            w = torch.ones_like(w)
        sent = msgs.payload.to(payload.dtype)
        if self.delay == 0:
            here = online[dst]
            variances = tensor_variances(sent, slices, self.averaging.unbiased)
            return inbox + Inbox.received(len(online), dst[here], src[here], sent, w[here], variances), flight
        rows, arrival, fsrc, fdst, fw = flight
        arrival = torch.cat([arrival, torch.full((len(sent),), t + self.delay, dtype=torch.int64, device=sent.device)])
        return inbox, (torch.cat([rows, sent]), arrival, torch.cat([fsrc, src + len(rows)]), torch.cat([fdst, dst]),
                       torch.cat([fw, w]))

    def _land(self, inbox, flight, t, online, slices):
        """Deliver the messages in flight that arrive at tick ``t`` (to online receivers) and drop them from flight."""
        rows, arrival, src, dst, w = flight
        now = arrival == t
        edges = now[src]
        if bool(edges.any()):
            e_src, e_dst, e_w = src[edges], dst[edges], w[edges]
            here = online[e_dst]
            variances = tensor_variances(rows, slices, self.averaging.unbiased)
            inbox = inbox + Inbox.received(len(online), e_dst[here], e_src[here], rows, e_w[here], variances)
        keep_rows, keep_edges = ~now, ~edges
        new_index = torch.cumsum(keep_rows.to(torch.int64), 0) - 1
        return inbox, (rows[keep_rows], arrival[keep_rows], new_index[src[keep_edges]], dst[keep_edges],
                       w[keep_edges])

    def diagnostics(self, state: AsyncGossipState) -> dict[str, float]:
        return population_diagnostics(state.models, self.trainer.model, self.init_scheme)

    def models(self, state: AsyncGossipState) -> dict[str, torch.Tensor]:
        return evaluation_rows(state.models, self.eval_nodes)
