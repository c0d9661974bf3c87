from pathlib import Path

import numpy as np
import pytest

from fedsim.fedpca.problem import PCAClients

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


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
def nsl_data():
    if not (SHARED / "nsl-kdd").is_dir():
        pytest.skip(f"NSL-KDD not found at {SHARED}/nsl-kdd")
    from fedsim.fedpca import nslkdd

    return nslkdd.prepare(SHARED)
