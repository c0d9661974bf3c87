import numpy as np
import pytest
import torch

import topologies
from fedsim.mixing import SparseW


def _dense(sw):
    return sw.to_csr().to_dense().double()


@pytest.fixture
def graph():
    return topologies.random_regular(12, 3, seed=1)


def test_matmul_matches_dense_and_loop(graph):
    W = topologies.metropolis_hastings(graph)
    sw = SparseW.from_scipy(W, dtype=torch.float64)
    x = torch.randn(12, 5, dtype=torch.float64)
    want = torch.as_tensor(W.toarray()) @ x
    torch.testing.assert_close(sw.matmul(x), want)
    torch.testing.assert_close(sw.matmul_loop(x), want)


def test_dropped_messages_keep_rows_stochastic_undirected(graph):
    sw = SparseW.from_scipy(topologies.metropolis_hastings(graph), dtype=torch.float64)
    senders, receivers = sw.edges()
    assert len(senders) == 2 * graph.number_of_edges()
    delivered = torch.rand(len(senders), generator=torch.Generator().manual_seed(0)) > 0.5
    D = _dense(sw.with_delivered(delivered))
    assert torch.allclose(D.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    lost = ~delivered
    assert (D[receivers[lost], senders[lost]] == 0).all()
    assert (D[receivers[delivered], senders[delivered]] > 0).all()


def test_dropped_messages_keep_columns_stochastic_directed():
    A = topologies.push_sum_weights(topologies.directed_exponential(16))
    sw = SparseW.from_scipy(A, directed=True, dtype=torch.float64)
    delivered = torch.rand(len(sw.edges()[0]), generator=torch.Generator().manual_seed(1)) > 0.3
    D = _dense(sw.with_delivered(delivered))
    assert torch.allclose(D.sum(0), torch.ones(16, dtype=torch.float64), atol=1e-12)


def test_matrix_without_stored_diagonal_gets_one():
    import scipy.sparse as sp
    P = sp.csr_array(np.array([[0.0, 1.0], [1.0, 0.0]]))  # a swap: no diagonal entries stored
    sw = SparseW.from_scipy(P, dtype=torch.float64)
    senders, receivers = sw.edges()
    assert senders.tolist() == [1, 0] and receivers.tolist() == [0, 1]
    D = _dense(sw.with_delivered(torch.tensor([False, True])))  # node 0 misses node 1's model
    assert torch.equal(D, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
