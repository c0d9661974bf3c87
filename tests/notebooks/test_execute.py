"""Every notebook in notebooks/ runs end to end in a Jupyter kernel (nbclient), on tiny configs, without an error
and without a warning, and writes only under the results folder it is given.

The notebooks take two environment variables, which the test sets: ``FEDSIM_DATA_DIR`` (the suite's data folder,
tests/conftest.py) and ``FEDSIM_RESULTS_DIR`` (an empty temporary folder, so that each notebook finds no results
and runs its studies' tiny configs, experiments.tour.NOTEBOOK_TINY). The kernel starts in an empty working directory.
leakage.ipynb (~30 s: 12 inversions at 400 iterations and a live sweep) is marked slow; the others take ~5-15 s
each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]' (nbclient, nbformat, ipykernel)")
nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
SLOW = {"leakage.ipynb"}
DATA = {"convergence.ipynb": (), "topologies.ipynb": (), "fedpca_anomaly.ipynb": ("nsl-kdd",),
        "leakage.ipynb": ("mnist-victims",)}


def execute(path: Path, cwd: Path, env: dict) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env)              # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def params():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        marks = [pytest.mark.needs_data(*DATA[path.name])] if DATA.get(path.name) else []
        if path.name in SLOW:
            marks.append(pytest.mark.slow)
        yield pytest.param(path, marks=marks, id=path.name)


def test_every_notebook_is_covered():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(DATA)


@pytest.mark.parametrize("path", list(params()))
def test_notebook_executes_without_error_or_warning(path, tmp_path, data_root):
    results, cwd = tmp_path / "results", tmp_path / "cwd"
    cwd.mkdir()
    nb = execute(path, cwd, {"FEDSIM_DATA_DIR": str(data_root), "FEDSIM_RESULTS_DIR": str(results),
                             "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    images = 0
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            assert out.output_type != "error", f"{path.name} code cell {i}: {out.get('ename')}: {out.get('evalue')}"
            if out.output_type == "stream":
                assert out.name == "stdout", f"{path.name} code cell {i} wrote to stderr:\n{out.text}"
                assert "Warning" not in out.text, f"{path.name} code cell {i}:\n{out.text}"
            images += "image/png" in out.get("data", {})
    assert images >= 2, f"{path.name}: {images} figure(s) shown"
    assert list(cwd.iterdir()) == []                                 # nothing written relative to the cwd
    assert results.is_dir()
