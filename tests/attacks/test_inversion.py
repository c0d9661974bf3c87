import pytest
import torch
import torch.nn.functional as F

from attacks.inversion import (InversionConfig, cosine_distance, invert, mask_regularizer, signed_adam_step,
                               total_variation)
from attacks.metrics import psnr, ssim
from attacks.models import DropoutMLP
from attacks.victims import MNIST_MEAN, MNIST_STD, load_victims, normalize_mnist

BOX = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
needs_victims = pytest.mark.needs_data("mnist-victims")      # tests/conftest.py: data folder and skip rule


def _victim(p: float, root):
    """Victim 0 of the MNIST set in the data folder ``root``, a seeded DropoutMLP(p) and the gradient it shares
    (train mode)."""
    images, labels = load_victims("mnist", root)
    x, y = torch.tensor(normalize_mnist(images[:1])), torch.tensor(labels[:1])
    torch.manual_seed(0)
    model = DropoutMLP(p=p).train()
    target = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))]
    return x, y, model, target


def test_mask_regularizer_hand_computed():
    masks = [torch.tensor([[1.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.5]])]
    # dropped fractions 0.25 and 0.5 against rates 0.25 and 0.25 -> |0| + |0.25|
    assert float(mask_regularizer(masks, [0.25, 0.25])) == pytest.approx(0.25)


def test_total_variation_and_cosine_hand_computed():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    assert float(total_variation(x)) == pytest.approx(1.0)      # horizontal diffs 1, vertical 0
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    assert float(cosine_distance(a, [torch.tensor([2.0, 0.0]), torch.tensor([0.0])])) == pytest.approx(0.0)
    assert float(cosine_distance(a, [torch.tensor([0.0, 3.0]), torch.tensor([0.0])])) == pytest.approx(1.0)


def _adam_by_hand(x0: torch.Tensor, grads: list[torch.Tensor], lr: float, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam's update (no weight decay, no amsgrad), written out."""
    x, m, v = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return x


def test_signed_gradient_step_is_adam_on_the_sign_of_the_gradient():
    # gradients whose magnitudes differ by orders and whose signs flip between the two steps, per coordinate
    grads = [torch.tensor([3.0, -1e-4, 2.0, 50.0], dtype=torch.float64),
             torch.tensor([-1e-3, 5.0, 2.0, -0.01], dtype=torch.float64)]
    x0 = torch.tensor([0.5, -0.2, 0.0, 1.0], dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)
    for g in grads:
        x.grad = g.clone()
        signed_adam_step(opt, x)
    signed = _adam_by_hand(x0, [g.sign() for g in grads], 0.1)
    torch.testing.assert_close(x.detach(), signed, atol=1e-12, rtol=0)
    # by hand: step 1 moves every coordinate by -0.1 * sign; step 2 by -0.1 * (0.09 s1 + 0.1 s2) / 0.19
    # (v_hat is 1 at both steps since sign^2 = 1); a flipped sign makes the second step tiny and backwards
    s1, s2 = grads[0].sign(), grads[1].sign()
    expected = x0 - 0.1 * s1 - 0.1 * (0.09 * s1 + 0.1 * s2) / 0.19
    torch.testing.assert_close(x.detach(), expected, atol=1e-6, rtol=0)
    # plain Adam on the raw gradients goes clearly elsewhere (coordinates 0, 1 and 3 by more than 0.05)
    plain = _adam_by_hand(x0, grads, 0.1)
    z = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    for g in grads:
        z.grad = g.clone()
        opt.step()
    torch.testing.assert_close(z.detach(), plain, atol=1e-12, rtol=0)
    assert ((plain - signed).abs() > 0.05).tolist() == [True, True, False, True]


def test_ssim_builds_its_window_on_the_images_device(monkeypatch):
    import attacks.metrics as metrics

    devices = []
    conv2d = metrics.F.conv2d

    def spy(x, weight, *args, **kwargs):
        devices.append((x.device, weight.device, weight.dtype))
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(metrics.F, "conv2d", spy)
    a = torch.rand(1, 3, 16, 16, device="meta")          # no GPU here: the meta device stands in for CUDA
    assert ssim(a, a).device.type == "meta"
    assert devices and all(w.type == "meta" and d == torch.float64 for _, w, d in devices)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ssim_on_cuda():
    a = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(a.cuda(), (a * 0.5).cuda()).cpu(), ssim(a, a * 0.5))


def test_ssim_psnr_hand_computed():
    a = torch.full((1, 1, 16, 16), 0.5)
    assert float(ssim(a, a)) == pytest.approx(1.0)
    b = torch.full((1, 1, 16, 16), 0.25)
    c1 = 0.01 ** 2   # constant images: only the luminance term remains
    assert float(ssim(a, b)) == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1))
    assert float(psnr(a, b)) == pytest.approx(10 * torch.log10(torch.tensor(1 / 0.0625)).item())


@needs_victims
def test_dia_clamps_masks_and_input_to_their_boxes(data_root):
    x, y, model, target = _victim(0.25, data_root)
    res = invert(model, target, y, x.shape, BOX, "dia", config=InversionConfig(max_iterations=20))
    assert res.iterations == 20 and len(res.masks) == 3
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 and m.shape == (1, 512) for m in res.masks)
    assert float(res.x.min()) >= BOX[0] - 1e-6 and float(res.x.max()) <= BOX[1] + 1e-6


@needs_victims
def test_ig_reconstructs_an_mnist_victim_on_the_mlp_without_dropout(data_root):
    x, y, model, target = _victim(0.0, data_root)
    res = invert(model, target, y, x.shape, BOX, "ig", config=InversionConfig(max_iterations=400))
    back = lambda z: z * MNIST_STD + MNIST_MEAN  # noqa: E731
    assert float(ssim(back(res.x), back(x))) > 0.9


@needs_victims
@pytest.mark.slow
def test_dia_beats_ig_that_ignores_dropout(data_root):
    x, y, model, target = _victim(0.25, data_root)
    back = lambda z: z * MNIST_STD + MNIST_MEAN  # noqa: E731
    dia = invert(model, target, y, x.shape, BOX, "dia", config=InversionConfig(max_iterations=2500))
    ig = invert(model, target, y, x.shape, BOX, "ig", config=InversionConfig(max_iterations=1500))
    assert float(ssim(back(dia.x), back(x))) > 0.99      # measured 0.998 at ~1,500 iterations
    assert float(ssim(back(ig.x), back(x))) < 0.9        # measured 0.70
