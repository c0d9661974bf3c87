import json
import pytest

from fedsim.cli import main

@pytest.mark.needs_data("mnist-victims")
def test_attack_command_prints_table_and_writes_grid(tmp_path, capsys, data_root):
    rc = main(["attack", "--data-dir", str(data_root), "--victims", "1", "--iterations", "150", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    table = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in table[2:]] == ["ig", "dia", "informed"]   # one row per attack
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    by = {r["attack"]: r for r in rows}
    assert by["informed"]["ssim"] > by["ig"]["ssim"] and by["dia"]["ssim"] > by["ig"]["ssim"]
    assert all(r["label_ok"] == 1 for r in rows)
    assert (tmp_path / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"


def test_attack_command_rejects_unknown_models_and_attacks(tmp_path, capsys):
    assert main(["attack", "--model", "vgg", "--out", str(tmp_path)]) == 2
    assert "unknown --model 'vgg'" in capsys.readouterr().err
    assert main(["attack", "--attack", "dlg2", "--out", str(tmp_path)]) == 2
    assert "unknown attack 'dlg2'" in capsys.readouterr().err
    assert main(["attack", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads >= 1" in capsys.readouterr().err


@pytest.mark.needs_data("cifar10-victims")
def test_attack_command_runs_other_models_on_cifar(tmp_path, capsys, data_root):
    rc = main(["attack", "--model", "lenet", "--dataset", "cifar10", "--attack", "ig, informed,ig", "--victims", "2",
               "--iterations", "5", "--data-dir", str(data_root), "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sorted({r["attack"] for r in rows}) == ["ig", "informed"] and len(rows) == 4
    assert all(r["iterations"] == 5 for r in rows)
