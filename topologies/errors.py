"""Exceptions raised by the topologies package.

Every error is a ``TopologyError``, itself a ``ValueError``, so callers that
only care about "bad input" can catch ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "TopologyError",
    "DisconnectedGraphError",
    "NotStochasticError",
    "InvalidTopologyParameterError",
]

_MAX_SIZES_SHOWN = 10


class TopologyError(ValueError):
    """Base class for every error about a graph or a mixing matrix."""


class InvalidTopologyParameterError(TopologyError):
    """A generator parameter, graph property or edge-list line is invalid."""


class NotStochasticError(TopologyError):
    """A mixing matrix has negative entries or rows/columns that do not sum to 1."""


class DisconnectedGraphError(TopologyError):
    """The graph is not (strongly) connected, so gossip cannot reach consensus.

    ``sizes`` holds the component sizes, largest first; ``n_components`` their count.
    """

    def __init__(self, message: str, sizes: Sequence[int] = ()):
        super().__init__(message)
        self.sizes = tuple(int(s) for s in sizes)
        self.n_components = len(self.sizes)

    @classmethod
    def from_sizes(
        cls, sizes: Sequence[int], *, strongly: bool = False, where: str = "", hint: str = ""
    ) -> "DisconnectedGraphError":
        """Build the standard message from component sizes (largest first)."""
        sizes = sorted((int(s) for s in sizes), reverse=True)
        shown = ", ".join(str(s) for s in sizes[:_MAX_SIZES_SHOWN])
        if len(sizes) > _MAX_SIZES_SHOWN:
            shown += f", ... ({len(sizes) - _MAX_SIZES_SHOWN} more)"
        kind = "strongly connected components" if strongly else "connected components"
        state = "not strongly connected" if strongly else "disconnected"
        need = "a strongly connected graph" if strongly else "a connected graph"
        msg = f"graph is {state}: {len(sizes)} {kind} (sizes {shown}); gossip needs {need}"
        if where:
            msg = f"{where}: {msg}"
        if hint:
            msg = f"{msg}; {hint}"
        return cls(msg, sizes)
