"""Reading an undirected graph from a plain-text edge list."""

from __future__ import annotations

import math
import os
import re

import networkx as nx

from topologies.errors import InvalidTopologyParameterError
from topologies.validation import _validate

__all__ = ["from_edge_list"]

_SEPARATORS = re.compile(r"[,\s]+")


def from_edge_list(path: str | os.PathLike) -> nx.Graph:
    """Read a connected undirected graph from a file of ``u v`` or ``u v w`` lines.

    Fields are separated by whitespace and/or commas; ``#`` starts a comment. Labels are
    relabelled to 0..n-1 in sorted order (numeric order when every label is an integer);
    the original label is kept as node attribute ``'label'``, a weight as edge attribute
    ``'weight'`` (the mixing functions ignore it). Malformed lines, negative weights and
    self-loops raise ``InvalidTopologyParameterError`` naming the file and line; so does a file
    that is missing, unreadable or not UTF-8 text.
    """
    path = os.fspath(path)
    edges: list[tuple[str, str, float | None, int]] = []
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise InvalidTopologyParameterError(
            f"cannot read edge list {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise InvalidTopologyParameterError(f"{path}, line {line}: not UTF-8 text") from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = [tok for tok in _SEPARATORS.split(line) if tok]
        where = f"{path}, line {lineno}"
        if len(tokens) not in (2, 3):
            raise InvalidTopologyParameterError(
                f"{where}: expected 'u v' or 'u v weight', got {raw.strip()!r}"
            )
        weight = _parse_weight(tokens[2], where) if len(tokens) == 3 else None
        edges.append((tokens[0], tokens[1], weight, lineno))
    if all(_is_int(u) and _is_int(v) for u, v, _, _ in edges):  # numeric labels: "01" == "1"
        edges = [(int(u), int(v), w, lineno) for u, v, w, lineno in edges]
    loops = [(u, lineno) for u, v, _, lineno in edges if u == v]
    if loops:
        label, lineno = loops[0]
        raise InvalidTopologyParameterError(
            f"{path}: graph has {len(loops)} self-loop{'s' if len(loops) != 1 else ''}, "
            f"e.g. at node {label} (line {lineno}); remove them"
        )

    labels = sorted({x for u, v, _, _ in edges for x in (u, v)})
    index = {label: i for i, label in enumerate(labels)}
    G = nx.Graph()
    G.add_nodes_from((i, {"label": label}) for label, i in index.items())
    for u, v, weight, _ in edges:
        if weight is None:
            G.add_edge(index[u], index[v])
        else:
            G.add_edge(index[u], index[v], weight=weight)
    return _validate(G, where=path)


def _parse_weight(token: str, where: str) -> float:
    """Parse an edge weight, rejecting non-numbers, non-finite and negative values."""
    try:
        weight = float(token)
    except ValueError:
        raise InvalidTopologyParameterError(f"{where}: weight {token!r} is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise InvalidTopologyParameterError(
            f"{where}: weight must be finite and non-negative, got {token}"
        )
    return weight


def _is_int(label: str) -> bool:
    try:
        int(label)
    except ValueError:
        return False
    return True
