"""The batched attack engine against the one-victim reference ``invert`` (a per-victim loop).

Tolerances. The batched engine and the loop compute the same per-victim function with different batch shapes,
so their kernels sum in different orders (which order also depends on the CPU's vector unit: compare
``ATEN_CPU_CAPABILITY=default``, ``avx2``, ``avx512``): they agree to rounding, not bit for bit.

* One evaluation (a loss, a gradient) is compared in float32, the attack's dtype, with a tolerance in ulps.
* Whole optimisations are compared in float64. An optimisation takes discrete decisions on rounded values: the
  sign of every x-gradient entry (signed Adam), the side of the mask regularizer's kink |1 - mean(m) - p|, the
  plateau rule's 1e-4 relative improvement test and the stop rule's strict improvement test. In float32 one
  rounding-level difference flips such a decision within ~60 iterations on these problems (in the DIA case
  below an x-gradient entry of 3e-7 times the largest changed sign; from there victim 1 stopped at iteration 92
  in one path and 100 in the other, its loss 10% apart). In float64 the paths agree to ~1e-15, while on these
  problems every decision is at least ~1e-6 from its threshold, measured on the per-victim loop: x-gradient
  entries >= 3.7e-6 of the largest; losses >= 2.8e-5 (relative) from the plateau and improvement thresholds;
  |1 - mean(m) - p| >= 1.6e-4 after the first step (before it the masks are 0/1 and the mean is exact in both
  paths). A margin of 1e8 or more: every decision goes the same way in both paths, so stop iterations must be
  EQUAL and results agree to ``TOL64``. (If a changed problem lands a decision near a tie, the stop iterations
  differ; then change the seeds, not the tolerance.)
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.batched import _GramMatch, batched_invert, gram_compatible
from attacks.experiment import victim_gradient
from attacks.inversion import InversionConfig, cosine_distance, invert
from attacks.models import DropoutMLP, dropout_sites

BOX = (-0.5, 3.0)
SHAPE = (1, 1, 6, 6)
F64 = torch.float64
EPS32, EPS64 = torch.finfo(torch.float32).eps, torch.finfo(F64).eps
# Whole optimisations in float64 (module docstring). The loss is 1 - cos with cos near 1, so its rounding error is
# in ulps of 1.0 (not of the loss, ~1e-2); x lies in the box [-0.5, 3] and the masks in [0, 1]: an absolute
# tolerance in ulps of 1.0 fits all three. Measured <= 2 ulps (loss) and <= 6 ulps (x, masks) under
# ATEN_CPU_CAPABILITY=default/avx2/avx512; 2**10 ulps (2.3e-13) leaves room for other CPUs and BLAS builds and
# is still far below what a real mix-up does (a wrong victim or mask moves x by >= 1e-3; even a learning rate off
# by 1e-6 relative fails these tests).
TOL64 = dict(atol=2**10 * EPS64, rtol=0)


def _victims(model, n, b=1, seed=0, image=(1, 6, 6)):
    """n victims of b random images each (in the model's dtype): gradients (train mode), true masks, labels."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    grads, masks, labels = [], [], []
    for _ in range(n):
        x, y = torch.randn((b, *image), generator=g).to(dtype), torch.randint(0, 10, (b,), generator=g)
        grad, mask = victim_gradient(model, x, y)
        grads.append(grad)
        masks.append(mask or [])
        labels.append(y)
    stack = lambda rows: [torch.stack(col) for col in zip(*rows)]  # noqa: E731
    return grads, masks, stack(grads), stack(masks), torch.stack(labels)


def _assert_same_result(res, v, ref):
    """Victim v of a batched result against the loop's result ``ref``: the same stop, and the same end to TOL64."""
    assert int(res.iterations[v]) == ref.iterations         # float64: no decision is near a tie (docstring)
    assert abs(float(res.loss[v]) - ref.loss) <= TOL64["atol"], (float(res.loss[v]), ref.loss)
    torch.testing.assert_close(res.x[v], ref.x, **TOL64)
    if ref.masks is not None:
        for m, rm in zip(res.masks, ref.masks):
            torch.testing.assert_close(m[v], rm, **TOL64)


@pytest.mark.parametrize("attack", ["ig", "dia", "informed"])
@pytest.mark.parametrize("backend", ["gram", "vmap"])
def test_batched_equals_per_victim_loop(attack, backend):
    torch.manual_seed(1)
    model = DropoutMLP(in_features=36, width=32, depth=2, p=0.25).to(F64)
    grads, masks, targets, true_masks, labels = _victims(model, 3)
    # tiny patience values so victims cut their learning rate and stop at different iterations (the stop and
    # the cuts are per victim, and a finished victim leaves the batch: the others must not notice); IG runs a
    # fixed budget
    cfg = (InversionConfig(max_iterations=60) if attack == "ig" else
           InversionConfig(max_iterations=120, patience=3, plateau_patience=2))
    res = batched_invert(model, targets, labels, SHAPE, BOX, attack, true_masks=true_masks, config=cfg,
                         seeds=[5, 6, 7], backend=backend)
    assert res.x.dtype == F64 and (res.masks is not None) == (attack == "dia")
    for v in range(3):
        ref = invert(model, grads[v], labels[v], SHAPE, BOX, attack, true_masks=masks[v], config=cfg, seed=5 + v)
        _assert_same_result(res, v, ref)
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
        # one float32 evaluation; 1 - cos with cos of order 1, so the rounding is in ulps of 1.0: the closed
        # form sums the same products in another order (measured <= 1 ulp apart); allow 8 ulps
        assert abs(float(got[v].detach()) - float(want.detach())) <= 8 * EPS32


def test_gram_refuses_models_with_other_parameters_and_bad_input_is_named():
    from attacks.vision import LayerNorm

    with pytest.raises(ValueError, match="attacks.vision.LayerNorm"):
        batched_invert(nn.Sequential(nn.Flatten(), nn.LayerNorm(36), nn.Linear(36, 10)),
                       [torch.ones(1, 36), torch.ones(1, 36), torch.ones(1, 10, 36), torch.ones(1, 10)],
                       torch.zeros(1, 1, dtype=torch.long), SHAPE, BOX, config=InversionConfig(max_iterations=1))
    model = nn.Sequential(nn.Flatten(), LayerNorm(36), nn.Linear(36, 10))
    assert not gram_compatible(model)
    targets = [torch.ones(1, *p.shape) for p in model.parameters()]
    y = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="nn.Linear"):
        batched_invert(model, targets, y, SHAPE, BOX, backend="gram")
    with pytest.raises(ValueError, match="labels must be"):
        batched_invert(model, targets, torch.zeros(1, dtype=torch.long), SHAPE, BOX)
    with pytest.raises(ValueError, match="unknown attack"):
        batched_invert(model, targets, y, SHAPE, BOX, attack="nope")
    with pytest.raises(ValueError, match="NaN or inf"):
        batched_invert(model, [t * float("nan") for t in targets], y, SHAPE, BOX)
    with pytest.raises(ValueError, match="all zeros"):
        batched_invert(model, [t * 0 for t in targets], y, SHAPE, BOX)
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        batched_invert(model, targets, y + 10, SHAPE, BOX)
    with pytest.raises(ValueError, match="lo < hi"):
        batched_invert(model, targets, y, SHAPE, (1.0, 0.0))
    with pytest.raises(ValueError, match="input batch of shape"):
        batched_invert(model, targets, y, (1, 1, 5, 5), BOX)
    drop = DropoutMLP(in_features=36, width=8, depth=1, p=0.5)
    dt = [torch.ones(1, *p.shape) for p in drop.parameters()]
    with pytest.raises(ValueError, match="true_masks"):
        batched_invert(drop, dt, y, SHAPE, BOX, attack="informed")
    with pytest.raises(ValueError, match="one \\[victims"):
        batched_invert(drop, dt, y, SHAPE, BOX, attack="informed", true_masks=[torch.ones(1, 1, 7)])


