import numpy as np
import pytest
import torch
from torch import nn

from attacks.models import DropoutMLP, dropout_sites, set_masks
from attacks.victims import CIFAR10_MEAN, CIFAR10_STD, load_victims, normalize_cifar10
from attacks.vision import LeNetZhu, PatchFlatten, SmallResNet, SmallViT, build_attack_model


CASES = [("mlp", (1, 28, 28)), ("vit", (3, 32, 32)), ("lenet", (3, 32, 32)), ("lenet", (1, 28, 28)),
         ("resnet", (3, 32, 32)), ("resnet", (1, 28, 28))]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _record(model, on=True):
    for site in dropout_sites(model):
        site.record = on
        site.last_mask = None


def _site_input_shapes(model, x):
    """The activation shape arriving at each dropout site, in dropout_sites order."""
    shapes, hooks = [], []
    for i, site in enumerate(dropout_sites(model)):
        hooks.append(site.register_forward_hook(lambda m, inp, out, i=i: shapes.append((i, tuple(inp[0].shape)))))
    model(x)
    for h in hooks:
        h.remove()
    assert [i for i, _ in shapes] == list(range(len(dropout_sites(model))))   # each site runs once, in order
    return [s for _, s in shapes]


@pytest.mark.parametrize("name,shape", CASES)
def test_shapes_eval_determinism_and_train_randomness(name, shape):
    torch.manual_seed(0)
    model = build_attack_model(name, shape, n_classes=7, p=0.25)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(3, *shape)
    model.eval()
    y = model(x)
    assert y.shape == (3, 7)
    assert torch.equal(y, model(x))                              # eval: no randomness
    model.train()
    assert not torch.equal(model(x), model(x))                   # train: dropout is active


@pytest.mark.parametrize("name,shape", CASES)
def test_recorded_masks_have_activation_shapes_and_replay_exactly(name, shape):
    torch.manual_seed(1)
    model = build_attack_model(name, shape, n_classes=10, p=0.25).train()
    x = torch.randn(3, *shape)
    act_shapes = _site_input_shapes(model, x)
    _record(model)
    y = model(x)
    masks = [site.last_mask for site in dropout_sites(model)]
    assert [tuple(m.shape) for m in masks] == act_shapes
    assert all(m.shape[0] == 3 for m in masks)
    kept = torch.cat([m.flatten() for m in masks]).mean()
    assert 0.6 < float(kept) < 0.9
    _record(model, False)
    set_masks(model, masks)
    assert torch.equal(model(x), y)                              # same masks -> the train-mode output, exactly
    model.eval()
    assert torch.equal(model(x), y)                              # explicit masks apply in eval mode too
    set_masks(model, None)
    assert not torch.equal(model(x), y)


@pytest.mark.parametrize("name,shape", CASES)
def test_batch_equals_one_at_a_time(name, shape):
    torch.manual_seed(2)
    model = build_attack_model(name, shape, p=0.25)
    x = torch.randn(3, *shape)
    model.eval()
    batch = model(x)
    single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)
    # with replayed masks (train mode, where BatchNorm would use batch statistics)
    model.train()
    _record(model)
    batch = model(x)
    masks = [site.last_mask for site in dropout_sites(model)]
    _record(model, False)
    single = []
    for i in range(3):
        set_masks(model, [m[i:i + 1] for m in masks])
        single.append(model(x[i:i + 1]))
    torch.testing.assert_close(batch, torch.cat(single), rtol=1e-5, atol=1e-5)
    # changing one sample leaves the others' outputs unchanged
    set_masks(model, masks)
    x2 = x.clone()
    x2[1] = torch.randn(shape)
    y2 = model(x2)
    torch.testing.assert_close(y2[[0, 2]], batch[[0, 2]], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y2[1], batch[1])


def _vit_param_count(c=3, image=32, patch=4, dim=256, depth=4, heads=16, dim_head=16, mlp=256, n_classes=10):
    n = (image // patch) ** 2
    inner = heads * dim_head
    embed = (c * patch * patch) * dim + dim + (n + 1) * dim + dim     # patch Linear, pos-embedding, cls token
    block = (2 * dim                                                  # LayerNorm before attention
             + dim * 3 * inner                                        # to_qkv, no bias
             + inner * dim + dim                                      # to_out
             + 2 * dim                                                # LayerNorm before feed-forward
             + dim * mlp + mlp + mlp * dim + dim)                     # feed-forward
    head = 2 * dim + dim * n_classes + n_classes                      # LayerNorm + Linear
    return embed + depth * block + head


def test_small_vit_architecture():
    torch.manual_seed(0)
    model = SmallViT()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _vit_param_count() == 1_612_554
    assert n_params == _vit_param_count() and _vit_param_count(dim_head=64) != n_params   # dim_head = 256 / 16
    assert len(dropout_sites(model)) == 1 + 4 * 4
    assert len(dropout_sites(SmallViT(depth=2))) == 1 + 4 * 2
    assert sum(p.numel() for p in SmallViT(depth=2, n_classes=100).parameters()) == _vit_param_count(depth=2, n_classes=100)
    assert all(site.p == 0.25 for site in dropout_sites(model))
    assert [s.p for s in dropout_sites(SmallViT(p=0.1, emb_p=0.3, depth=1))] == [0.3, 0.1, 0.1, 0.1, 0.1]
    # mask shapes in forward order: embedding, then per block attention matrix, to_out, feed-forward x2
    shapes = _site_input_shapes(model.train(), torch.randn(2, 3, 32, 32))
    assert shapes == [(2, 65, 256)] + [(2, 16, 65, 65), (2, 65, 256), (2, 65, 256), (2, 65, 256)] * 4
    # parameter names are those of the official model (so its state dicts would load)
    keys = set(model.state_dict())
    for k in ["to_patch_embedding.1.weight", "pos_embedding", "cls_token", "transformer.layers.0.0.norm.weight",
              "transformer.layers.3.0.fn.to_qkv.weight", "transformer.layers.0.0.fn.to_out.0.bias",
              "transformer.layers.0.1.fn.net.0.weight", "transformer.layers.0.1.fn.net.3.bias",
              "mlp_head.0.weight", "mlp_head.1.bias"]:
        assert k in keys
    assert "transformer.layers.0.0.fn.to_qkv.bias" not in keys
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 3, 28, 28))


