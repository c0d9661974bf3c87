"""``fedsim fedpca``: --test (KDDTest+, KDDTest-21, both), the honest default protocol, --global-scaler, the
round caps and the convergence plot; help texts and one-line errors for the new flags."""

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedsim.cli import main
from fedsim.runs import RESULT_FILES

PNG = b"\x89PNG\r\n\x1a\n"
# the FedPCA paper's 34 features: the 41 columns without protocol_type, service, flag, land, logged_in,
# is_host_login, is_guest_login (SOURCE.md)
PAPER_COLUMNS = [i for i in range(41) if i not in (1, 2, 3, 6, 11, 20, 21)]


def _read(path: Path):
    """(features [n, 34], is_attack [n]) of an NSL-KDD file, with csv and numpy only."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    X = np.array([[float(r[i]) for i in PAPER_COLUMNS] for r in rows])
    return X, np.array([r[41] != "normal" for r in rows])


def _file(root: Path, name: str) -> Path:
    plain = root / "nsl-kdd" / name
    return plain if plain.is_file() else plain.with_name(name + ".gz")


def _rank_auc(scores, positive) -> float:
    """ROC-AUC in percent by the rank formula (Mann-Whitney U, average ranks for ties)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    values, inverse = np.unique(scores, return_inverse=True)
    ranks = (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]      # ties share their mean rank
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return 100.0 * (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.fixture(scope="module")
def numpy_reference(require_data):
    """Centralized PCA on KDDTest-21 from numpy alone: z-score with the normal training rows' mean and std,
    top-k eigenvectors of X^T X / n (numpy.linalg.eigh), squared residuals, AUC by ranks."""
    root = require_data("nsl-kdd-test21")
    X_train, attack = _read(_file(root, "KDDTrain+.txt"))
    normal = X_train[~attack]
    mean, std = normal.mean(0), normal.std(0)
    std[std == 0] = 1.0                                # num_outbound_cmds is 0 in every row
    Xn = (normal - mean) / std
    X_test, y_test = _read(_file(root, "KDDTest-21.txt"))
    Xt = (X_test - mean) / std
    vecs = np.linalg.eigh(Xn.T @ Xn / len(Xn))[1][:, ::-1]
    out = {}
    for k in (15, 20):
        Z = vecs[:, :k]
        scores = ((Xt - Xt @ Z @ Z.T) ** 2).sum(1)
        out[k] = _rank_auc(scores, y_test)
    return out


def _printed_row(text: str, title: str, method: str) -> dict:
    """The row of ``method`` in the table printed under the heading that starts with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + " ("))
    header = lines[start + 2].split()
    for line in lines[start + 4:]:
        if not line.strip():
            break
        cells = line.split()
        if cells[0] == method:
            return dict(zip(header, [cells[0], " ".join(cells[1:len(cells) - len(header) + 2]),
                                     *cells[len(cells) - len(header) + 2:]]))
    raise AssertionError(f"no row {method!r} under {title!r}")


@pytest.mark.needs_data("nsl-kdd-test21")
@pytest.mark.parametrize("k", [20, 15])
def test_kddtest21_centralized_auc_matches_numpy(tmp_path, capsys, data_root, numpy_reference, k):
    out = tmp_path / "t21"
    assert main(["fedpca", "--data-dir", str(data_root), "--test", "test21", "--methods", "centralized", "-k", str(k),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "KDDTest+" not in text
    printed = float(_printed_row(text, "KDDTest-21", "centralized")["auc"])
    saved = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["test"], r["method"], r["scaler"]) for r in saved] == [("test21", "centralized", "centralized")]
    assert printed == pytest.approx(numpy_reference[k], abs=0.01)
    assert saved[0]["auc"] == pytest.approx(numpy_reference[k], abs=0.01)
    print(f"KDDTest-21, centralized PCA, k = {k}: AUC {saved[0]['auc']:.4f} (numpy {numpy_reference[k]:.4f})")


@pytest.mark.needs_data("nsl-kdd", "nsl-kdd-test21")
def test_both_test_sets_honest_default_and_convergence_plot(tmp_path, capsys, data_root):
    out = tmp_path / "both"
    argv = ["fedpca", "--data-dir", str(data_root), "--test", "both", "--methods", "centralized,fedpg,local-only",
            "-k", "20", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for heading in ("KDDTest+ (22,544 rows: 9,711 normal, 12,833 attacks)",
                    "KDDTest-21 (11,850 rows: 2,152 normal, 9,698 attacks)"):
        assert f"\n{heading}\n" in text
    assert "threshold: train-quantile, honest" in text and "note:" not in text and "paper:" not in text
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == {"name": "train-quantile", "honest": True, "threshold_from": "normal training rows"}
    assert [(r["test"], r["method"]) for r in results["rows"]] == [
        (t, m) for t in ("test+", "test21") for m in ("centralized", "fedpg", "local-only")]
    by = {(r["test"], r["method"]): r for r in results["rows"]}
    # the same subspace and training rows: the same threshold on both test sets
    assert by["test+", "fedpg"]["threshold"] == by["test21", "fedpg"]["threshold"]
    assert by["test+", "fedpg"]["rounds"] < 1000 and by["test+", "fedpg"]["angle"] < 1e-5
    assert _printed_row(text, "KDDTest+", "fedpg")["scaler"] == "own"
    assert _printed_row(text, "KDDTest-21", "centralized")["scaler"] == "centralized"
    assert set(results["convergence"]) == {"fedpg"}
    for name in ("roc.png", "convergence.png"):
        assert (out / name).read_bytes()[:8] == PNG
        assert str(out / name) in text
    assert "convergence.png" in RESULT_FILES
    # a re-run with the same settings is accepted (every file there is one of fedsim's result files)
    assert main(argv) == 0
    assert "fedsim: error" not in capsys.readouterr().err


@pytest.mark.needs_data("nsl-kdd")
def test_paper_protocol_says_its_threshold_reads_the_test_set(tmp_path, capsys, data_root):
    assert main(["fedpca", "--data-dir", str(data_root), "--methods", "centralized", "-k", "20", "--protocol",
                 "paper-minmax", "--out", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "note: the scores are min-max normalised over the test set and tau is the authors' value" in text
    assert "not an honest evaluation" in text
    paper = next(line for line in text.splitlines() if line.strip().startswith("paper: FedPG (k=30)"))
    assert "89.61" in paper and "75.1" not in paper     # their time is for 1,000 rounds: not in our seconds column
    assert "their FedPG took 75.1 s for 1,000 rounds on their hardware\n" in text   # no paper variant ran here
    assert json.loads((tmp_path / "p" / "results.json").read_text())["protocol"]["honest"] is False


@pytest.mark.needs_data("nsl-kdd")
def test_q_statistic_leaves_the_paper_variants_out_of_the_default_methods(tmp_path, capsys, data_root, monkeypatch):
    """The Jackson-Mudholkar threshold is on the scale of an orthonormal basis: the paper variants' raw Z flags
    every normal row (FPR ~100 %), so the default method list leaves them out under q-statistic and the library
    refuses them."""
    from fedsim.pipelines import fedpca_nslkdd as pipeline

    monkeypatch.setattr(pipeline, "METHODS", ("centralized", "fedpg-paper"))   # the default list, made small
    out = tmp_path / "q"
    assert main(["fedpca", "--data-dir", str(data_root), "--protocol", "q-statistic", "--paper-rounds", "2",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["centralized"] and rows[0]["fpr"] < 5
    assert "not for the paper variants' raw Z" in capsys.readouterr().out
    data = pipeline.prepare(data_root)
    paper = pipeline.train_method("fedpg-paper", data, 10, rounds=2)
    assert not paper.orthonormal
    with pytest.raises(ValueError, match="'q-statistic' needs an orthonormal subspace; fedpg-paper"):
        pipeline.evaluate_method(paper, data, "q-statistic")
    assert pipeline.evaluate_method(paper, data, "train-quantile")["fpr"] < 5   # the honest quantile still works


@pytest.mark.needs_data("nsl-kdd")
def test_global_scaler_all_normal_makes_exact_federated_match_centralized(tmp_path, capsys, data_root):
    rows = {}
    for scaler in ("blocks", "all-normal"):
        out = tmp_path / scaler
        assert main(["fedpca", "--data-dir", str(data_root), "--methods", "centralized,exact-federated", "-k", "15",
                     "--global-scaler", scaler, "--out", str(out)]) == 0
        text = capsys.readouterr().out
        saved = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
        rows[scaler] = saved
        label = "global (all normal)" if scaler == "all-normal" else "global (blocks)"
        assert saved["exact-federated"]["scaler"] == label and _printed_row(text, "KDDTest+", "exact-federated")[
            "scaler"] == label
    blocks, everything = rows["blocks"], rows["all-normal"]
    assert abs(blocks["exact-federated"]["auc"] - blocks["centralized"]["auc"]) > 0.3      # 91.41 vs 90.81
    for key in ("auc", "auc_DoS", "auc_Probe", "auc_R2L", "auc_U2R", "accuracy", "f1", "fpr", "threshold"):
        assert everything["exact-federated"][key] == pytest.approx(everything["centralized"][key], rel=1e-9, abs=1e-9)
    assert everything["centralized"]["auc"] == blocks["centralized"]["auc"]


def test_new_flags_have_help_with_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["fedpca", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--test {test+,test21,both}", "one table each) (default: test+)",
                     "--global-scaler {blocks,all-normal}", "centralized PCA) (default: blocks)",
                     "--rounds ROUNDS", "at k = 10) (default: 1000)", "--tol TOL", "0 = run all --rounds (default: 1e-06)",
                     "--paper-rounds PAPER_ROUNDS", "(the paper's) (default: 100)",
                     "from the test scores) (default: train-quantile)"):
        assert fragment in text, fragment


@pytest.mark.parametrize("argv, fragment", [
    (["--test", "test-21"], "argument --test: invalid choice: 'test-21' (choose from"),
    (["--global-scaler", "all"], "argument --global-scaler: invalid choice: 'all' (choose from"),
    (["--protocol", "honest"], "argument --protocol: invalid choice: 'honest' (choose from"),
    (["--paper-rounds", "0"], "--paper-rounds must be >= 1, got 0"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--tol", "-0.001"], "--tol must be >= 0 and finite, got -0.001"),
    (["--tol", "nan"], "--tol must be >= 0 and finite, got nan"),
    (["--tol", "x"], "argument --tol: invalid float value: 'x'"),
    (["--protocol", "q-statistic", "--methods", "fedpg,fedpe-paper"],
     "--protocol q-statistic needs an orthonormal subspace, and fedpe-paper (a paper variant) scores with its raw"),
])
def test_bad_new_flag_values_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path / "no-data"))
    assert main(["fedpca", *argv]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: ") and fragment in lines[0], err
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.needs_data("nsl-kdd")
def test_the_default_run_converges(tmp_path, capsys, data_root):
    """`fedsim fedpca` with default arguments (about 15 s here): every converging method reaches its optimum."""
    out = tmp_path / "default"
    assert main(["fedpca", "--data-dir", str(data_root), "--out", str(out)]) == 0
    by = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert by["fedpg"]["angle"] < 1e-5 and by["fedpg"]["rounds"] < 1000
    assert by["fedpg-decentralized"]["angle"] < 1e-5 and by["fedpg-decentralized"]["rounds"] == 1000
    assert by["fedpg-paper"]["rounds"] == 100
    assert math.isclose(by["fedpg"]["auc"], by["exact-federated-local"]["auc"], abs_tol=0.01)


@pytest.mark.needs_data("nsl-kdd")
def test_the_rounds_legend_names_only_the_methods_that_ran(tmp_path, capsys, data_root):
    assert main(["fedpca", "--data-dir", str(data_root), "--methods", "fedpg", "-k", "5", "--out",
                 str(tmp_path / "one")]) == 0
    legend = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("rounds:"))
    assert "fedpg stops once" in legend and "decentralized" not in legend and "paper variants" not in legend
    assert main(["fedpca", "--data-dir", str(data_root), "--methods", "fedpe-paper", "-k", "5", "--paper-rounds", "2",
                 "--protocol", "paper-minmax", "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    legend = next(line for line in out.splitlines() if line.startswith("rounds:"))
    assert legend == "rounds: rounds that sent messages (the paper variants --paper-rounds 2)"
    assert "(ours: the seconds column, 2 rounds of the paper variants)" in out
    # results.json records the command's settings only (a new internal default would refuse every older folder)
    args = json.loads((tmp_path / "two" / "results.json").read_text())["args"]
    assert not {"func", "locks_out", "interrupt_hint", "run_options"} & set(args) and args["paper_rounds"] == 2
