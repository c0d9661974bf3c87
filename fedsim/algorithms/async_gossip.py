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

With ``interval = (1, 1)``, no delay and no churn every node trains, sends and averages in every tick: the
synchronous ``Gossip`` round with the same rule (within float rounding: the sums run in another order; tested).
The state holds everything, messages in flight included, so a run checkpoints and resumes bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from fedsim import memory
from fedsim.algorithms.gossip import averaging_of, check_schedule, evaluation_rows, population_diagnostics
from fedsim.averaging import Averaging, Inbox, average_inbox, corrected_slices, tensor_variances
from fedsim.messages import Messages
from fedsim.metrics import held_out_metrics
from fedsim.mixing import SparseW
from fedsim.state import ParamSpec, init_population
from fedsim.training import LocalSGD, check_model_fits


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
    """Gossip learning on per-node clocks (see the module docstring); ``round(state, tick, ...)`` is one tick.

    A tick never writes into the state it was given: the tensors it changes (models, momentum, clocks, inbox
    sums) are copied first, which at a tick where a tenth of the nodes train is about a third of its time.
    ``in_place = True`` drops those copies: ``round`` then changes the given state's tensors and returns them
    (the same numbers, bit for bit). ``simulate`` never looks at a state again once the next tick has run, so a
    run through it is unchanged; do not use it while holding on to states (an initial state you run twice, an
    ``on_round`` hook that keeps the states it sees rather than saving them). ``fedsim run`` (``experiment.run``),
    which owns every state it makes, runs its ticks in place.
    """

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
    in_place: bool = False

    def __post_init__(self):
        object.__setattr__(self, "averaging", averaging_of(self.averaging))
        lo, hi = self.interval
        if not 1 <= lo <= hi:
            raise ValueError(f"interval must be (low, high) with 1 <= low <= high, got {self.interval}")
        if self.delay < 0 or not 0 <= self.churn < 1 or not 1 <= self.churn_ticks[0] <= self.churn_ticks[1]:
            raise ValueError(f"need delay >= 0, 0 <= churn < 1 and 1 <= churn_ticks low <= high; got {self.delay}, "
                             f"{self.churn}, {self.churn_ticks}")

    def _slices(self, fed) -> list[slice]:
        """The tensors the correction rescales (none for the other rules), derived once per model."""
        model = self.trainer.model
        return fed.derived.get(("corrected slices", self.averaging.tensors), model, lambda: corrected_slices(
            ParamSpec.of(model), self.averaging.tensors)) if self.averaging.corrects else []

    def init(self, fed) -> AsyncGossipState:
        check_schedule(fed, "asynchronous gossip")
        check_model_fits(self.trainer.model, fed.data, fed.test_x, fed.test_y, fed.dtype)
        if fed.schedule.directed:
            raise ValueError("asynchronous gossip needs an undirected topology")
        n, dev, dt = fed.data.n_clients, fed.device, fed.dtype
        x = init_population(self.trainer.model, torch.arange(n), fed.streams, shared=self.same_init, dtype=dt,
                            device=dev, init=self.init_scheme)
        p, L = x.shape[1], len(self._slices(fed))
        inbox = Inbox.empty(n, p, L, dt, dev)
        zeros = torch.zeros(n, dtype=torch.int64, device=dev)
        none = torch.zeros(0, dtype=torch.int64, device=dev)
        return AsyncGossipState(x, torch.zeros_like(x) if self.trainer.momentum else None, zeros, zeros.clone(),
                                inbox.total, inbox.weight, inbox.count, inbox.variance,
                                x.new_zeros(0, p), none, none.clone(), none.clone(), x.new_zeros(0))

    def _mixing(self, fed, t: int) -> "_Topology":
        """The tick's graph: its ``SparseW`` and edge lists, built once per matrix (kept in ``fed.derived``)."""
        W = fed.schedule.at(t)

        def build() -> _Topology:
            sw = SparseW.from_scipy(W, device=fed.device, dtype=fed.dtype)
            senders, receivers = sw.edges()
            return _Topology(sw, senders, receivers, sw.vals[sw.off], torch.bincount(receivers, minlength=sw.n),
                             sw.vals[sw.diag_pos])

        return fed.derived.get("async topology", W, build)

    def round(self, state: AsyncGossipState, t: int, fed, send: Callable[[Messages], Messages]):
        n, dev = fed.data.n_clients, fed.device
        offline_until = state.offline_until
        if self.churn:
            nodes = torch.arange(n)
            online = offline_until <= t
            u = fed.streams.uniform("churn", nodes, t, dtype=torch.float64).to(dev)
            going = online & (u < self.churn)
            lo, hi = self.churn_ticks
            ticks = fed.streams.randint("churn_ticks", nodes, t, hi - lo + 1).to(dev) + lo
            offline_until = torch.where(going, t + ticks, offline_until)
        online = offline_until <= t
        slices = self._slices(fed)
        new = _Writable(self.in_place, x=state.x, momentum=state.momentum, next_train=state.next_train,
                        total=state.inbox_total, weight=state.inbox_weight, count=state.inbox_count,
                        variance=state.inbox_variance)

        # messages in flight that arrive now
        flight = (state.flight_payload, state.flight_arrival, state.flight_src, state.flight_dst, state.flight_weight)
        if len(state.flight_arrival):
            flight = self._land(new, flight, t, online, slices)

        # nodes whose clock fires train and send
        top = self._mixing(fed, t)
        firing = online & (state.next_train <= t)
        trainers = firing.nonzero().flatten()
        metrics = {"participants": len(trainers), "train_loss": float("nan")}
        if len(trainers):
            train = self.trainer.train if self.vectorized else self.trainer.train_loop
            everyone = len(trainers) == n   # (tick 0, every clock at 1): no gathers, the results are the state
            momentum = state.momentum
            kept = None if momentum is None else (momentum if everyone else momentum.index_select(0, trainers))
            rows = state.x if everyone else state.x.index_select(0, trainers)
            params, losses, buffers = train(rows, trainers, t, fed.data, fed.streams, momentum=kept)
            if everyone:
                new.set("x", params)
            else:
                new.write("x").index_copy_(0, trainers, params)
            if momentum is not None:
                if everyone:
                    new.set("momentum", buffers)
                else:
                    new.write("momentum").index_copy_(0, trainers, buffers)
            lo, hi = self.interval
            step = fed.streams.randint("clock", trainers.cpu(), t, hi - lo + 1).to(dev) + lo
            new.write("next_train").index_copy_(0, trainers, t + step)
            metrics["train_loss"] = float(losses.mean())
            flight = self._send(new, flight, params, trainers, firing, top, t, online, slices, send)

        # full inboxes average: only those rows are computed
        ready = (online & (new["count"] >= top.degree) & (new["count"] > 0)).nonzero().flatten()
        if len(ready):
            inbox = Inbox(new["total"], new["weight"], new["count"], new["variance"])
            plain = self.averaging.rule == "plain"
            if len(ready) == n:
                new.set("x", average_inbox(new["x"], inbox, self.averaging, slices,
                                           own_weight=top.own_weight if plain else None))
                for name, value in zip(_INBOX, _fields(inbox)):   # every inbox is empty again
                    new.set(name, value.zero_() if name in new.own else torch.zeros_like(value))
            else:
                mixed = average_inbox(new["x"].index_select(0, ready), inbox.rows(ready), self.averaging, slices,
                                      own_weight=top.own_weight[ready] if plain else None)
                new.write("x").index_copy_(0, ready, mixed)
                Inbox(*(new.write(name) for name in _INBOX)).clear_(ready)
        metrics.update(averaged=len(ready), offline=int((~online).sum()))
        return AsyncGossipState(new["x"], new["momentum"], new["next_train"], offline_until, new["total"],
                                new["weight"], new["count"], new["variance"], *flight), metrics

    def _receive(self, new: "_Writable", n: int, receivers, rows, payload, weights, variances) -> None:
        """Messages enter their receivers' inboxes (running sums)."""
        if not len(receivers):
            return
        if "count" not in new.own and not bool(new["count"].any()):   # all empty (tick 0, every clock at 1)
            got = Inbox.received(n, receivers, rows, payload, weights, variances)
        else:   # the old sums plus the new, into fresh tensors (in place if this tick made them already)
            got = Inbox(*(new[name] for name in _INBOX)).plus(receivers, rows, payload, weights, variances,
                                                               in_place="count" in new.own)
        for name, value in zip(_INBOX, _fields(got)):
            new.set(name, value)

    def _send(self, new, flight, payload, trainers, firing, top, t, online, slices, send):
        """The trainers' broadcast: through the taps, then into the inboxes (or in flight for ``delay`` ticks)."""
        senders, receivers = top.senders, top.receivers
        mine = firing[senders]
        weights = top.weights[mine]
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
            self._receive(new, len(online), dst[here], src[here], sent, w[here], variances)
            return flight
        rows, arrival, fsrc, fdst, fw = flight
        arrival = torch.cat([arrival, torch.full((len(sent),), t + self.delay, dtype=torch.int64, device=sent.device)])
        return (torch.cat([rows, sent]), arrival, torch.cat([fsrc, src + len(rows)]), torch.cat([fdst, dst]),
                torch.cat([fw, w]))

    def _land(self, new, flight, t, online, slices):
        """Deliver the messages in flight that arrive at tick ``t`` (to online receivers) and drop them from flight."""
        rows, arrival, src, dst, w = flight
        now = arrival == t
        edges = now[src]
        if bool(edges.any()):
            e_src, e_dst, e_w = src[edges], dst[edges], w[edges]
            here = online[e_dst]
            variances = rows.new_zeros(len(rows), len(slices))
            if slices:   # of the rows that land now only
                landing = now.nonzero().flatten()
                variances[landing] = tensor_variances(rows[landing], slices, self.averaging.unbiased)
            self._receive(new, len(online), e_dst[here], e_src[here], rows, e_w[here], variances)
        keep_rows, keep_edges = ~now, ~edges
        new_index = torch.cumsum(keep_rows.to(torch.int64), 0) - 1
        return (rows[keep_rows], arrival[keep_rows], new_index[src[keep_edges]], dst[keep_edges], w[keep_edges])

    def evaluate(self, state, fed) -> dict[str, float]:
        """Test accuracy/loss of the models in ``models(state)``, and ``diagnostics(state)`` (the engine's
        evaluation rounds)."""
        return {**held_out_metrics(self.trainer.model, self.models(state), fed.test_x, fed.test_y),
                **self.diagnostics(state)}

    def diagnostics(self, state: AsyncGossipState) -> dict[str, float]:
        return population_diagnostics(state.models, self.trainer.model, self.init_scheme)

    def models(self, state: AsyncGossipState) -> dict[str, torch.Tensor]:
        return evaluation_rows(state.models, self.eval_nodes)


