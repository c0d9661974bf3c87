"""What a run derives from its fixed inputs (sparse forms of mixing matrices, per-graph constants), built once.

It lives in the run's context (``Federation.derived``, ``PCAFederation.derived``), not in the algorithm objects,
which only hold their parameters. A driver that builds a new context (a resumed run, a Flower node) starts with an
empty one, and nothing here is ever checkpointed: every entry can be rebuilt from the context's own inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable


class Derived:
    """Entries keyed by a name, each remembering the object it was derived from (compared by identity): asking
    with another source (a time-varying topology's next matrix) rebuilds and replaces the entry."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[Any, Any]] = {}

    def get(self, name: Hashable, source: Any, build: Callable[[], Any]) -> Any:
        """The value derived from ``source`` under ``name``; ``build()`` makes it when it is missing or stale."""
        hit = self._entries.get(name)
        if hit is not None and hit[0] is source:
            return hit[1]
        value = build()
        self._entries[name] = (source, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)