def test_patch_flatten_matches_einops_order():
    x = torch.randn(2, 3, 8, 12)
    out = PatchFlatten((4, 4))(x)
    assert out.shape == (2, 6, 48)
    b, i, j = 1, 1, 2                                            # patch row 1, col 2 -> index 1 * 3 + 2
    expected = torch.stack([x[b, c, i * 4 + p1, j * 4 + p2] for p1 in range(4) for p2 in range(4) for c in range(3)])
    assert torch.equal(out[b, i * 3 + j], expected)


def test_lenet_and_resnet_structure():
    assert LeNetZhu(3, 32).fc.in_features == 768 and LeNetZhu(1, 28).fc.in_features == 588   # DLG / IG sizes
    lenet = LeNetZhu(1, 28, dlg_init=True, p=0.1)
    assert all(float(p.detach().abs().max()) <= 0.5 for p in lenet.parameters())
    assert [s.p for s in dropout_sites(lenet)] == [0.1]
    assert sum(isinstance(m, nn.Sigmoid) for m in lenet.modules()) == 3
    resnet = SmallResNet()
    assert len(dropout_sites(resnet)) == 1 and resnet.fc.in_features == 64
    assert sum(isinstance(m, nn.GroupNorm) for m in resnet.modules()) == 1 + 2 * 3 + 2   # stem, blocks, 2 shortcuts
    assert not any(isinstance(m, nn.GroupNorm) for m in SmallResNet(norm="none").modules())
    with pytest.raises(ValueError, match="BatchNorm"):
        SmallResNet(norm="batch")


def test_build_attack_model():
    mlp = build_attack_model("mlp", (1, 28, 28), p=0.1)
    assert isinstance(mlp, DropoutMLP) and mlp.net[1].in_features == 784
    assert mlp.net[-1].out_features == 10 and {s.p for s in dropout_sites(mlp)} == {0.1}
    assert build_attack_model("mlp", (3, 32, 32)).net[1].in_features == 3072
    vit = build_attack_model("vit", (1, 28, 28), n_classes=5)                 # 7x7 patches of 4x4
    assert vit.pos_embedding.shape == (1, 50, 256) and vit(torch.randn(1, 1, 28, 28)).shape == (1, 5)
    assert isinstance(build_attack_model("lenet", (1, 28, 28)), LeNetZhu)
    assert isinstance(build_attack_model("resnet", (3, 32, 32)), SmallResNet)
    with pytest.raises(ValueError, match="unknown attack model 'vgg'"):
        build_attack_model("vgg", (3, 32, 32))
    with pytest.raises(ValueError, match="divisible by the patch size"):
        build_attack_model("vit", (3, 30, 30))
    with pytest.raises(ValueError, match="divisible by the patch size"):
        build_attack_model("vit", (3, 32, 32), patch_size=5)
    for name in ("vit", "lenet", "resnet"):
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            build_attack_model(name, (784,))
    with pytest.raises(ValueError, match="at least 4x4"):
        build_attack_model("lenet", (1, 2, 2))
    with pytest.raises(ValueError, match="invalid input shape"):
        build_attack_model("mlp", ())
    with pytest.raises(ValueError, match="dropout probability"):
        build_attack_model("resnet", (3, 32, 32), p=1.0)


def test_normalize_cifar10_matches_source_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 128, 255)
    x = normalize_cifar10(images)
    assert x.dtype == np.float32 and x.shape == (5, 3, 32, 32)
    mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    ref = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)              # SOURCE.md: (images/255 - mean)/std, CHW
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    assert x[0, 2, 0, 0] == pytest.approx((1 - 0.44677013) / 0.26158786, abs=1e-5)   # blue channel of a 255 pixel
    back = np.rint((x.transpose(0, 2, 3, 1) * std + mean) * 255)              # SOURCE.md de-normalisation
    assert np.array_equal(back.astype(np.uint8), images)
    with pytest.raises(ValueError, match="RGB"):
        normalize_cifar10(images[..., 0])


@pytest.mark.needs_data("cifar10-victims")
def test_cifar10_victims_feed_the_vit(data_root):
    images, labels = load_victims("cifar10", data_root)
    assert images.shape == (128, 32, 32, 3) and list(labels[:8]) == [6, 2, 5, 2, 4, 9, 1, 6]
    x = torch.from_numpy(normalize_cifar10(images[:2]))
    assert abs(float(x.mean())) < 1.5 and x.shape == (2, 3, 32, 32)
    torch.manual_seed(0)
    assert SmallViT(p=0.5)(x).shape == (2, 10)


def test_written_out_layer_norm_equals_torch_layer_norm():
    from attacks.vision import LayerNorm

    torch.manual_seed(0)
    ours, ref = LayerNorm(16), torch.nn.LayerNorm(16)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16, dtype=torch.float32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
