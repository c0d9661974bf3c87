"""From captured messages to what an attack takes: a gradient in the model's parameter layout.

A FedAvg client that takes ONE local SGD step (lr, no momentum or weight decay) uploads
w_new = w_old - lr * g, so a curious server recovers g = (w_old - w_new) / lr exactly. With several local
steps S the same formula gives the SUM of the S step gradients, taken at different points (and with different
dropout masks); divided by S it is their average. The cosine loss ignores the scale, so attacking it as if it
were one gradient is the usual approximation; how it degrades with S is measured in docs/attacks.md.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.state import ParamSpec


def update_to_gradient(model: nn.Module, before: torch.Tensor, after: torch.Tensor, lr: float) -> list[torch.Tensor]:
    """(before - after) / lr as a list of tensors in ``model.parameters()`` order."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    spec = ParamSpec.of(model)
    if before.numel() != spec.size or after.numel() != spec.size:
        raise ValueError(f"the model has {spec.size} parameters, the update has {before.numel()} / {after.numel()}")
    views = spec.unflatten(((before - after) / lr).detach())
    return [views[name] for name in spec.names]


# ---------------------------------------------------------------------------------------------------------
# Gossip (D-PSGD / push-sum): what a curious neighbour or a link eavesdropper can recover.
#
# The algebra, read off ``fedsim/algorithms/gossip.py`` (adapt, then combine). In round t every node i
#   1. trains from its model z_i^t (= x_i^t on undirected graphs; x_i^t / w_i^t under push-sum):
#          z' = z_i^t - lr * u_i^t,    u_i^t = g_i(z_i^t) for one plain SGD step (the sum of the step
#          gradients for several steps);
#   2. SENDS p_i^t = x_i^t + w_i^t (z' - z_i^t) = x_i^t - lr * w_i^t * u_i^t   (w = 1 when undirected),
#      i.e. the payload is the model AFTER the local step, and the same payload goes to every out-neighbour;
#   3. mixes: x_i^{t+1} = sum_k W~_ik^t p_k^t (and w^{t+1} = W~^t w^t under push-sum), where W~^t is the
#      round's public W_t after the undelivered messages were put back on the diagonal (fedsim.mixing):
#      undirected, the RECEIVER i keeps the weight of a lost k -> i message: W~_ii += W_ik, W~_ik = 0;
#      directed (push-sum), the SENDER k keeps its undelivered share:      W~_kk += W_ik, W~_ik = 0.
# Hence, with two consecutive payloads of the victim i,
#       u_i^{t+1} = (x_i^{t+1} - p_i^{t+1}) / (lr * w_i^{t+1}),   x_i^{t+1} = sum_k W~_ik^t p_k^t,
# computed at the model z_i^{t+1} = x_i^{t+1} / w_i^{t+1}: exact, but only if the attacker has EVERY payload
# p_k^t with W~_ik^t != 0 (i's own and all its in-neighbours') and knows which k -> i messages arrived.
#   * Round 0 with a common public initial model (Gossip(same_init=True)): x_i^0 = x^0 is known, so ANY
#     receiver of i's first message gets u_i^0 = (x^0 - p_i^0) / lr exactly (as a FedAvg server does).
#   * Curious neighbour j in a later round: j holds p_i (from i), its own p_j and p_k for its own
#     in-neighbours k. It is exact iff every in-neighbour of i is j or also sends to j (e.g. a complete
#     graph, a triangle, i a leaf whose only neighbour is j) and no k -> i message was dropped unseen.
#     Otherwise the missing sum R = sum_{k unheard} W_ik p_k^t is a model-sized unknown per round and
#     lr * u_i is small next to it: the payloads determine u_i only up to R / lr, and the next rounds add
#     fresh unknowns, so no sequence of captures pins it down. Replacing the unheard payloads by i's own
#     (``fill_missing=True``: "the network is near consensus") gives
#         u_hat = u_i^{t+1} + sum_{k unheard} W_ik (p_i^t - p_k^t) / lr,
#     which at round 1 after a common init is u_i^1 + sum_k W_ik (u_k^0 - u_i^0): a blend with the
#     neighbours' gradients, not i's gradient.
#   * Eavesdropper on all of i's incoming links and at least one outgoing link (which carries p_i): has
#     every term, and sees the delivered flag of each message (put the Capture tap after the tap that drops
#     messages), so it recovers u_i exactly in every round.
#   * Push-sum: the payload is (x, w): the values x (not z) and, as its last entry, the weight w_i^t, which
#     travels in the same message (a receiver needs it to mix). So whoever hears p_i^t also reads w_i^t.
#     ``push_sum_weights`` rebuilds the weights from the public schedule and the drops (a cross-check: without
#     drops w^t = W_{t-1} ... W_0 1; with drops it depends on every drop in the network so far).
# ---------------------------------------------------------------------------------------------------------


