"""The round loop: algorithm round (local step -> messages through taps -> aggregate or mix) -> metrics.

The engine knows nothing about files, plots or progress bars: it returns a ``Result`` and calls an
optional ``on_round`` hook after every round (the CLI uses it for progress and checkpoints).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from fedsim.derived import Derived
from fedsim.files import atomic_write_text  # noqa: F401  (re-exported: experiments import it from here)
from fedsim.messages import ByteCounter, Messages
from fedsim.rng import Streams
from fedsim.training import ClientData


class Schedule(Protocol):
    """A (possibly time-varying) topology: ``at(t)`` gives the round's mixing matrix."""

    n: int
    directed: bool

    def at(self, t: int): ...


@dataclass(frozen=True)
class Federation:
    """Everything a round reads but never changes: data, test set, topology, random streams, device."""

    data: ClientData
    test_x: torch.Tensor
    test_y: torch.Tensor
    streams: Streams
    schedule: Schedule | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    derived: Derived = field(default_factory=Derived, compare=False, repr=False)   # e.g. sparse mixing matrices

    def __post_init__(self):
        # floating-point samples in another dtype than the parameters' (NumPy's default float64) are converted
        # once, here: training and evaluation multiply them with the parameters
        def in_dtype(t):
            return t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        x = getattr(self.data, "x", None)
        if in_dtype(x) is not x:
            object.__setattr__(self, "data", dataclasses.replace(self.data, x=in_dtype(x)))
        object.__setattr__(self, "test_x", in_dtype(self.test_x))


@dataclass
class Result:
    """Per-round history (a list of flat dicts) and the final algorithm state; ``seconds``: the wall time of the
    rounds, over every invocation of a resumed run (set by ``fedsim.experiment.run``; None when not measured)."""

    history: list[dict]
    state: Any = None
    seconds: float | None = None

    def column(self, key: str) -> list:
        """One metric over the rounds (NaN where it was not recorded)."""
        return [row.get(key, math.nan) for row in self.history]

    def final(self, key: str) -> float:
        """The last recorded value of a metric."""
        values = [row[key] for row in self.history if key in row]
        if not values:
            raise KeyError(f"metric {key!r} was never recorded; recorded: {sorted(self.keys())}")
        return values[-1]

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.history:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def to_json(self, path: str | Path) -> None:
        """Write the history as strict JSON (atomically): NaN and +-inf are written as ``null``."""
        rows = [{k: _finite_or_none(v) for k, v in row.items()} for row in self.history]
        atomic_write_text(path, json.dumps({"history": rows}, indent=1, allow_nan=False))

    def to_csv(self, path: str | Path) -> None:
        """Write the history as CSV, one row per round (atomically)."""
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.keys(), restval="")
        writer.writeheader()
        writer.writerows({k: "" if _finite_or_none(v) is None else v for k, v in row.items()}
                         for row in self.history)  # NaN / inf: an empty cell, as for a metric not recorded
        atomic_write_text(path, buf.getvalue())

    @staticmethod
    def from_json(path: str | Path) -> "Result":
        """Read ``to_json``'s file; ``null`` comes back as NaN (the key stays, so ``final`` gives NaN as before)."""
        rows = json.loads(Path(path).read_text())["history"]
        return Result([{k: math.nan if v is None else v for k, v in row.items()} for row in rows])


def _finite_or_none(value):
    """``None`` for a missing or non-finite float, else the value (for strict JSON and CSV)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def evaluate_models(algorithm, state, fed: Federation) -> dict[str, float]:
    """The algorithm's own test metrics (``algorithm.evaluate(state, fed)``): e.g. accuracy and loss of the models
    it exposes and its diagnostics (FedAvg, gossip), or subspace angles and anomaly scores (federated PCA)."""
    return algorithm.evaluate(state, fed)


def simulate(algorithm, fed: Federation, rounds: int, *, state=None, start_round: int = 0,
             history: list[dict] | None = None, taps: Sequence[Callable[[Messages], Messages]] = (),
             eval_every: int = 1, on_round: Callable[[int, Any, list[dict]], None] | None = None) -> Result:
    """Run ``rounds`` rounds of ``algorithm`` (resuming from ``state``/``start_round`` if given).

    Every message batch passes ``taps`` in order, then a byte counter. Test metrics are computed every
    ``eval_every`` rounds and after the last one (``eval_every = 0``: never).
    """
    if rounds < 0 or start_round < 0 or eval_every < 0:
        raise ValueError(f"need rounds >= 0, start_round >= 0, eval_every >= 0; got {rounds}, {start_round}, {eval_every}")
    state = algorithm.init(fed) if state is None else state
    history = list(history or [])
    counter = ByteCounter()
    chain = [*taps, counter]

    def send(msgs: Messages) -> Messages:
        edges = msgs.dst
        for tap in chain:
            msgs = tap(msgs)
            if not isinstance(msgs, Messages):
                raise TypeError(f"tap {tap!r} returned {type(msgs).__name__}; a tap must return the Messages it "
                                "was given (changed or not)")
            if msgs.dst is not edges and not torch.equal(msgs.dst, edges):
                raise ValueError(f"tap {tap!r} changed the edges of a {msgs.kind} batch; taps may change "
                                 "payloads and deliveries, never who sends to whom")
        return msgs

    for t in range(start_round, rounds):
        state, metrics = algorithm.round(state, t, fed, send)
        row = {"round": t + 1, **metrics, **counter.pop_round()}
        if eval_every and ((t + 1) % eval_every == 0 or t + 1 == rounds):
            row.update(evaluate_models(algorithm, state, fed))
        history.append(row)
        if on_round is not None:
            on_round(t, state, history)
    return Result(history, state)
