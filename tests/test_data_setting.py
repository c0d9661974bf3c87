"""The suite's data rule (tests/conftest.py), run on a tiny generated test file in a child pytest.

The child gets a copy of the real tests/conftest.py, so these tests exercise the hooks the suite uses: data tests
find their files through fedsim's data setting; a missing file skips the test, with a reason that names the path
and FEDSIM_DATA_DIR, when the variable is unset, and FAILS the run when it is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

TESTS = '''
import pytest


@pytest.fixture(scope="session")
def victims(require_data):
    return require_data("mnist-victims") / "mnist" / "dia_mnist_128.npz"


def test_without_data():
    pass


@pytest.mark.needs_data("mnist")
def test_marker(data_root):
    assert (data_root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_fixture(victims):
    assert victims.read_bytes() == b"npz"


def test_inline(require_data):
    assert require_data("nsl-kdd/KDDTest+.txt").is_absolute()
'''


def run_pytest(tmp_path: Path, data_env: str | None, cache: Path) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(CONFTEST, project / "conftest.py")
    (project / "test_generated.py").write_text(TESTS)
    (project / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")   # not the repo's settings
    env = {k: v for k, v in os.environ.items() if k != "FEDSIM_DATA_DIR"}
    env["XDG_CACHE_HOME"] = str(cache)                   # the default data folder: <cache>/fedsim
    if data_env is not None:
        env["FEDSIM_DATA_DIR"] = data_env
    return subprocess.run([sys.executable, "-m", "pytest", "-rfEs", "-p", "no:cacheprovider", "."],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_set_but_missing_data_fails_the_run_and_names_file_and_variable(tmp_path):
    data = tmp_path / "data"          # holds what test_marker needs; test_fixture's and test_inline's files are missing
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    (data / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"")       # plain or .gz: both count
    # a relative FEDSIM_DATA_DIR is resolved against the directory pytest starts in
    proc = run_pytest(tmp_path, os.path.relpath(data, tmp_path / "project"), tmp_path / "cache")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # the two tests that lack data do not skip: one fails in its fixture (an error), one in its body
    assert "1 failed, 2 passed, 1 error" in out and "skipped" not in out, out
    for missing in ("mnist/dia_mnist_128.npz", "nsl-kdd/KDDTest+.txt"):
        assert str(data / missing) in out, out
    assert f"FEDSIM_DATA_DIR is set (data folder {data})" in out, out
    assert "2 data test(s) FAILED instead of skipping" in out, out
    assert "test_generated.py::test_fixture" in out and "test_generated.py::test_inline" in out


def test_unset_variable_skips_with_the_path_and_the_variable(tmp_path):
    proc = run_pytest(tmp_path, None, tmp_path / "cache")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 3 skipped" in out, out
    cache = tmp_path / "cache" / "fedsim"
    assert f"{cache / 'mnist' / 't10k-images-idx3-ubyte'}[.gz]" in out
    assert str(cache / "mnist" / "dia_mnist_128.npz") in out
    assert "FEDSIM_DATA_DIR is not set" in out and "set FEDSIM_DATA_DIR to the folder" in out, out
