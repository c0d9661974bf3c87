"""An attack against the update a FedAvg client actually sent in the simulation."""

import numpy as np
import pytest
import torch

from attacks.capture import update_to_gradient
from attacks.inversion import InversionConfig, invert
from attacks.labels import idlg_label
from attacks.metrics import ssim
from attacks.models import DropoutMLP
from attacks.victims import MNIST_MEAN, MNIST_STD, load_victims, normalize_mnist
from fedsim.algorithms import FedAvg
from fedsim.engine import Federation, simulate
from fedsim.messages import SERVER, Capture
from fedsim.rng import Streams
from fedsim.training import ClientData, LocalSGD


@pytest.mark.needs_data("mnist-victims")
def test_curious_server_reconstructs_a_client_image_from_its_fedavg_update(data_root):
    images, labels = load_victims("mnist", data_root)
    x = normalize_mnist(images[:4])
    data = ClientData.from_parts(x, labels[:4], [np.array([i]) for i in range(4)])  # one image per client
    fed = Federation(data, torch.tensor(x), torch.tensor(labels[:4]), Streams(0))
    torch.manual_seed(0)
    model = DropoutMLP(p=0.0)
    lr = 0.1
    alg = FedAvg(LocalSGD(model, lr=lr, steps=1, batch_size=1), clients_per_round=2)
    spy = Capture(receivers=[SERVER], rounds=[0])
    simulate(alg, fed, 1, taps=[spy], eval_every=0)
    assert len(spy.records) == 2
    start = alg.init(fed).params                      # the global model the server sent (public)
    victim = spy.records[0]
    grads = update_to_gradient(model, start, victim.payload, lr)
    label = idlg_label(grads[-1])
    assert label == labels[victim.sender]             # labels recovered from the update alone
    torch.nn.utils.vector_to_parameters(start, model.parameters())
    box = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
    res = invert(model, grads, torch.tensor([label]), (1, 1, 28, 28), box, "ig",
                 config=InversionConfig(max_iterations=400))
    back = lambda z: z * MNIST_STD + MNIST_MEAN  # noqa: E731
    truth = torch.tensor(x[victim.sender:victim.sender + 1])
    assert float(ssim(back(res.x), back(truth))) > 0.9


@pytest.mark.needs_data("mnist-victims")
def test_dia_against_the_update_a_dropout_client_sent_beats_ig(data_root):
    """FedAvg with the DIA MLP (p = 0.25) trained by the per-client loop: dropout is active when the client
    computes its step, the server sees only the update; DIA recovers the image, IG (ignoring dropout) does not."""
    from attacks.batched import batched_invert

    images, labels = load_victims("mnist", data_root)
    x = normalize_mnist(images[:2])
    data = ClientData.from_parts(x, labels[:2], [np.array([i]) for i in range(2)])
    fed = Federation(data, torch.tensor(x), torch.tensor(labels[:2]), Streams(0))
    torch.manual_seed(0)
    model = DropoutMLP(p=0.25)
    lr = 0.1
    alg = FedAvg(LocalSGD(model, lr=lr, steps=1, batch_size=1), clients_per_round=2, vectorized=False)
    spy = Capture(receivers=[SERVER], rounds=[0])
    simulate(alg, fed, 1, taps=[spy], eval_every=0)
    start = alg.init(fed).params
    torch.nn.utils.vector_to_parameters(start, model.parameters())
    grads = [update_to_gradient(model, start, r.payload, lr) for r in spy.records]
    label = torch.tensor([[idlg_label(g[-1])] for g in grads])
    assert label[:, 0].tolist() == [int(labels[r.sender]) for r in spy.records]
    targets = [torch.stack(col) for col in zip(*grads)]
    box = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
    truth = torch.tensor(np.stack([x[r.sender] for r in spy.records])) * MNIST_STD + MNIST_MEAN
    score = {}
    for attack in ("ig", "dia"):
        res = batched_invert(model, targets, label, (1, 1, 28, 28), box, attack,
                             config=InversionConfig(max_iterations=400), seeds=[0, 0])
        score[attack] = ssim(res.x[:, 0] * MNIST_STD + MNIST_MEAN, truth)
    assert bool((score["dia"] > 0.9).all()) and bool((score["dia"] > score["ig"] + 0.1).all())
