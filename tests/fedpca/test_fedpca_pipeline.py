"""The NSL-KDD pipeline (fedsim.pipelines.fedpca_nslkdd): where it lives, the global scaler over all normal rows,
the honest default protocol, KDDTest-21, early stopping and convergence traces."""

import ast
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fedsim.pipelines import fedpca_nslkdd as pipeline

FEDPCA = Path(__file__).resolve().parents[2] / "fedsim" / "fedpca"


def test_the_algorithm_package_imports_no_driver_or_face():
    """An arrow never climbs: fedsim.fedpca (algorithms) imports neither the engine nor pipelines, cli, plots."""
    assert importlib.util.find_spec("fedsim.fedpca.nslkdd") is None      # the pipeline moved to fedsim.pipelines
    banned = ("fedsim.engine", "fedsim.pipelines", "fedsim.cli", "fedsim.plots", "fedsim.experiment")
    for path in sorted(FEDPCA.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"


def _sin_largest_angle(A, B):
    """sin of the largest principal angle between span(A) and span(B) (orthonormal columns): accurate near 0."""
    return float(np.linalg.norm(B - A @ (A.T @ B), 2))


@pytest.fixture(scope="module")
def all_normal(require_data):
    return pipeline.prepare(require_data("nsl-kdd"), global_scaler="all-normal")


@pytest.mark.needs_data("nsl-kdd")
@pytest.mark.parametrize("k", [15, 20])
def test_exact_federated_with_the_all_normal_scaler_equals_centralized_pca(all_normal, nsl_data, k):
    central = pipeline.train_method("centralized", all_normal, k).Z
    fed = pipeline.train_method("exact-federated", all_normal, k).Z
    assert np.arcsin(min(1.0, _sin_largest_angle(central, fed))) < 1e-8
    # the default (the split's blocks: 3 rows with the largest dst_bytes left out) is a different subspace
    blocks = pipeline.train_method("exact-federated", nsl_data, k).Z
    assert np.arcsin(min(1.0, _sin_largest_angle(central, blocks))) > 0.1


@pytest.mark.needs_data("nsl-kdd")
def test_all_normal_changes_only_the_global_scaler_methods(all_normal, nsl_data):
    assert nsl_data.unassigned == all_normal.unassigned == 67_343 % 20
    assert sum(len(b) for b in all_normal.global_blocks) == len(all_normal.central_train) == 67_343
    assert sum(len(b) for b in nsl_data.global_blocks) == 67_343 - 3
    for a, b in zip(all_normal.blocks, nsl_data.blocks):         # the clients' own blocks are the paper's
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(all_normal.X_test, nsl_data.X_test)
    # the pooled scaler over every normal row is the centralized one: the standardized rows agree
    np.testing.assert_allclose(np.concatenate(all_normal.global_blocks).mean(0), all_normal.central_train.mean(0),
                               atol=1e-9)
    assert pipeline.scaler_of("exact-federated", "all-normal") == "global (all normal)"
    assert [pipeline.scaler_of(m) for m in ("centralized", "exact-federated", "fedpg")] == \
        ["centralized", "global (blocks)", "own"]


@pytest.mark.needs_data("nsl-kdd")
@pytest.mark.parametrize("protocol", ["train-quantile", "q-statistic"])
def test_honest_protocols_use_no_test_data(nsl_data, protocol):
    """Rescale the test rows and flip their labels: an honest threshold stays exactly the same."""
    assert pipeline.DEFAULT_PROTOCOL == "train-quantile" and pipeline.DEFAULT_PROTOCOL in pipeline.HONEST_PROTOCOLS
    res = pipeline.train_method("centralized", nsl_data, 20)
    ts = nsl_data.test()
    other = dataclasses.replace(ts, X=10.0 * ts.X + 3.0, is_attack=~ts.is_attack)
    moved = dataclasses.replace(nsl_data, tests=(other,))
    kwargs = {} if protocol == pipeline.DEFAULT_PROTOCOL else {"protocol": protocol}
    assert pipeline.evaluate_method(res, moved, **kwargs)["threshold"] == \
        pipeline.evaluate_method(res, nsl_data, **kwargs)["threshold"]
    # the paper's protocol reads the test scores: the same change moves its threshold
    paper = [pipeline.evaluate_method(res, d, "paper-minmax")["threshold"] for d in (nsl_data, moved)]
    assert paper[0] != paper[1]


@pytest.mark.needs_data("nsl-kdd", "nsl-kdd-test21")
def test_prepare_loads_kddtest21_and_both(data_root):
    both = pipeline.prepare(data_root, test="both")
    assert [t.name for t in both.tests] == ["test+", "test21"]
    t21 = both.test("test21")
    assert t21.title == "KDDTest-21" and t21.X.shape == (11_850, 34)
    assert int((~t21.is_attack).sum()) == 2_152
    only = pipeline.prepare(data_root, test="test21")
    np.testing.assert_array_equal(only.X_test, t21.X)
    res = pipeline.train_method("centralized", both, 20)
    assert pipeline.evaluate_method(res, both, test="test21")["auc"] < pipeline.evaluate_method(res, both)["auc"]
    with pytest.raises(ValueError, match="test set 'test21' was not prepared"):
        pipeline.prepare(data_root).test("test21")


def test_prepare_refuses_unknown_choices():
    with pytest.raises(ValueError, match="test must be one of test\\+, test21, both"):
        pipeline.prepare(test="test-21")
    with pytest.raises(ValueError, match="global_scaler must be one of blocks, all-normal"):
        pipeline.prepare(global_scaler="all")


@pytest.mark.needs_data("nsl-kdd")
def test_clean_fedpg_stops_by_itself_and_traces_its_convergence(nsl_data):
    res = pipeline.train_method("fedpg", nsl_data, 20, trace=True)
    extra, curve = res.extra, res.extra["curve"]
    assert extra["stopped"] and extra["rounds"] < 100 and extra["angle_to_pooled_topk"] < 1e-5
    assert curve["round"] == list(range(1, extra["rounds"] + 1))
    assert curve["angle"][-1] == pytest.approx(extra["angle_to_pooled_topk"])
    assert curve["angle"][0] > 0.1 and 0 <= extra["objective_gap"] < 1e-9 and curve["objective_gap"][0] > 1e-3
    # tol = 0: no stopping rule, every round of the cap runs
    capped = pipeline.train_method("fedpg", nsl_data, 20, rounds=120, tol=0)
    assert not capped.extra["stopped"] and capped.extra["rounds"] == 120
    assert capped.bytes_sent > res.bytes_sent


@pytest.mark.needs_data("nsl-kdd")
def test_decentralized_default_cap_and_paper_rounds(nsl_data):
    import topologies

    assert pipeline.default_rounds("fedpg-paper") == pipeline.PAPER_ROUNDS == 100
    assert pipeline.default_rounds("fedpg-decentralized") == pipeline.default_rounds("fedpg") == 1000
    ring = topologies.Static(topologies.metropolis_hastings(topologies.build("ring", 20, seed=0)))
    res = pipeline.train_method("fedpg-decentralized", nsl_data, 30, rounds=300, topology=ring, trace=True)
    assert res.extra["rounds"] == 300 and not res.extra["stopped"] and res.extra["angle_to_pooled_topk"] < 1e-6
    assert len(res.extra["curve"]["angle"]) == 300
