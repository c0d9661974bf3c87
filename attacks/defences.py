"""Defences a client applies to its model update before sending it, and a tap that applies them in a simulation.

An *update* here is always ONE flat 1-D floating tensor ``[P]`` in the model's flat parameter layout
(``fedsim.state.ParamSpec``), e.g. ``local - global`` of a FedAvg client. Defences are pure functions: they never
modify their input, and all randomness comes from an explicit ``torch.Generator``.

* ``clip_and_noise(update, clip, sigma, generator)``: DP-SGD / DP-FedAvg style (Abadi et al. 2016; McMahan et al.
  2018). The whole update is scaled to L2 norm <= ``clip`` (``u * min(1, clip / ||u||_2)``), then Gaussian noise
  ``N(0, (sigma * clip)^2 I)`` is added to every coordinate: ``sigma`` is the *noise multiplier*, the noise
  standard deviation in units of the clip norm. The noise is added by each client to its own update (local /
  distributed DP), which is what hides the update from a curious server; DP-FedAvg's central variant instead
  adds noise once to the aggregate. The total noise norm is about ``sigma * clip * sqrt(P)``, so for a model of
  ~1e6 parameters sigma = 1e-3 already gives noise as large as the clipped update. ``clip = math.inf`` means no
  clipping (and then ``sigma`` must be 0). No privacy accounting (epsilon, delta) is done here.
* ``top_k(update, fraction)``: gradient pruning (Zhu et al. 2019, the DLG defence): keep the
  ``k = max(1, ceil(fraction * P))`` entries of largest magnitude and zero the rest. Ties at the threshold
  magnitude go to the LOWER index (deterministic, independent of the sort algorithm).

``ClipAndNoise`` and ``TopK`` wrap them as *defence objects* with the one interface the tap uses:
``defence(update, generator) -> update``. ``DefendUploads(defence, seed)`` is an engine tap: it remembers each
round's downlink (the global model) and rewrites every uplink row ``local`` to ``global + defence(local -
global)``, with a generator from the ``defence`` stream of ``Streams(seed)`` keyed by (client, round).
Taps run in the order given to ``simulate``: put ``DefendUploads`` BEFORE a ``Capture`` so the capture sees
what a curious server sees (the defended update); FedAvg aggregates the defended rows.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch

from fedsim.messages import Messages
from fedsim.rng import Streams

Defence = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""A defence object: ``defence(update [P], generator) -> defended update [P]`` (must not modify its input)."""


def _check_update(update: torch.Tensor) -> None:
    if not isinstance(update, torch.Tensor):
        raise TypeError(f"update must be a torch.Tensor, got {type(update).__name__}")
    if update.ndim != 1:
        raise ValueError(f"update must be a flat 1-D tensor [P], got shape {tuple(update.shape)}")
    if not update.is_floating_point():
        raise ValueError(f"update must be a floating tensor, got dtype {update.dtype}")
    bad = ~torch.isfinite(update)
    if bool(bad.any()):
        n_nan = int(torch.isnan(update).sum())
        raise ValueError(f"update has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite entries")


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_clip_sigma(clip: float, sigma: float) -> None:
    if not _is_real(clip) or math.isnan(clip) or clip <= 0:
        raise ValueError(f"clip must be > 0 (math.inf: no clipping), got {clip!r}")
    if not _is_real(sigma) or math.isnan(sigma) or sigma < 0 or math.isinf(sigma):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    if math.isinf(clip) and sigma > 0:
        raise ValueError(f"sigma = {sigma} needs a finite clip (noise std is sigma * clip); got clip = inf")


