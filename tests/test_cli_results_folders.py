"""``fedsim attack`` and ``fedsim fedpca`` never overwrite other results unasked (same rule as ``fedsim run``)."""

import json

import pytest

from fedsim.cli import main

pytestmark = pytest.mark.needs_data("mnist-victims")


def _attack(data_root, out, *extra):
    return main(["attack", "--data-dir", str(data_root), "--victims", "1", "--attack", "ig", "--iterations", "3",
                 "--no-progress", "--out", str(out), *extra])


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_same_settings_run_again_other_settings_are_refused_overwrite_replaces(tmp_path, capsys, data_root):
    out = tmp_path / "attack"
    assert _attack(data_root, out) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["command"] == "attack" and first["args"]["iterations"] == 3 and "func" not in first["args"]
    assert _attack(data_root, out, "--threads", "1") == 0           # same settings: the same results again
    capsys.readouterr()
    before = _snapshot(out)
    assert _attack(data_root, out, "--iterations", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsim: error: --out") and "iterations: 3 -> 4" in err[0]
    assert _snapshot(out) == before                                 # nothing touched
    assert _attack(data_root, out, "--iterations", "4", "--overwrite") == 0
    assert json.loads((out / "results.json").read_text())["args"]["iterations"] == 4


def test_a_run_folder_or_another_commands_results_are_refused(tmp_path, capsys, data_root):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.json").write_text('{"history": []}')
    (run_dir / "notes.txt").write_text("mine")
    assert _attack(data_root, run_dir) == 2
    assert "holds other results (history.json)" in capsys.readouterr().err
    assert _attack(data_root, run_dir, "--overwrite") == 0
    assert not (run_dir / "history.json").exists() and (run_dir / "notes.txt").read_text() == "mine"
    rc = main(["fedpca", "--data-dir", str(data_root), "--methods", "centralized", "--out", str(run_dir)])
    assert rc == 2                                                  # attack results are not fedpca's
    err = capsys.readouterr().err
    assert "holds other results" in err and "--overwrite" in err