def test_checking_for_finished_victims_less_often_changes_nothing():
    # check_every=7 keeps finished victims in the batch (frozen) for up to 6 more iterations: the batch shapes
    # differ, so the kernels may sum in another order. float64 and TOL64 for that reason (module docstring).
    torch.manual_seed(1)
    model = DropoutMLP(in_features=36, width=32, depth=2, p=0.25).to(F64)
    _, _, targets, _, labels = _victims(model, 3)
    cfg = InversionConfig(max_iterations=120, patience=3, plateau_patience=2)
    a = batched_invert(model, targets, labels, SHAPE, BOX, "dia", config=cfg, check_every=1)
    b = batched_invert(model, targets, labels, SHAPE, BOX, "dia", config=cfg, check_every=7)
    assert a.iterations.tolist() == b.iterations.tolist() and len(set(a.iterations.tolist())) == 3
    assert any(i % 7 for i in a.iterations.tolist())        # some victim finishes between two checks
    torch.testing.assert_close(a.x, b.x, **TOL64)
    torch.testing.assert_close(a.loss, b.loss, **TOL64)
    for m, bm in zip(a.masks, b.masks):
        torch.testing.assert_close(m, bm, **TOL64)


class _Shuffled(nn.Module):
    """Linear layers registered in a different order from the one the forward pass calls them in."""

    def __init__(self):
        super().__init__()
        self.last = nn.Linear(12, 10, bias=False)
        self.first = nn.Linear(36, 12, bias=False)
        self.middle = nn.Linear(12, 12, bias=False)

    def forward(self, x):
        return self.last(torch.tanh(self.middle(torch.tanh(self.first(x.flatten(1))))))


