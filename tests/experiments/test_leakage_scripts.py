"""The DIA reproduction and multi-step scripts keep their results folders honest: a rerun with the same settings
resumes or repeats, one with other settings (or into another command's folder) is refused in one line unless
--overwrite, a folder in use by another process is refused, and missing data is one line, not a traceback."""

from __future__ import annotations

import json

import pytest

from experiments import leakage_multistep, leakage_reproduce
from fedsim.runs import folder_lock

pytestmark = pytest.mark.needs_data("mnist-victims")


def one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_leakage_reproduce_resumes_same_settings_and_refuses_others(tmp_path, capsys):
    out = tmp_path / "dia"
    base = ["mnist", "--max-iterations", "2", "--out", str(out)]
    assert leakage_reproduce.main([*base, "--attacks", "ig"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["command"] == "leakage_reproduce" and first["args"]["seed"] == 0
    assert {r["attack"] for r in first["rows"]} == {"ig"} and len(first["rows"]) == 10
    assert (out / "reconstructions.png").is_file()
    capsys.readouterr()

    assert leakage_reproduce.main([*base, "--attacks", "ig,dia"]) == 0          # same settings: ig kept, dia added
    err = capsys.readouterr().err
    assert "ig: done already, skipped" in err
    second = json.loads((out / "results.json").read_text())
    assert second["rows"][:10] == first["rows"] and {r["attack"] for r in second["rows"][10:]} == {"dia"}

    assert leakage_reproduce.main([*base, "--attacks", "ig", "--seed", "1"]) == 2   # would mix seeds: refused
    one_error_line(capsys.readouterr().err, "seed: 0 -> 1", "--overwrite")
    assert json.loads((out / "results.json").read_text()) == second                  # untouched

    assert leakage_reproduce.main([*base, "--attacks", "ig", "--seed", "1", "--overwrite"]) == 0
    third = json.loads((out / "results.json").read_text())
    assert third["args"]["seed"] == 1 and {r["attack"] for r in third["rows"]} == {"ig"}


def test_leakage_reproduce_refuses_a_folder_of_an_older_format_in_use_or_bad_data(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"rows": [{"attack": "ig"}], "recon": {}}))  # no settings recorded
    assert leakage_reproduce.main(["mnist", "--attacks", "ig", "--max-iterations", "2", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "an earlier leakage_reproduce that recorded no settings", "--overwrite")
    with folder_lock(tmp_path / "busy"):
        assert leakage_reproduce.main(["mnist", "--max-iterations", "2", "--out", str(tmp_path / "busy")]) == 2
        one_error_line(capsys.readouterr().err, "in use by another fedsim process")
    assert leakage_reproduce.main(["mnist", "--max-iterations", "2", "--out", str(tmp_path / "x"),
                                   "--data-dir", str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys.readouterr().err, "--data-dir")
    with pytest.raises(SystemExit):
        leakage_reproduce.main(["mnist", "--attacks", "dai", "--out", str(tmp_path / "y")])


def test_leakage_multistep_refuses_other_settings_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "ms"
    base = ["--victims", "0", "--lr", "0.1", "--steps", "1", "2", "--iterations", "2", "--no-grid",
            "--out", str(out)]
    assert leakage_multistep.main(base) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["command"] == "leakage_multistep" and saved["args"]["steps"] == [1, 2]
    assert [r["steps"] for r in saved["summary"]] == [1, 2]
    csv_before = (out / "multistep.csv").read_text()
    capsys.readouterr()
    assert leakage_multistep.main(base) == 0                                  # the same settings: repeated
    assert leakage_multistep.main([*base, "--seed", "3"]) == 2               # another seed: refused
    one_error_line(capsys.readouterr().err, "seed: 0 -> 3", "--overwrite")
    assert (out / "multistep.csv").read_text() == csv_before
    assert leakage_multistep.main([*base, "--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["args"]["seed"] == 3
    assert leakage_multistep.main([*base, "--seed", "3", "--overwrite"]) == 0 and not (out / "grid.png").exists()
    assert leakage_multistep.main([*base[:-2], "--out", str(tmp_path / "g"), "--seed", "4"]) == 0
    (tmp_path / "g" / "grid.png").write_bytes(b"an earlier run's grid")   # stands for one drawn with other settings
    assert leakage_multistep.main([*base[:-2], "--out", str(tmp_path / "g"), "--seed", "5", "--overwrite"]) == 0
    assert not (tmp_path / "g" / "grid.png").exists()                     # --no-grid: no stale grid left beside
    for flag, value in (("--steps", "0"), ("--lr", "nan"), ("--lr", "inf"), ("--victims", "128")):
        args = [*base]
        i = args.index(flag)
        args[i + 1] = value
        with pytest.raises(SystemExit):
            leakage_multistep.main(args)
        assert f"{flag} must be" in capsys.readouterr().err


def test_leakage_defences_names_a_results_file_it_did_not_write(tmp_path, capsys):
    """A results.csv in --out that is not this script's (another table, a cut-off line, a strength that is not a
    number) is one error line, not a KeyError traceback, and is left as it was."""
    from experiments import leakage_defences

    columns = leakage_defences.COLUMNS
    header, n = ",".join(columns), len(columns)
    good = ["noise", "0.1", "ig", *["1"] * (n - 3)]
    def row(**changes):
        return ",".join(changes.get(c, v) for c, v in zip(columns, good))
    cases = {"a,b\n1,2\n": "no column 'sweep'",
             ",".join(["sweep", "strength", "attack", *leakage_defences.CONFIG_KEYS]) + "\n": "no column 'p'",
             f"{header}\n{row(strength='abc')}\n": "a strength that is not a number",
             f"{header}\n{row(test_acc='high')}\n": "a test_acc that is not a number",
             f"{header}\nnoise,0.1,ig,1\n": "line 2 is malformed"}
    for text, what in cases.items():
        out = tmp_path / "bad"
        out.mkdir(exist_ok=True)
        (out / "results.csv").write_text(text)
        assert leakage_defences.cli(["--quick", "--out", str(out)]) == 2
        one_error_line(capsys.readouterr().err, "results.csv", what)
        assert (out / "results.csv").read_text() == text
    with folder_lock(tmp_path / "busy"):
        assert leakage_defences.cli(["--quick", "--out", str(tmp_path / "busy")]) == 2
        one_error_line(capsys.readouterr().err, "in use by another fedsim process")


def test_the_scripts_refuse_an_out_that_is_a_file_before_any_work(tmp_path, capsys, monkeypatch):
    """--out naming a file (or a path under one) is one line before any attack runs (it was a FileExistsError
    traceback when the results were written); a refused run with `..` in --out leaves no folder behind."""
    from experiments import flower_leakage, leakage_defences

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    runs = {"leakage_reproduce": lambda out: leakage_reproduce.main(["mnist", "--attacks", "ig", "--max-iterations",
                                                                     "1", "--out", out]),
            "leakage_multistep": lambda out: leakage_multistep.main(["--victims", "0", "--steps", "1", "--iterations",
                                                                     "1", "--no-grid", "--out", out]),
            "leakage_defences": lambda out: leakage_defences.cli(["--quick", "--sweeps", "noise", "--out", out]),
            "flower_leakage": lambda out: flower_leakage.main(["--out", out])}
    for name, run in runs.items():
        for out in ("afile", "afile/sub"):
            assert run(out) == 2, name
            one_error_line(capsys.readouterr().err, "afile is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"
    with folder_lock(tmp_path / "busy"):   # flower_leakage's lock, checked without deploying anything
        assert flower_leakage.main(["--out", "busy"]) == 2
        one_error_line(capsys.readouterr().err, "in use by another fedsim process")
    with folder_lock("new/../x"):
        assert (tmp_path / "x").is_dir()
    assert not (tmp_path / "x").exists() and not (tmp_path / "new").exists()
