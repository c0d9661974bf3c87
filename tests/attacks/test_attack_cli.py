import json
from pathlib import Path

import pytest

from fedsim.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "mnist" / "dia_mnist_128.npz").is_file(), reason="no victim set")
def test_attack_command_prints_table_and_writes_grid(tmp_path, capsys):
    rc = main(["attack", "--data-dir", str(SHARED), "--victims", "1", "--iterations", "150", "--out", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("ig", "dia", "informed"))
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    by = {r["attack"]: r for r in rows}
    assert by["informed"]["ssim"] > by["ig"]["ssim"] and by["dia"]["ssim"] > by["ig"]["ssim"]
    assert all(r["label_ok"] == 1 for r in rows)
    assert (tmp_path / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"


def test_attack_command_rejects_unimplemented_models(tmp_path, capsys):
    assert main(["attack", "--model", "vit", "--out", str(tmp_path)]) == 2
    assert "only --model mlp" in capsys.readouterr().err