@pytest.mark.parametrize("backend", ["gram", "vmap"])
def test_layers_are_matched_by_module_not_by_call_order(backend):
    torch.manual_seed(0)
    model = _Shuffled().to(F64)                 # a whole optimisation: float64 (module docstring)
    grads, _, targets, _, labels = _victims(model, 2, seed=4)
    cfg = InversionConfig(max_iterations=15)
    res = batched_invert(model, targets, labels, SHAPE, BOX, "ig", config=cfg, seeds=[1, 2], backend=backend)
    for v in range(2):
        ref = invert(model, grads[v], labels[v], SHAPE, BOX, "ig", config=cfg, seed=1 + v)
        _assert_same_result(res, v, ref)


def test_a_linear_layer_used_twice_is_refused():
    lin = nn.Linear(36, 36, bias=False)
    model = nn.Sequential(nn.Flatten(), lin, nn.Tanh(), lin, nn.Linear(36, 10))
    targets = [torch.ones(1, *p.shape) for p in model.parameters()]
    with pytest.raises(ValueError, match="more than once"):
        batched_invert(model, targets, torch.zeros(1, 1, dtype=torch.long), SHAPE, BOX,
                       config=InversionConfig(max_iterations=2))


@pytest.mark.parametrize("attack", ["ig", "dia", "informed"])
@pytest.mark.parametrize("arch", ["vit", "lenet"])
def test_vmap_backend_on_vision_models_equals_the_loop(arch, attack):
    """Biases, LayerNorms, embeddings, convolutions, attention-matrix masks and a per-channel box."""
    from attacks.vision import LeNetZhu, SmallViT

    # a whole optimisation: float64 (module docstring; in float32 LeNet/informed meets an x-gradient entry 7e-7
    # times the largest, a near-tie for its sign)
    torch.manual_seed(2)
    model = (SmallViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16, p=0.3) if arch == "vit"
             else LeNetZhu(channels=3, image_size=8, p=0.3, width=4)).to(F64)
    grads, masks, targets, true_masks, labels = _victims(model, 2, seed=7, image=(3, 8, 8))
    box = (torch.tensor([-1.0, -1.5, -2.0])[:, None, None], torch.tensor([1.0, 1.5, 2.0])[:, None, None])
    cfg = InversionConfig(max_iterations=12)
    res = batched_invert(model, targets, labels, (1, 3, 8, 8), box, attack,
                         true_masks=true_masks, config=cfg, seeds=[3, 4], backend="vmap")
    for v in range(2):
        ref = invert(model, grads[v], labels[v], (1, 3, 8, 8), box, attack, true_masks=masks[v], config=cfg, seed=3 + v)
        _assert_same_result(res, v, ref)
    assert bool((res.x >= box[0].double()).all() and (res.x <= box[1].double()).all())


