"""Averaging, AsyncGossip and mixing-matrix checks for survivors of the 2026-11-30 mutation run (docs/testing.md).

What the earlier kill tests left open and a CPU-only test can still tell apart:

* ``_csr`` silences torch's warn-once "sparse CSR support is in beta" warning. ``torch.set_warn_always(True)``
  makes that warning fire on every CSR constructor, so the filter around it is exercised in this process (no
  fresh interpreter needed).
* Device placement. The ``meta`` device carries shapes, dtypes and devices but no data: run on meta tensors, the
  batched averaging must hand back tensors on the device it was given (or its inputs live on), in their dtype.
  A tensor made without ``device=`` lands on the CPU and shows up there, as it would on a CUDA run.
* Error messages whose informative part (which algorithm, which option value, what is wrong) would be lost.

Values are compared with float64 references built from the documented definitions (dense loops over the
messages); tolerance 1e-12 for float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import topologies
from fedsim.algorithms import AsyncGossip
from fedsim.averaging import Averaging, Inbox, average_inbox, average_received, corrected_slices, tensor_variances
from fedsim.engine import Federation
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.state import ParamSpec
from fedsim.training import ClientData, LocalSGD

EXACT = 1e-12
META = torch.device("meta")

# a weight matrix [2, 2], a bias [2] and a one-element tensor [1] (as in test_averaging_mutation_kills.py)
SPEC = ParamSpec(("w", "b", "s"), ((2, 2), (2,), (1,)))
SLICES = corrected_slices(SPEC, "all_but_bn_stats")      # w and b: two corrected tensors


# -- the CSR constructor's warning filter --------------------------------------------------------------------

def test_csr_products_keep_torchs_beta_warning_to_themselves():
    """With torch's warn-once warnings firing every time, the inbox sums and the synchronous beta mix still match
    a dense float64 loop over the messages, and no "sparse CSR ... beta" warning reaches the caller (the filter
    around the CSR constructor ignores exactly that UserWarning)."""
    g = torch.Generator().manual_seed(3)
    n = 4
    own = torch.randn(n, SPEC.size, dtype=torch.float64, generator=g)
    payload = torch.randn(3, SPEC.size, dtype=torch.float64, generator=g)
    receivers, rows = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([0, 2, 1, 1, 2, 0])
    weights = torch.rand(6, dtype=torch.float64, generator=g)
    total = torch.zeros(n, SPEC.size, dtype=torch.float64)
    for e in range(len(receivers)):
        total[receivers[e]] += weights[e] * payload[rows[e]]
    beta = 0.25
    mixed = own.clone()                                      # node 2 receives nothing and keeps its model
    for i in (0, 1, 3):
        mine = receivers == i
        mixed[i] = beta * own[i] + (1 - beta) * payload[rows[mine]].mean(0)
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inbox = Inbox.received(n, receivers, rows, payload, weights, torch.zeros(3, 0, dtype=torch.float64))
            out = average_received(own, receivers, rows, payload, Averaging("beta", beta=beta), [])
    finally:
        torch.set_warn_always(was)
    torch.testing.assert_close(inbox.total, total, atol=EXACT, rtol=0)
    torch.testing.assert_close(out, mixed, atol=EXACT, rtol=0)
    assert not [w for w in caught if "beta" in str(w.message)]


# -- device placement, on the meta device ----------------------------------------------------------------------

def _placed(t: torch.Tensor) -> tuple:
    return t.device.type, t.dtype, tuple(t.shape)


def test_empty_inboxes_live_on_the_given_device():
    """``Inbox.empty(..., device)`` and the sums of a delivery without messages: every field on the device given
    (or the payload's), sums in the payload's dtype, counts int64, shapes [N, P], [N], [N], [N, L]."""
    n, p, L = 4, SPEC.size, len(SLICES)
    want = [("meta", torch.float64, (n, p)), ("meta", torch.float64, (n,)), ("meta", torch.int64, (n,)),
            ("meta", torch.float64, (n, L))]
    empty = Inbox.empty(n, p, L, torch.float64, META)
    assert [_placed(t) for t in (empty.total, empty.weight, empty.count, empty.variance)] == want
    none = torch.zeros(0, dtype=torch.int64, device=META)
    payload = torch.empty(3, p, dtype=torch.float64, device=META)
    got = Inbox.received(n, none, none, payload, torch.zeros(0, dtype=torch.float64, device=META),
                         torch.empty(3, L, dtype=torch.float64, device=META))
    assert [_placed(t) for t in (got.total, got.weight, got.count, got.variance)] == want


@pytest.mark.parametrize("unbiased", [False, True])
def test_tensor_variances_stay_on_their_device(unbiased):
    """``tensor_variances`` of rows on another device: [m, L] on that device and in their dtype (the divisors
    are made next to the sums they divide)."""
    x = torch.empty(3, SPEC.size, dtype=torch.float64, device=META)
    assert _placed(tensor_variances(x, SLICES, unbiased)) == ("meta", torch.float64, (3, len(SLICES)))


@pytest.mark.parametrize("avg", [Averaging("plain"), Averaging("beta"), Averaging("beta", beta=0.0),
                                 Averaging("variance_corrected", beta=0.3, eps=1e-3),
                                 Averaging("variance_corrected", target="follow_beta", unbiased=True)],
                         ids=["plain", "beta", "mean", "corrected", "follow_beta"])
def test_batched_averaging_stays_on_its_device(avg):
    """``average_inbox`` on another device (the accelerator branch of its fresh output and of keeping the idle
    nodes' rows): one [N, P] result on that device, in the models' dtype."""
    n, p, L = 5, SPEC.size, len(SLICES)
    own = torch.empty(n, p, dtype=torch.float64, device=META)
    inbox = Inbox(torch.empty(n, p, dtype=torch.float64, device=META), torch.empty(n, dtype=torch.float64, device=META),
                  torch.empty(n, dtype=torch.int64, device=META), torch.empty(n, L, dtype=torch.float64, device=META))
    own_weight = torch.empty(n, dtype=torch.float64, device=META) if avg.rule == "plain" else None
    out = average_inbox(own, inbox, avg, SLICES, own_weight=own_weight)
    assert _placed(out) == ("meta", torch.float64, (n, p))


# -- error messages that name what is wrong ---------------------------------------------------------------------

def test_async_gossip_without_a_topology_names_itself():
    """A federation without a schedule: the error says which algorithm needs a topology."""
    g = np.random.default_rng(0)
    x, y = g.normal(size=(8, 1, 8, 8)).astype(np.float32), g.integers(0, 10, size=8)
    data = ClientData.from_parts(x, y, [np.arange(4), np.arange(4, 8)])
    fed = Federation(data, torch.as_tensor(x), torch.as_tensor(y), Streams(0))
    alg = AsyncGossip(LocalSGD(build_model("mlp", (1, 8, 8), 10, (4,)), lr=0.1, steps=0, batch_size=2))
    with pytest.raises(ValueError, match="(?i)asynchronous gossip needs a topology"):
        alg.init(fed)


def test_check_stochastic_names_the_bad_kind_and_non_finite_entries():
    """``check_stochastic``: an unknown ``kind`` is named in the error; NaN / inf entries are reported as such."""
    with pytest.raises(ValueError, match="(?i)kind.*'sideways'"):
        topologies.check_stochastic(np.eye(2), kind="sideways")
    for bad in (np.nan, np.inf):
        W = np.array([[0.5, 0.5], [bad, 0.5]])
        with pytest.raises(topologies.NotStochasticError, match="(?i)non-finite"):
            topologies.check_stochastic(W, kind="row")
