"""Seeded random streams keyed by (purpose, client, round).

One root seed gives every (purpose, client, round) triple its own independent stream. Two
interfaces share the same keys:

* ``Streams.generator(purpose, client, round)`` -> a ``torch.Generator`` (and ``.numpy(...)`` ->
  a NumPy Generator) for code that handles one client at a time;
* ``Streams.uniform(purpose, clients, round, shape)`` -> counter-based uniforms for many clients in
  one batched call: row ``r`` depends only on (seed, purpose, clients[r], round, element index),
  so a client's randomness does not depend on which other clients are simulated, on batching,
  or on the order of calls. This is what lets the batched engine and the per-client reference
  loop draw identical mini-batches, and lets a resumed run continue bit-for-bit.

The counter-based generator is SplitMix64 (Steele et al., 2014), evaluated in NumPy uint64 arrays for CPU tensors
(9x faster than torch's int64 ops for 10,000 x 32 words, 3x for a few hundred) and in int64 tensors on an
accelerator; both give the same bits.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    """Reinterpret an unsigned 64-bit integer as a signed one (torch has no uint64 arithmetic)."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def splitmix64(z: int) -> int:
    """Pure-Python SplitMix64 finaliser of ``z + golden``: the reference for the tensor version."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 tensors."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64_tensor(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 on an int64 tensor (wrapping arithmetic), bit-identical to :func:`splitmix64`."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _srl(z, 30)) * _signed(_M1)
    z = (z ^ _srl(z, 27)) * _signed(_M2)
    return z ^ _srl(z, 31)


_GOLDEN_U, _M1_U, _M2_U = np.uint64(_GOLDEN), np.uint64(_M1), np.uint64(_M2)


def splitmix64_numpy(z: np.ndarray) -> np.ndarray:
    """SplitMix64 on a uint64 array (wrapping arithmetic), bit-identical to :func:`splitmix64`."""
    z = z + _GOLDEN_U
    z = (z ^ (z >> np.uint64(30))) * _M1_U
    z = (z ^ (z >> np.uint64(27))) * _M2_U
    return z ^ (z >> np.uint64(31))


def _numpy_path(device: torch.device) -> bool:
    """Whether draws for tensors on ``device`` run in NumPy (CPU) rather than in torch ops on the device."""
    return device.type == "cpu"


def _unit_interval(words: torch.Tensor) -> torch.Tensor:
    """Float64 numbers in [0, 1) from the top 53 bits of int64 random words (torch ops, any device)."""
    return _srl(words, 11).to(torch.float64) * (1.0 / (1 << 53))


@functools.lru_cache(maxsize=256)
def _purpose_hash(purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class Streams:
    """Independent random streams derived from one root ``seed``."""

    seed: int

    def __post_init__(self):
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if self.seed < 0:   # as a 64-bit word -1 is 2**64 - 1: two seeds, one run
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def _round_key(self, purpose: str, round: int | None) -> int:
        h = splitmix64(self.seed & _MASK64)
        h = splitmix64(h ^ _purpose_hash(purpose))
        return splitmix64(h ^ ((-1 if round is None else round) & _MASK64))

    def key(self, purpose: str, client: int | None = None, round: int | None = None) -> int:
        """The 64-bit key of one stream (unsigned int)."""
        return splitmix64(self._round_key(purpose, round) ^ ((-1 if client is None else client) & _MASK64))

    def generator(self, purpose: str, client: int | None = None, round: int | None = None,
                  device: str | torch.device = "cpu") -> torch.Generator:
        """A torch Generator seeded with the stream's key."""
        g = torch.Generator(device=device)
        g.manual_seed(self.key(purpose, client, round) >> 1)
        return g

    def numpy(self, purpose: str, client: int | None = None, round: int | None = None) -> np.random.Generator:
        """A NumPy Generator seeded with the stream's key."""
        return np.random.default_rng(self.key(purpose, client, round))

    def bits(self, purpose: str, clients: torch.Tensor, round: int | None, shape: tuple[int, ...]) -> torch.Tensor:
        """Raw int64 random words, shape ``[len(clients), *shape]``; row r is client ``clients[r]``'s stream."""
        clients = torch.as_tensor(clients, dtype=torch.int64)
        if _numpy_path(clients.device):
            return torch.from_numpy(self._words(purpose, clients, round, shape).view(np.int64))
        return self._tensor_words(purpose, clients, round, shape)

    def _tensor_words(self, purpose: str, clients: torch.Tensor, round: int | None,
                      shape: tuple[int, ...]) -> torch.Tensor:
        """:meth:`bits` in int64 tensor ops on ``clients``' device (the accelerator path)."""
        base = _signed(self._round_key(purpose, round))
        keys = splitmix64_tensor(clients ^ base)
        n = int(np.prod(shape)) if shape else 1
        counter = torch.arange(1, n + 1, dtype=torch.int64, device=clients.device) * _signed(_GOLDEN)
        words = splitmix64_tensor(keys[:, None] + counter[None, :])
        return words.reshape(len(clients), *shape)

    def _words(self, purpose: str, clients: torch.Tensor, round: int | None, shape: tuple[int, ...]) -> np.ndarray:
        """:meth:`bits` of CPU ``clients`` as a uint64 array."""
        keys = splitmix64_numpy(clients.numpy().view(np.uint64) ^ np.uint64(self._round_key(purpose, round)))
        n = int(np.prod(shape)) if shape else 1
        counter = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN_U
        return splitmix64_numpy(keys[:, None] + counter[None, :]).reshape(len(keys), *shape)

    def uniform(self, purpose: str, clients: torch.Tensor, round: int | None, shape: tuple[int, ...] = (),
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) numbers, shape ``[len(clients), *shape]`` (53 random bits, rounded to dtype)."""
        clients = torch.as_tensor(clients, dtype=torch.int64)
        if _numpy_path(clients.device):
            words = self._words(purpose, clients, round, shape)
            u = torch.from_numpy((words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))
        else:
            u = _unit_interval(self._tensor_words(purpose, clients, round, shape))
        return u.to(dtype).clamp_(max=1.0 - torch.finfo(dtype).eps / 2) if dtype != torch.float64 else u

    def randint(self, purpose: str, clients: torch.Tensor, round: int | None, high: torch.Tensor | int,
                shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Integers uniform in ``[0, high)`` where ``high`` is a scalar or one bound per client."""
        u = self.uniform(purpose, clients, round, shape, dtype=torch.float64)
        high = torch.as_tensor(high, dtype=torch.float64, device=u.device)
        if high.ndim == 1:
            high = high.reshape(-1, *([1] * len(shape)))
        return (u * high).to(torch.int64)


def sample_clients(streams: Streams, round: int, n: int, k: int, purpose: str = "sample") -> torch.Tensor:
    """``k`` distinct clients of ``n``, sorted, from the ``purpose`` stream of ``round`` (all of them if k >= n).

    The one client sampler: FedAvg's clients per round, FedPG's sampled clients, gossip's active nodes.
    """
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=streams.generator(purpose, round=round))[:k].sort().values
