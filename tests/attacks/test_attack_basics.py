import pytest
import torch
import torch.nn.functional as F

from attacks.labels import idlg_label
from attacks.models import DropoutMLP, MaskedDropout, dropout_sites, set_masks
from attacks.victims import load_victims, normalize_mnist


def test_masked_dropout_behaves_like_dropout_and_replays_masks():
    torch.manual_seed(0)
    model = DropoutMLP(p=0.25)
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))                      # eval: deterministic, no dropout
    model.train()
    for site in dropout_sites(model):
        site.record = True
    y1 = model(x)
    masks = [s.last_mask for s in dropout_sites(model)]
    assert len(masks) == 3 and all(m.shape == (4, 512) for m in masks)
    kept = torch.cat([m.flatten() for m in masks]).mean()
    assert 0.70 < float(kept) < 0.80                            # about 1 - p kept
    set_masks(model, masks)
    torch.testing.assert_close(model(x), y1)                    # replaying the drawn masks gives the same output
    set_masks(model, [torch.ones_like(m) for m in masks])
    model.eval()
    scaled = model(x)
    set_masks(model, None)
    # an all-ones mask is the eval forward with activations scaled by 1 / (1 - p) at each site
    assert not torch.allclose(scaled, model(x))
    with pytest.raises(ValueError, match="3 dropout sites"):
        set_masks(model, masks[:2])
    with pytest.raises(ValueError, match="dropout probability"):
        MaskedDropout(1.0)


@pytest.mark.needs_data("mnist-victims")
def test_idlg_recovers_every_label_of_single_image_batches(data_root):
    images, labels = load_victims("mnist", data_root)
    x = torch.tensor(normalize_mnist(images[:20]))
    torch.manual_seed(0)
    model = DropoutMLP(p=0.25).train()                          # gradients computed in train mode, dropout active
    for i in range(20):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), torch.tensor([labels[i]])).backward()
        assert idlg_label(model.net[-1].weight.grad) == labels[i]
