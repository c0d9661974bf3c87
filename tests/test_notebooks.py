"""The notebooks in notebooks/: stored clean, and leakage.ipynb runs top to bottom.

Fast checks (every notebook): valid nbformat-4 JSON, stored without outputs or execution counts, and every code
cell compiles. nbformat itself is not a dependency, so the structure is checked by hand (the v4 schema's
required keys and types); if nbformat happens to be installed it validates too.

Slow check (``-m slow``, ~10-15 s per variant on one thread): every code cell of notebooks/leakage.ipynb is
exec'd in order in one namespace with matplotlib's Agg backend, as "Run all" would. The notebook resolves its
paths itself and takes two environment variables, which the test sets:

* ``FEDSIM_DATA_DIR``: where ``mnist/dia_mnist_128.npz`` is. The test takes the data folder of the whole suite
  (tests/conftest.py: ``$FEDSIM_DATA_DIR``, else the fedsim cache; a skip if the file is missing, a failure if
  the variable is set) and hands it to the notebook through the variable, which the notebook reads first;
* ``FEDSIM_RESULTS_DIR``: the results folder the notebook reads (``leakage_defences/results.csv``) and writes
  (``notebook_leakage/reconstructions.png``), default ``<repo>/results``. The test points it at ``tmp_path``
  and runs from an empty working directory, so nothing is written into the checkout. Both branches of the
  leakage-curve cell run: with a small ``results.csv`` (plot from the CSV) and without one (live sweep).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
LEAKAGE = NOTEBOOKS / "leakage.ipynb"
CELL_KEYS = {"markdown": {"cell_type", "id", "metadata", "source", "attachments"},
             "raw": {"cell_type", "id", "metadata", "source", "attachments"},
             "code": {"cell_type", "id", "metadata", "source", "outputs", "execution_count"}}
CELL_ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def code_cells(nb: dict) -> list[str]:
    return [source(c) for c in nb["cells"] if c["cell_type"] == "code"]


# --- fast: structure, no outputs, code compiles --------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_clean_nbformat4(path):
    nb = load(path)
    assert set(nb) == {"cells", "metadata", "nbformat", "nbformat_minor"}, sorted(nb)
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int) and nb["nbformat_minor"] >= 0
    assert isinstance(nb["metadata"], dict) and isinstance(nb["cells"], list) and nb["cells"]
    ids = []
    for i, cell in enumerate(nb["cells"]):
        where = f"{path.name} cell {i}"
        kind = cell.get("cell_type")
        assert kind in CELL_KEYS, f"{where}: cell_type {kind!r}"
        assert set(cell) <= CELL_KEYS[kind], f"{where}: unexpected keys {sorted(set(cell) - CELL_KEYS[kind])}"
        assert isinstance(cell.get("metadata"), dict), f"{where}: metadata"
        src = cell.get("source")
        assert isinstance(src, str) or (isinstance(src, list) and all(isinstance(s, str) for s in src)), where
        if kind == "code":
            assert cell.get("outputs") == [], f"{where}: stored outputs"
            assert "execution_count" in cell and cell["execution_count"] is None, f"{where}: execution_count"
        # required from nbformat 4.5 on (without them nbformat warns: MissingIDFieldWarning)
        assert isinstance(cell.get("id"), str) and CELL_ID.match(cell["id"]), f"{where}: id {cell.get('id')!r}"
        ids.append(cell["id"])
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate cell ids"
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), f"{path.name}: cell ids need nbformat 4.5"
    try:
        import nbformat
    except ImportError:
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # MissingIDFieldWarning and friends fail the test
        nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_code_cells_compile(path):
    cells = code_cells(load(path))
    assert cells
    for i, src in enumerate(cells):
        compile(src, f"{path.name} code cell {i}", "exec")


def test_leakage_notebook_is_nbformat_4_5_with_ids():
    nb = load(LEAKAGE)
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert all("id" in c for c in nb["cells"])
    assert nb["cells"][0]["cell_type"] == "markdown" and "docs/attacks.md" in source(nb["cells"][0])


# --- slow: run leakage.ipynb -----------------------------------------------------------------------------------

def write_defences_csv(path: Path) -> None:
    """A small results.csv in experiments/leakage_defences.py's format (two sweeps, one stale-settings row)."""
    from experiments.leakage_defences import COLUMNS

    config = {"victims": 2, "iterations": 400, "rounds": 20, "clients": 20, "clients_per_round": 10,
              "local_steps": 5, "train_batch": 32, "lr": 0.1, "clip_rel": 1.0, "seed": 0}
    rows = [{"sweep": "dropout", "strength": 0.25, "attack": "ig", **config, "iterations": 40, "ssim": 0.1,
             "ssim_std": 0, "psnr": 9, "test_acc": 0.1}]                       # other settings: filtered out
    for p, ig, dia, acc in [(0.0, 0.99, 0.99, 0.86), (0.25, 0.69, 0.99, 0.85), (0.5, 0.56, 0.99, 0.85)]:
        rows += [{"sweep": "dropout", "strength": p, "attack": a, **config, "ssim": s, "ssim_std": 0.05, "psnr": 30,
                  "test_acc": acc} for a, s in (("ig", ig), ("dia", dia))]
    for sigma, ig, acc in [(0.0, 0.99, 0.71), (0.01, 0.69, 0.71), (0.1, 0.01, 0.75)]:
        rows.append({"sweep": "noise", "strength": sigma, "attack": "ig", **config, "ssim": ig, "ssim_std": 0.02,
                     "psnr": 20, "test_acc": acc})
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def run_notebook(path: Path) -> dict:
    """Exec every code cell in order in one namespace (like "Run all"); returns the namespace."""
    ns: dict = {"__name__": "__main__"}
    for i, src in enumerate(code_cells(load(path))):
        exec(compile(src, f"{path.name} code cell {i}", "exec"), ns)
    return ns


