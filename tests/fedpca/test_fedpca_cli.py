import json

import pytest

from fedsim.cli import main

pytestmark = pytest.mark.needs_data("nsl-kdd")     # tests/conftest.py: skip, or fail with FEDSIM_DATA_DIR set


def test_fedpca_command_prints_one_table_and_saves_results(tmp_path, capsys, data_root):
    out = tmp_path / "fedpca"
    rc = main(["fedpca", "--data-dir", str(data_root), "--methods", "centralized,fedpg-paper,fedpg", "--rounds", "3",
               "-k", "20", "--protocol", "paper-minmax", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("centralized", "fedpg-paper", "fedpg", "paper: FedPG (k=30)"):
        assert name in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["centralized", "fedpg-paper", "fedpg"]
    assert rows[0]["auc"] == pytest.approx(91.01, abs=0.005)     # the paper's centralized k = 20 AUC
    assert rows[1]["MB_sent"] > 0 and rows[0]["MB_sent"] == 0
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fedpca_k_larger_than_d_is_a_named_error(tmp_path, capsys, data_root):
    rc = main(["fedpca", "--data-dir", str(data_root), "--methods", "centralized", "-k", "40", "--out", str(tmp_path)])
    assert rc == 2
    assert "k > d" in capsys.readouterr().err


def test_fedpca_unknown_method_is_named(tmp_path, capsys, data_root):
    rc = main(["fedpca", "--data-dir", str(data_root), "--methods", "fedpgg", "--out", str(tmp_path)])
    assert rc == 2
    assert "fedpgg" in capsys.readouterr().err