def test_vmap_loss_and_input_gradient_on_the_vit_equal_autograd():
    from attacks.batched import _VmapMatch
    from attacks.vision import SmallViT

    torch.manual_seed(3)
    model = SmallViT(image_size=8, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=16, p=0.3).train()
    params = list(model.parameters())
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn((2, *p.shape), generator=g) for p in params]
    labels = torch.tensor([[3], [7]])
    x = torch.randn((2, 1, 3, 8, 8), generator=g, requires_grad=True)
    shapes = []
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for s in dropout_sites(model)]
    model(x[0].detach())
    for h in hooks:
        h.remove()
    masks = [torch.rand((2, *s), generator=g).requires_grad_(True) for s in shapes]
    match = _VmapMatch(model, targets)
    try:
        for p in params:
            p.requires_grad_(False)
        got = match(x, labels, masks)
        gx, *gm = torch.autograd.grad(got.sum(), [x] + masks)
    finally:
        match.close()
        for p in params:
            p.requires_grad_(True)
    for v in range(2):
        xv = x[v].detach().requires_grad_(True)
        mv = [m[v].detach().requires_grad_(True) for m in masks]
        for site, m in zip(dropout_sites(model), mv):
            site.mask = m
        grads = torch.autograd.grad(F.cross_entropy(model(xv), labels[v]), params, create_graph=True)
        want = cosine_distance(list(grads), [t[v] for t in targets])
        rx, *rm = torch.autograd.grad(want, [xv] + mv)
        for site in dropout_sites(model):
            site.mask = None
        # one float32 evaluation, vmapped vs plain autograd (different reduction orders). The loss is 1 - cos
        # with cos of order 1: 8 ulps of 1.0 (measured <= 1). A gradient entry is a sum of many terms up to the
        # size of the largest entry, so its rounding is in ulps of max|gradient|: 2**8 of them (measured <= 7);
        # an entry-wise relative tolerance would not fit entries that cancel to near zero.
        assert abs(float(got[v].detach()) - float(want.detach())) <= 8 * EPS32
        for a, b in zip([gx] + gm, [rx] + rm):
            torch.testing.assert_close(a[v], b, atol=2**8 * EPS32 * float(b.abs().max()), rtol=0)


def test_model_state_is_restored_and_leftover_masks_are_ignored():
    from attacks.models import set_masks

    torch.manual_seed(1)
    model = DropoutMLP(in_features=36, width=16, depth=1, p=0.25).train()
    grads, _, targets, _, labels = _victims(model, 1)
    cfg = InversionConfig(max_iterations=10)
    clean = batched_invert(model, targets, labels, SHAPE, BOX, "ig", config=cfg)
    set_masks(model, [torch.zeros(1, 16)])                  # a caller's leftover mask (fits V * b = 1 row)
    res = batched_invert(model, targets, labels, SHAPE, BOX, "ig", config=cfg)
    assert torch.equal(res.x, clean.x)                      # the same computation repeated: bit-equal
    assert model.training and all(s.mask is None for s in dropout_sites(model))
    with pytest.raises(ValueError, match="input batch of shape"):
        batched_invert(model, targets, labels, (1, 1, 5, 5), BOX, config=cfg)
    assert model.training                                   # a failed probe leaves the mode alone
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    with pytest.raises(TypeError):
        batched_invert(model, targets, labels, SHAPE, BOX, config=InversionConfig(lr=None))
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before and model.training
    assert all(p.requires_grad for p in model.parameters())


def test_progress_reports_every_iteration_and_the_victims_still_running():
    torch.manual_seed(1)
    model = DropoutMLP(in_features=36, width=32, depth=2, p=0.25)
    _, _, targets, _, labels = _victims(model, 3)
    calls = []
    res = batched_invert(model, targets, labels.to(torch.int32), SHAPE, BOX, "dia",
                         config=InversionConfig(max_iterations=120, patience=3, plateau_patience=2),
                         progress=lambda it, n: calls.append((it, n)))
    assert [c[0] for c in calls] == list(range(1, int(res.iterations.max()) + 1))
    for it, n in calls:
        assert n == int((res.iterations >= it).sum()) - int((res.iterations == it).sum())


def test_tied_linear_weights_are_refused():
    a, b = nn.Linear(36, 36, bias=False), nn.Linear(36, 36, bias=False)
    b.weight = a.weight
    model = nn.Sequential(nn.Flatten(), a, nn.Tanh(), b, nn.Linear(36, 10))
    targets = [torch.ones(1, *p.shape) for p in model.parameters()]
    with pytest.raises(ValueError, match="tied"):
        batched_invert(model, targets, torch.zeros(1, 1, dtype=torch.long), SHAPE, BOX,
                       config=InversionConfig(max_iterations=2))
