import numpy as np
import pytest

from fedsim.fedpca.problem import PCAClients


@pytest.fixture(scope="session")
def planted():
    """Synthetic planted-subspace data: 10 clients of different sizes, a 3-dim signal in R^20 plus noise."""
    rng = np.random.default_rng(0)
    d, k = 20, 3
    basis = np.linalg.qr(rng.standard_normal((d, k)))[0]
    blocks = []
    for i in range(10):
        n = 200 + 10 * i
        signal = rng.standard_normal((n, k)) * np.array([5.0, 4.0, 3.0])
        blocks.append(signal @ basis.T + 0.5 * rng.standard_normal((n, d)))
    return PCAClients.from_blocks(blocks), basis, k


@pytest.fixture(scope="session")
def nsl_data(require_data):
    root = require_data("nsl-kdd")          # the data folder: FEDSIM_DATA_DIR, else the user cache
    from fedsim.pipelines import fedpca_nslkdd as nslkdd

    return nslkdd.prepare(root)