@pytest.mark.slow
@pytest.mark.needs_data("mnist-victims")
@pytest.mark.parametrize("curve", ["csv", "live"])
def test_leakage_notebook_runs(curve, tmp_path, monkeypatch, capsys, data_root):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    data = data_root                                                   # absolute, resolved before any chdir
    results, cwd = tmp_path / "results", tmp_path / "cwd"
    cwd.mkdir()
    if curve == "csv":
        write_defences_csv(results / "leakage_defences" / "results.csv")
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(data))
    monkeypatch.setenv("FEDSIM_RESULTS_DIR", str(results))
    monkeypatch.chdir(cwd)
    threads = torch.get_num_threads()
    try:
        ns = run_notebook(LEAKAGE)
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    out = capsys.readouterr().out

    assert list(cwd.iterdir()) == []                                   # nothing written relative to the cwd
    assert ns["ROOT"] == REPO and ns["DATA"] == data and ns["OUT"] == results / "notebook_leakage"
    rows = ns["rows"]
    assert [(r["attack"], r["victim"]) for r in rows] == [(a, v) for a in ("ig", "dia", "informed") for v in range(4)]
    assert all(r["label_ok"] == 1 and r["iterations"] == 400 for r in rows)
    mean = {a: sum(r["ssim"] for r in rows if r["attack"] == a) / 4 for a in ("ig", "dia", "informed")}
    assert mean["informed"] > mean["ig"] + 0.1 and mean["dia"] > mean["ig"] + 0.1, mean
    assert (results / "notebook_leakage" / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean_ssim" in out and "informed" in out

    if curve == "csv":
        assert ns["sweeps"] == ["dropout", "noise"]
        assert len(ns["curve"]) == 9                                   # the stale-settings row is dropped
        assert "sweep_rows" not in ns and "not found" not in out
    else:
        assert "not found" in out and "python experiments/leakage_defences.py" in out
        sweep = ns["sweep_rows"]
        assert [(r["p"], r["victim"]) for r in sweep] == [(p, v) for p in (0.0, 0.25, 0.5) for v in (0, 1)]
        ssim = {p: sum(r["ssim"] for r in sweep if r["p"] == p) / 2 for p in (0.0, 0.5)}
        assert ssim[0.0] > 0.9 and ssim[0.0] > ssim[0.5] + 0.1, ssim
