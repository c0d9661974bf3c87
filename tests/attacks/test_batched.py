"""The batched attack engine against the one-victim reference ``invert`` (a per-victim loop)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.batched import _GramMatch, batched_invert, gram_compatible
from attacks.inversion import InversionConfig, cosine_distance, invert
from attacks.models import DropoutMLP, dropout_sites

BOX = (-0.5, 3.0)
SHAPE = (1, 1, 6, 6)


def _victims(model, n, b=1, seed=0):
    """n victims of b random 6x6 images each: gradients (train mode), true masks, labels."""
    g = torch.Generator().manual_seed(seed)
    grads, masks, labels = [], [], []
    for _ in range(n):
        x, y = torch.randn((b, 1, 6, 6), generator=g), torch.randint(0, 10, (b,), generator=g)
        for s in dropout_sites(model):
            s.record = True
        model.train()
        grads.append([t.detach() for t in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))])
        masks.append([s.last_mask for s in dropout_sites(model)])
        labels.append(y)
        for s in dropout_sites(model):
            s.record, s.last_mask = False, None
    stack = lambda rows: [torch.stack(col) for col in zip(*rows)]  # noqa: E731
    return grads, masks, stack(grads), stack(masks), torch.stack(labels)


@pytest.mark.parametrize("attack", ["ig", "dia", "informed"])
@pytest.mark.parametrize("backend", ["gram", "vmap"])
def test_batched_equals_per_victim_loop(attack, backend):
    torch.manual_seed(1)
    model = DropoutMLP(in_features=36, width=32, depth=2, p=0.25)
    grads, masks, targets, true_masks, labels = _victims(model, 3)
    # tiny patience values so victims cut their learning rate and stop at different iterations
    # (IG's loss flattens out, where float-rounding ties would move its stop: it runs a fixed budget)
    cfg = (InversionConfig(max_iterations=60) if attack == "ig" else
           InversionConfig(max_iterations=120, patience=3, plateau_patience=2))
    res = batched_invert(model, targets, labels, SHAPE, BOX, attack, true_masks=true_masks, config=cfg,
                         seeds=[5, 6, 7], backend=backend)
    for v in range(3):
        ref = invert(model, grads[v], labels[v], SHAPE, BOX, attack, true_masks=masks[v], config=cfg, seed=5 + v)
        assert int(res.iterations[v]) == ref.iterations
        assert float(res.loss[v]) == pytest.approx(ref.loss, abs=1e-5)
        torch.testing.assert_close(res.x[v], ref.x, atol=1e-4, rtol=0)
        if attack == "dia":
            for m, rm in zip(res.masks, ref.masks):
                torch.testing.assert_close(m[v], rm, atol=1e-4, rtol=0)
    assert len(set(res.iterations.tolist())) == (1 if attack == "ig" else 3)   # each victim stops on its own


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_gram_cosine_equals_materialised_gradients(b, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 20, bias=bias), nn.Tanh(), nn.Linear(20, 10, bias=bias))
    assert gram_compatible(model)
    _, _, targets, _, labels = _victims(model, 2, b=b, seed=3)
    x = torch.randn(2, b, 1, 6, 6, dtype=torch.float32)
    got = _GramMatch(model, targets)(x, labels)
    for v in range(2):
        g = torch.autograd.grad(F.cross_entropy(model(x[v]), labels[v]), list(model.parameters()))
        want = cosine_distance(list(g), [t[v] for t in targets])
        assert float(got[v].detach()) == pytest.approx(float(want.detach()), abs=1e-6)


def test_gram_refuses_models_with_other_parameters_and_bad_input_is_named():
    model = nn.Sequential(nn.Flatten(), nn.LayerNorm(36), nn.Linear(36, 10))
    assert not gram_compatible(model)
    targets = [torch.zeros(1, *p.shape) for p in model.parameters()]
    with pytest.raises(ValueError, match="nn.Linear"):
        batched_invert(model, targets, torch.zeros(1, 1, dtype=torch.long), SHAPE, BOX, backend="gram")
    with pytest.raises(ValueError, match="labels"):
        batched_invert(model, targets, torch.zeros(1, dtype=torch.long), SHAPE, BOX)
    with pytest.raises(ValueError, match="unknown attack"):
        batched_invert(model, targets, torch.zeros(1, 1, dtype=torch.long), SHAPE, BOX, attack="nope")
    with pytest.raises(ValueError, match="true_masks"):
        batched_invert(model, targets, torch.zeros(1, 1, dtype=torch.long), SHAPE, BOX, attack="informed")