_INBOX = ("total", "weight", "count", "variance")


def _fields(inbox: Inbox) -> tuple[torch.Tensor, ...]:
    return inbox.total, inbox.weight, inbox.count, inbox.variance


@dataclass(frozen=True)
class _Topology:
    """What a tick reads of W_tick: the matrix, its messages (sender, receiver, weight W_ji), every node's degree
    and its own weight W_ii."""

    W: SparseW
    senders: torch.Tensor
    receivers: torch.Tensor
    weights: torch.Tensor
    degree: torch.Tensor
    own_weight: torch.Tensor


class _Writable:
    """The tensors of a tick's new state: each starts as the old state's and is copied, once, before its first
    change, so a round never writes into the state it was given (a state stays valid after the next tick).
    ``in_place``: the old state's tensors are the round's to change."""

    def __init__(self, in_place: bool, **tensors: torch.Tensor | None):
        self.tensors = tensors
        self.own: set[str] = set(tensors) if in_place else set()

    def __getitem__(self, name: str) -> torch.Tensor | None:
        return self.tensors[name]

    def write(self, name: str) -> torch.Tensor:
        """The tensor, ours to change in place."""
        if name not in self.own:
            old = self.tensors[name]
            self.tensors[name] = (memory.empty(tuple(old.shape), old.dtype).copy_(old) if old.device.type == "cpu"
                                  else old.clone())
            self.own.add(name)
        return self.tensors[name]

    def set(self, name: str, value: torch.Tensor) -> None:
        """A fresh tensor that nobody else holds."""
        self.tensors[name] = value
        self.own.add(name)
