"""What crosses the wire in a round, and taps that observe (or perturb) it.

A ``Messages`` batch holds one payload row per sender and one entry per (sender -> receiver) edge,
so a gossip broadcast to k neighbours stores the model once, not k times. Every batch an algorithm
sends passes the engine's taps in order; a tap returns the batch, possibly with some edges marked
undelivered (an injected link drop) or with another payload (noise, quantisation, a defence: a tap may
also give every edge its own payload row by changing ``payload`` and ``src`` together). A tap never adds,
removes or reorders edges (``dst``). Receivers use what arrived: the payload rows of the delivered
edges after the last tap, never the sender's own copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from fedsim.rng import Streams

SERVER = -1
"""Client id used for the server in ``senders`` / ``dst``."""
KINDS = ("downlink", "uplink", "gossip")
"""What a batch of messages can be (``Messages.kind``)."""


@dataclass(frozen=True)
class Messages:
    """One batch of transmissions of round ``round``.

    ``payload[r]`` is what sender ``senders[r]`` transmits; edge e carries ``payload[src[e]]`` to
    client ``dst[e]`` (``SERVER`` for the server) and arrived iff ``delivered[e]``.
    """

    round: int
    kind: str                  # "downlink" (server -> clients), "uplink" (clients -> server), "gossip"
    senders: torch.Tensor      # [m] int64
    payload: torch.Tensor      # [m, P]
    src: torch.Tensor          # [e] int64, rows of payload
    dst: torch.Tensor          # [e] int64, receiving client ids
    delivered: torch.Tensor    # [e] bool

    @staticmethod
    def make(round: int, kind: str, senders, payload, src, dst) -> "Messages":
        dst = torch.as_tensor(dst, dtype=torch.int64)
        return Messages(round, kind, torch.as_tensor(senders, dtype=torch.int64), payload,
                        torch.as_tensor(src, dtype=torch.int64), dst, torch.ones(len(dst), dtype=torch.bool))

    @property
    def edge_senders(self) -> torch.Tensor:
        """Sender client id of every edge."""
        return self.senders[self.src.to(self.senders.device)]

    @property
    def bytes_per_message(self) -> int:
        return self.payload.shape[-1] * self.payload.element_size()

    def drop(self, mask: torch.Tensor) -> "Messages":
        """A copy with the edges in ``mask`` marked undelivered."""
        return dataclasses.replace(self, delivered=self.delivered & ~mask.to(self.delivered.device))

    def with_payload(self, payload: torch.Tensor) -> "Messages":
        """A copy carrying ``payload`` (same rows as before) instead: what a perturbing tap returns."""
        if payload.shape[0] != self.payload.shape[0]:
            raise ValueError(f"a tap must keep one payload row per sender ({self.payload.shape[0]}), "
                             f"got {payload.shape[0]}")
        return dataclasses.replace(self, payload=payload)

    def arrived(self) -> "Arrived":
        """Sender, receiver and payload of every delivered edge, in edge order.

        The payload of a broadcast with one row (a server's downlink) is an expanded view, not a copy.
        """
        ok = self.delivered.to(self.src.device)
        src = self.src[ok]
        if self.payload.shape[0] == 1:
            payload = self.payload.expand(len(src), *self.payload.shape[1:])
        else:
            payload = self.payload[src.to(self.payload.device)]
        return Arrived(self.senders[src.to(self.senders.device)], self.dst[ok.to(self.dst.device)], payload)


class Arrived(NamedTuple):
    """The delivered edges of a batch (``Messages.arrived``)."""

    senders: torch.Tensor    # [k] sender client id
    receivers: torch.Tensor  # [k] receiving client id (SERVER for the server)
    payload: torch.Tensor    # [k, P] what each receiver got, after the taps


@dataclass
class ByteCounter:
    """Counts bytes sent and delivered (payload bytes per edge). Install it last to see drops."""

    sent: int = 0
    delivered: int = 0
    _round: dict = field(default_factory=lambda: {"bytes_sent": 0, "bytes_delivered": 0})

    def __call__(self, msgs: Messages) -> Messages:
        n_sent, n_ok = len(msgs.dst), int(msgs.delivered.sum())
        self._round["bytes_sent"] += n_sent * msgs.bytes_per_message
        self._round["bytes_delivered"] += n_ok * msgs.bytes_per_message
        self.sent += n_sent * msgs.bytes_per_message
        self.delivered += n_ok * msgs.bytes_per_message
        return msgs

    def pop_round(self) -> dict:
        """This round's counts (and reset them)."""
        out, self._round = self._round, {"bytes_sent": 0, "bytes_delivered": 0}
        return out


def edge_keys(senders: torch.Tensor, receivers: torch.Tensor) -> torch.Tensor:
    """One int64 per (sender, receiver) pair of client ids (``SERVER`` = -1 included), for keyed draws."""
    return (senders.to(torch.int64) + 1) * (1 << 32) + (receivers.to(torch.int64) + 1)


def message_kinds(kinds, who: str) -> tuple[str, ...]:
    """A tap's ``kinds`` filter as a tuple of known kinds (one string is one kind, not its letters)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"{who}(kinds=...): unknown message kind {unknown[0]!r}; known: {', '.join(KINDS)}")
    return kinds


@dataclass(frozen=True)
class LinkDrop:
    """Drops every edge independently with probability ``p``.

    The fate of the message sender -> receiver in round t is drawn from the ``linkdrop/<kind>`` stream of
    ``seed`` keyed by (sender, receiver, t), so it does not depend on which other messages exist.
    """

    p: float
    seed: int = 0
    kinds: tuple[str, ...] = ("downlink", "uplink", "gossip")

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"link drop probability must be in [0, 1], got {self.p}")
        object.__setattr__(self, "kinds", message_kinds(self.kinds, "LinkDrop"))

    def __call__(self, msgs: Messages) -> Messages:
        if self.p == 0 or msgs.kind not in self.kinds or len(msgs.dst) == 0:
            return msgs
        keys = edge_keys(msgs.edge_senders, msgs.dst).cpu()
        u = Streams(self.seed).uniform(f"linkdrop/{msgs.kind}", keys, msgs.round, dtype=torch.float64)
        return msgs.drop(u < self.p)


@dataclass(frozen=True)
class Captured:
    """One captured transmission."""

    round: int
    kind: str
    sender: int
    receiver: int
    payload: torch.Tensor
    delivered: bool


@dataclass
class Capture:
    """Records transmissions matching the filters (``None`` = any): what a curious party would see.

    * curious server: ``Capture(receivers=[SERVER])``;
    * curious gossip neighbour j: ``Capture(receivers=[j])``;
    * eavesdropper on the link a-b: ``Capture(links=[(a, b), (b, a)])``.
    """

    rounds: list[int] | None = None
    senders: list[int] | None = None
    receivers: list[int] | None = None
    links: list[tuple[int, int]] | None = None
    kinds: tuple[str, ...] = ("uplink", "gossip")
    records: list[Captured] = field(default_factory=list)

    def __post_init__(self):
        self.kinds = message_kinds(self.kinds, "Capture")

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.kind not in self.kinds or (self.rounds is not None and msgs.round not in self.rounds):
            return msgs
        snd, dst = msgs.edge_senders, msgs.dst
        keep = torch.ones_like(msgs.delivered)
        if self.senders is not None:
            keep &= torch.isin(snd, torch.as_tensor(self.senders, device=snd.device))
        if self.receivers is not None:
            keep &= torch.isin(dst, torch.as_tensor(self.receivers, device=dst.device))
        if self.links is not None:
            pairs = torch.as_tensor([a * 2**32 + b + 1 for a, b in self.links], device=snd.device)
            keep &= torch.isin(snd * 2**32 + dst + 1, pairs)
        for e in keep.nonzero().flatten().tolist():
            self.records.append(Captured(msgs.round, msgs.kind, int(snd[e]), int(dst[e]),
                                         msgs.payload[msgs.src[e]].detach().clone(), bool(msgs.delivered[e])))
        return msgs
