"""Label inference from a captured gradient (iDLG, Zhao et al. 2020): the attack needs no true labels."""

from __future__ import annotations

import torch


def idlg_label(last_layer_weight_grad: torch.Tensor) -> int:
    """The label of a single-image batch from the gradient of the last Linear layer's weight [classes, features].

    With softmax cross-entropy every row is a multiple of the last hidden activation h:
    row_c = (p_c - [c = y]) h. iDLG reads the label off the sign of the true class's factor, which assumes
    sum(h) > 0; after GELU that fails (h can sum to a negative number). We use the magnitude instead:
    |p_y - 1| = sum_{c != y} p_c >= p_c for every other c, so the true class's row has the largest norm, and
    its factor has the opposite sign to all others (checked: the result is the row that disagrees in sign).
    """
    if last_layer_weight_grad.ndim != 2:
        raise ValueError(f"expected a [classes, features] weight gradient, got shape {tuple(last_layer_weight_grad.shape)}")
    rows = last_layer_weight_grad.double()
    label = int(rows.norm(dim=1).argmax())
    factors = rows @ rows[label]          # proportional to (p_c - [c = y]) (p_label - [label = y]) ||h||^2
    return label if bool((factors[torch.arange(len(rows)) != label] <= 0).all()) else int(factors.argmin())