def _check_fraction(fraction: float) -> None:
    if not _is_real(fraction) or math.isnan(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")


def clip_and_noise(update: torch.Tensor, clip: float, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """``update * min(1, clip / ||update||_2) + N(0, (sigma * clip)^2 I)`` (a new tensor).

    The norm is computed in float64. An update with norm <= clip and ``sigma = 0`` is returned as is (the same
    tensor object). The noise is drawn on ``generator``'s device in the update's dtype; ``generator`` may be
    ``None`` only when ``sigma = 0``.
    """
    _check_update(update)
    _check_clip_sigma(clip, sigma)
    out = update
    norm = float(update.double().norm())
    if norm > clip:
        out = update * (clip / norm)
    if sigma > 0:
        if generator is None:
            raise ValueError("sigma > 0 needs a torch.Generator for the noise")
        noise = torch.randn(update.shape, generator=generator, dtype=update.dtype, device=generator.device)
        out = out + noise.to(update.device) * (sigma * clip)
    return out


def top_k(update: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the ``k = max(1, ceil(fraction * P))`` largest-magnitude entries, zero the rest (a new tensor).

    Ties at the k-th largest magnitude are broken towards the lower index. ``fraction = 1`` returns the update
    as is (the same tensor object).
    """
    _check_update(update)
    _check_fraction(fraction)
    n = update.numel()
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))   # 1e-9: 0.1 * 30 = 3.0000000000000004 -> 3
    if k >= n:
        return update
    mag = update.abs()
    threshold = torch.kthvalue(mag, n - k + 1).values   # the k-th largest magnitude
    keep = mag > threshold
    ties = (mag == threshold).nonzero().flatten()[: k - int(keep.sum())]
    keep[ties] = True
    return torch.where(keep, update, torch.zeros_like(update))


@dataclass(frozen=True)
class ClipAndNoise:
    """Defence object for :func:`clip_and_noise` (validated at construction)."""

    clip: float
    sigma: float

    def __post_init__(self):
        _check_clip_sigma(self.clip, self.sigma)

    def __call__(self, update: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clip_and_noise(update, self.clip, self.sigma, generator)


@dataclass(frozen=True)
class TopK:
    """Defence object for :func:`top_k` (validated at construction; the generator is not used)."""

    fraction: float

    def __post_init__(self):
        _check_fraction(self.fraction)

    def __call__(self, update: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return top_k(update, self.fraction)


def defence_generator(seed: int, round: int, client: int) -> torch.Generator:
    """The generator client ``client`` uses for its defence in round ``round``: stream ``defence`` of ``seed``."""
    return Streams(seed).generator("defence", client=client, round=round)


@dataclass
class DefendUploads:
    """Tap: every FedAvg uplink row ``local`` becomes ``global + defence(local - global, generator)``.

    ``global`` is the payload of the same round's downlink, which must pass this tap first (FedAvg sends the
    downlink before the uplink of a round). The generator is ``defence_generator(seed, round, client)``, so a
    client's noise does not depend on which other clients were sampled. When the defence leaves an update
    unchanged (equal values) the local row is forwarded untouched: ``global + (local - global)`` is not
    bit-identical to ``local`` in floating point, and a no-op defence must leave training bit-identical.
    Gossip messages are full models with no update to defend: they raise ``ValueError``.

    The tap returns a new payload; FedAvg averages the payload that arrived, so it trains on the defended
    updates (``tests/attacks/test_defences.py`` checks it). Taps before this one see the raw updates.
    """

    defence: Defence
    seed: int = 0
    _global: tuple[int, torch.Tensor] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if not callable(self.defence):
            raise TypeError(f"defence must be callable (update, generator) -> update, got {self.defence!r}")
        Streams(self.seed)  # validates the seed

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.kind == "downlink":
            if msgs.payload.shape[0] != 1:
                raise ValueError(f"DefendUploads expects one global model per downlink, "
                                 f"got {msgs.payload.shape[0]} rows")
            self._global = (msgs.round, msgs.payload[0].detach().clone())
            return msgs
        if msgs.kind == "gossip":
            raise ValueError("DefendUploads defends FedAvg uplinks (local - global); gossip messages carry full "
                             "models with no global reference")
        if msgs.kind != "uplink" or msgs.payload.shape[0] == 0:
            return msgs
        if self._global is None or self._global[0] != msgs.round:
            raise ValueError(f"uplink of round {msgs.round} before its downlink passed this tap; install "
                             "DefendUploads on the engine so it sees both (FedAvg)")
        start = self._global[1].to(msgs.payload.device)
        payload = msgs.payload.clone()
        with torch.no_grad():
            for r, client in enumerate(msgs.senders.tolist()):
                delta = payload[r] - start
                defended = self.defence(delta, defence_generator(self.seed, msgs.round, client))
                if defended.shape != delta.shape:
                    raise ValueError(f"the defence changed the update's shape {tuple(delta.shape)} -> "
                                     f"{tuple(defended.shape)}")
                if not torch.equal(defended, delta):
                    payload[r] = start + defended.to(payload.dtype)
        return dataclasses.replace(msgs, payload=payload)
