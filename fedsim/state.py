"""Population state: every client's parameters stacked in one tensor ``[n_clients, n_params]``.

A model's parameters are laid out flat (``ParamSpec``) so that mixing is one sparse matmul over the
population, aggregation is one weighted sum, and a client's parameters are one row. ``unflatten``
turns a row (or a batch of rows) back into named views for ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.rng import Streams


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and flat offsets of a model's parameters."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(model: nn.Module) -> "ParamSpec":
        """The layout of ``model.named_parameters()``."""
        named = list(model.named_parameters())
        return ParamSpec(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Total number of scalar parameters."""
        return sum(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (shape ``[..., size]``), each ``[..., *shape]``."""
        out, offset = {}, 0
        lead = flat.shape[:-1]
        for name, shape, k in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[..., offset:offset + k].reshape(*lead, *shape)
            offset += k
        return out

    def flatten(self, params: dict[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """Concatenate named tensors (with ``lead`` leading batch dims) into ``[..., size]``."""
        parts = [params[n].reshape(*params[n].shape[:lead], -1) for n in self.names]
        return torch.cat(parts, dim=-1)


def init_population(model: nn.Module, clients: torch.Tensor, streams: Streams, shared: bool = True,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
    """Initial parameters for ``clients``, shape ``[len(clients), size]``.

    PyTorch's default initialisation of Linear/Conv layers (uniform in +-1/sqrt(fan_in) for weights and
    biases), drawn from the ``init`` stream of each client, or of client 0 for all when ``shared``.
    """
    spec = ParamSpec.of(model)
    clients = torch.as_tensor(clients, dtype=torch.int64, device=device)
    keys = torch.zeros_like(clients) if shared else clients
    fan_in = _fan_in(model)
    parts = []
    for name, shape, k in zip(spec.names, spec.shapes, spec.sizes):
        bound = 1.0 / math.sqrt(fan_in[name])
        u = streams.uniform(f"init/{name}", keys, None, (k,), dtype=torch.float64)
        parts.append(((2 * u - 1) * bound).to(dtype))
    return torch.cat(parts, dim=1)


def _fan_in(model: nn.Module) -> dict[str, int]:
    """fan_in of the layer owning each parameter (bias shares its weight's fan_in)."""
    out = {}
    for mod_name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            continue
        fan = math.prod(weight.shape[1:])
        for p_name, _ in mod.named_parameters(recurse=False):
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = fan
    missing = [n for n, _ in model.named_parameters() if n not in out]
    if missing:
        raise ValueError(f"cannot infer fan_in for parameters {missing}; only Linear/Conv layers are supported")
    return out
