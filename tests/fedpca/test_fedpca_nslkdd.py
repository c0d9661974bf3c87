"""NSL-KDD: reproduce the paper's centralized numbers exactly; FedPG on the real data."""

import numpy as np
import pytest

from fedsim.engine import simulate
from fedsim.fedpca.fedpg import FedPG, PCAFederation
from fedsim.fedpca.problem import pooled_matrix, top_k_eigenspace
from fedsim.pipelines import fedpca_nslkdd as nslkdd
from fedsim.rng import Streams


# The paper's numbers are matched at its two decimals. Not a tie-prone comparison: the unrounded values are
# >= 5e-4 from a rounding boundary (e.g. AUC 91.0065, FPR 18.1856), the AUCs depend only on the order of the
# scores (adjacent distinct scores >= 2e-9 apart, relative) and the nearest score to the k = 15 threshold is 1e-4
# (relative) from it: far beyond the rounding-level changes (~1e-12 or less) other CPUs' kernels make to a score.
def test_centralized_pca_reproduces_paper_auc_at_k20(nsl_data):
    res = nslkdd.train_method("centralized", nsl_data, 20)
    ev = nslkdd.evaluate_method(res, nsl_data, "paper-minmax")
    got = [ev["auc"], ev["auc_DoS"], ev["auc_Probe"], ev["auc_R2L"], ev["auc_U2R"]]
    np.testing.assert_allclose(np.round(got, 2), [91.01, 95.77, 96.87, 73.72, 93.58], atol=0)


def test_centralized_pca_reproduces_paper_detection_metrics_at_k15(nsl_data):
    res = nslkdd.train_method("centralized", nsl_data, 15)
    ev = nslkdd.evaluate_method(res, nsl_data, "paper-minmax", tau=0.00019)
    got = [ev["precision"], ev["recall"], ev["accuracy"], ev["f1"], ev["fpr"]]
    np.testing.assert_allclose(np.round(got, 2), [86.05, 84.86, 83.55, 85.45, 18.19], atol=0)


def test_exact_federated_pca_equals_centralized_pca_on_the_same_rows(nsl_data):
    import torch

    from fedsim.fedpca.grassmann import largest_principal_angle

    fed = nslkdd.train_method("exact-federated", nsl_data, 20)
    rows = np.concatenate(nsl_data.global_blocks)  # the clients' rows, standardized with the pooled scaler
    vals, vecs = np.linalg.eigh(rows.T @ rows / len(rows))
    assert float(largest_principal_angle(torch.tensor(fed.Z), torch.tensor(vecs[:, ::-1][:, :20].copy()))) < 1e-8
    assert fed.bytes_sent == 20 * (34 * 34 + 34 + 1) * 8
    # the paper split leaves 3 rows (the largest dst_bytes) unused: the AUC moves by less than 0.2 points
    central = nslkdd.evaluate_method(nslkdd.train_method("centralized", nsl_data, 20), nsl_data, "paper-minmax")
    assert abs(nslkdd.evaluate_method(fed, nsl_data, "paper-minmax")["auc"] - central["auc"]) < 0.2


def test_honest_protocols_use_no_test_statistics(nsl_data):
    res = nslkdd.train_method("centralized", nsl_data, 20)
    a = nslkdd.evaluate_method(res, nsl_data, "train-quantile", alpha=0.05)
    # the threshold depends only on training data: its FPR on the (unseen) test normals is reported, not tuned
    assert 0 < a["fpr"] < 100 and a["auc"] == pytest.approx(91.01, abs=0.01)


def test_clean_fedpg_converges_on_nslkdd(nsl_data):
    """Full participation, k = 17 (a clear eigengap: lambda_17 = 0.72 vs lambda_18 = 0.57)."""
    clients = nsl_data.clients
    k = 17
    ref = top_k_eigenspace(pooled_matrix(clients), k)[0]
    fed = PCAFederation(clients, Streams(0), reference=ref)
    res = simulate(FedPG(k, eta=0.05, rho=5.0, local_steps=20, client_fraction=1.0), fed, 160, eval_every=160)
    assert res.final("angle_to_reference") < 1e-3
    assert res.final("u_orthonormality_error") < 1e-10


@pytest.mark.slow
def test_clean_fedpg_converges_on_nslkdd_k30(nsl_data):
    clients = nsl_data.clients
    ref = top_k_eigenspace(pooled_matrix(clients), 30)[0]
    fed = PCAFederation(clients, Streams(0), reference=ref)
    res = simulate(FedPG(30, eta=0.05, rho=1.0, local_steps=30, client_fraction=1.0), fed, 300, eval_every=300)
    assert res.final("angle_to_reference") < 1e-3


def test_paper_variant_lands_in_the_reported_band(nsl_data):
    """The official protocol is seed-sensitive (2 clients a round, sorted blocks): AUC about 84-92."""
    aucs = []
    for seed in (0, 1):
        res = nslkdd.train_method("fedpg-paper", nsl_data, 30, rounds=100, seed=seed)
        aucs.append(nslkdd.evaluate_method(res, nsl_data, "paper-minmax")["auc"])
    assert all(84 <= a <= 92 for a in aucs), aucs