def captured_payloads(records, round: int, kind: str = "gossip") -> dict[int, torch.Tensor]:
    """Sender -> payload of the captured messages of ``round`` (a broadcast carries one payload on all its edges)."""
    return {r.sender: r.payload for r in records if r.round == round and r.kind == kind}


def lost_links(records, round: int, kind: str = "gossip") -> set[tuple[int, int]]:
    """(sender, receiver) of the captured messages of ``round`` that were not delivered.

    A ``Capture`` tap sees drops only when it comes after the tap that drops messages in ``taps``.
    """
    return {(r.sender, r.receiver) for r in records if r.round == round and r.kind == kind and not r.delivered}


def mixing_after_drops(W, lost=(), directed: bool = False):
    """The mixing matrix W~ a round actually applied: W with the ``lost`` (sender, receiver) messages undone.

    Undirected: the receiver keeps the lost weight on its own model (W~_ii += W_ik). Directed (push-sum):
    the sender keeps its undelivered share (W~_kk += W_ik). Returns a scipy CSR array (float64).
    """
    import scipy.sparse as sp

    Wt = sp.lil_array(sp.csr_array(W, dtype=np.float64))
    for k, i in lost:
        if k == i or Wt[i, k] == 0:
            raise ValueError(f"({k} -> {i}) is not a message of this mixing matrix")
        owner = k if directed else i
        Wt[owner, owner] += Wt[i, k]
        Wt[i, k] = 0.0
    return sp.csr_array(Wt)


def gossip_mixed(W, node: int, payloads: dict[int, torch.Tensor], lost=(), directed: bool = False,
                 fill_missing: bool = False) -> torch.Tensor:
    """x_node after the combine step of a round: sum_k W~_node,k p_k over the round's payloads.

    ``payloads`` maps sender -> payload of that round (``captured_payloads``; add your own as a curious
    neighbour). A needed payload that is missing raises ``ValueError`` (the attacker cannot compute x
    exactly), unless ``fill_missing``: then ``node``'s own payload stands in for it (a consensus guess).
    """
    row = mixing_after_drops(W, lost, directed)[[node], :]
    cols, vals = row.indices, row.data
    needed = [int(k) for k, v in zip(cols, vals) if v != 0]
    missing = [k for k in needed if k not in payloads]
    if missing and not (fill_missing and node in payloads):
        raise ValueError(f"x_{node} needs the payloads of senders {needed}; missing {missing} "
                         "(a curious neighbour does not hear them: no exact recovery)")
    ref = payloads[node] if node in payloads else payloads[needed[0]]
    acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
    for k, v in zip(cols, vals):
        if v != 0:
            acc += float(v) * payloads.get(int(k), payloads.get(node)).double()
    return acc.to(ref.dtype)


def gossip_gradient(model: nn.Module, W, victim: int, previous: dict[int, torch.Tensor] | torch.Tensor,
                    sent: torch.Tensor, lr: float, lost=(), directed: bool = False, weight: float = 1.0,
                    fill_missing: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model a gossip victim trained at in round t and the gradient it computed there.

    ``sent``: the victim's payload of round t. ``previous``: either the victim's x^t itself (a flat tensor,
    e.g. the public common initial model when t = 0) or the payloads of round t - 1 (sender -> payload),
    from which x^t = sum_k W~_victim,k p_k^{t-1} is rebuilt; then ``W`` is round t - 1's mixing matrix and
    ``lost`` the undelivered messages of round t - 1 (``lost_links``). ``weight``: the victim's push-sum
    weight w^t (1 on undirected graphs); when ``directed`` it is read off the payload (its last entry, as the
    weight travels with the values) and ``x^t`` may be given with or without its weight entry. Returns
    (z^t = x^t / w^t as a flat tensor, (x^t - p^t) / (lr w^t) in ``model.parameters()`` layout); see the
    algebra above this function.
    """
    if isinstance(previous, torch.Tensor):
        x = previous
    else:
        x = gossip_mixed(W, victim, previous, lost, directed, fill_missing)
    if directed:
        size = ParamSpec.of(model).size
        if sent.numel() != size + 1:
            raise ValueError(f"a push-sum payload holds the {size} parameters and the weight; got {sent.numel()} entries")
        weight, sent, x = float(sent[-1]), sent[:-1], x[:size]
    if weight <= 0:
        raise ValueError(f"push-sum weight must be > 0, got {weight}")
    return x / weight, update_to_gradient(model, x, sent, lr * weight)


def push_sum_weights(schedule, t: int, lost_by_round: dict[int, set] | None = None) -> np.ndarray:
    """Push-sum weights w^t = W~_{t-1} ... W~_0 1 of all nodes at the start of round t.

    Needs the drops of every earlier round (``lost_by_round``: round -> lost (sender, receiver) pairs,
    network-wide); without drops it follows from the public schedule alone.
    """
    w = np.ones(schedule.n)
    for s in range(t):
        W = schedule.at(s)
        lost = (lost_by_round or {}).get(s, ())
        w = mixing_after_drops(W, lost, directed=True) @ w if lost else W @ w
    return w
