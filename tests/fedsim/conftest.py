import numpy as np
import pytest
import torch

import topologies
from fedsim import data as fdata
from fedsim.engine import Federation
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.training import ClientData, LocalSGD


@pytest.fixture(scope="session")
def digits_split():
    ds = fdata.load_digits()
    return fdata.train_test_split(ds, 0.2, seed=0)


def make_federation(train, test, n_clients=8, seed=0, schedule=None, partition="iid", **pparams):
    parts = fdata.partition(partition, train.y, n_clients, seed=seed, **pparams)
    data = ClientData.from_parts(train.x, train.y, parts)
    return Federation(data, torch.as_tensor(test.x), torch.as_tensor(test.y), Streams(seed), schedule)


@pytest.fixture(scope="session")
def pca_blocks():
    """Five clients' data blocks (8 features, 50-90 rows) around a planted 2-dimensional subspace."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    return [rng.standard_normal((50 + 10 * i, 2)) * [3.0, 2.0] @ basis.T + 0.3 * rng.standard_normal((50 + 10 * i, 8))
            for i in range(5)]


@pytest.fixture(scope="module")
def clients(pca_blocks):
    """``pca_blocks`` as float64 ``PCAClients``."""
    from fedsim.fedpca.problem import PCAClients

    return PCAClients.from_blocks(pca_blocks)


@pytest.fixture
def small_fed(digits_split):
    train, test = digits_split
    sched = topologies.Static(topologies.metropolis_hastings(topologies.ring(8)))
    return make_federation(train, test, 8, schedule=sched)


@pytest.fixture
def mlp():
    return build_model("mlp", (1, 8, 8), 10, (32,))


def _trainer(model, **kw):
    kw = {"lr": 0.1, "steps": 2, "batch_size": 16, **kw}
    return LocalSGD(model, **kw)


@pytest.fixture
def trainer():
    """``trainer(model, **overrides)``: LocalSGD with small test defaults."""
    return _trainer


@pytest.fixture
def make_fed(digits_split):
    """``make_fed(n_clients, seed=0, schedule=None, ...)``: a digits federation."""
    train, test = digits_split
    return lambda *a, **kw: make_federation(train, test, *a, **kw)
