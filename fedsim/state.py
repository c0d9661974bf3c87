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


INIT_SCHEMES = ("default", "xavier", "xavier_fan_in")


def init_population(model: nn.Module, clients: torch.Tensor, streams: Streams, shared: bool = True,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    init: str = "default") -> torch.Tensor:
    """Initial parameters for ``clients``, shape ``[len(clients), size]``.

    ``init`` chooses the scheme for Linear/Conv layers (fan_in = in_features or in_channels*kH*kW,
    fan_out = out_features or out_channels*kH*kW, as ``torch.nn.init`` defines them):

    * ``"default"``: PyTorch's default, weights and biases uniform in +-1/sqrt(fan_in) (weight variance
      1/(3 fan_in));
    * ``"xavier"``: Glorot uniform (``torch.nn.init.xavier_uniform_``, the authors' DFL_torch code),
      weights uniform in +-sqrt(6/(fan_in+fan_out)), variance 2/(fan_in+fan_out); biases zero;
    * ``"xavier_fan_in"``: Caffe's "xavier" filler with its default FAN_IN normalisation (the authors'
      DFL2 code), weights uniform in +-sqrt(3/fan_in), variance 1/fan_in; biases zero.

    Every drawn tensor comes from the counter-based ``init/<param name>`` stream of each client (of
    client 0 for all when ``shared``), so a client's initial model depends only on (seed, its id, init).
    """
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(map(repr, INIT_SCHEMES))}")
    spec = ParamSpec.of(model)
    clients = torch.as_tensor(clients, dtype=torch.int64, device=device)
    keys = clients.new_zeros(1) if shared else clients   # shared: one draw (client 0's), copied to every row
    fans = _fans(model)
    out = torch.empty(len(clients), spec.size, dtype=dtype, device=device)
    offset = 0
    for name, k in zip(spec.names, spec.sizes):
        sl, offset = slice(offset, offset + k), offset + k
        fan_in, fan_out, is_weight = fans[name]
        if init == "default":
            bound = 1.0 / math.sqrt(fan_in)
        elif not is_weight:
            out[:, sl].zero_()
            continue
        elif init == "xavier":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
        else:
            bound = math.sqrt(3.0 / fan_in)
        # the counter-based draws are per (client, entry): drawing a chunk of clients at a time gives the same
        # values with float64 / int64 temporaries of ~2^22 entries instead of [N, k] (5.6 population copies)
        step = max(1, _INIT_CHUNK // max(k, 1))
        for start in range(0, len(keys), step):
            u = streams.uniform(f"init/{name}", keys[start:start + step], None, (k,), dtype=torch.float64)
            rows = slice(None) if shared else slice(start, start + step)   # shared: the one row, broadcast
            out[rows, sl] = ((2 * u - 1) * bound).to(dtype)
    return out


_INIT_CHUNK = 1 << 22   # entries of one chunk of initial draws


def xavier_variance(model: nn.Module, init: str = "xavier") -> dict[str, float]:
    """The reference variance of every weight tensor (``ndim >= 2``) of ``model`` under ``init``.

    ``"xavier"``: 2/(fan_in+fan_out); ``"xavier_fan_in"``: 1/fan_in. ``"default"`` (PyTorch's init, whose
    own variance is 1/(3 fan_in)) gives the Glorot value 2/(fan_in+fan_out): the Xavier optimum that the
    vanishing-variance paper measures weight variance against, not the variance the default init draws.
    """
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(map(repr, INIT_SCHEMES))}")
    out = {}
    for name, (fan_in, fan_out, is_weight) in _fans(model).items():
        if is_weight:
            out[name] = 1.0 / fan_in if init == "xavier_fan_in" else 2.0 / (fan_in + fan_out)
    return out


def _fans(model: nn.Module) -> dict[str, tuple[int, int, bool]]:
    """(fan_in, fan_out, is a weight tensor) of the layer owning each parameter, in parameter order.

    A layer is a module whose ``weight`` has ``ndim >= 2`` (Linear, Conv): fan_in = weight.shape[1] *
    receptive field, fan_out = weight.shape[0] * receptive field (``torch.nn.init``'s definition); its other
    parameters (the bias) share those fans.
    """
    found = {}
    for mod_name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            continue
        receptive = math.prod(weight.shape[2:])
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        for p_name, p in mod.named_parameters(recurse=False):
            found[f"{mod_name}.{p_name}" if mod_name else p_name] = (fan_in, fan_out, p is weight and p.ndim >= 2)
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"cannot infer fan_in for parameters {missing}; only Linear/Conv layers are supported")
    return {n: found[n] for n in names}

