"""Suite-wide settings, and where the tests find the data sets.

Data: the tests look for data where users' code does, through the project's own setting
(``fedsim.data.paths.data_dir()``: ``$FEDSIM_DATA_DIR``, else the user cache), resolved once here at the start
of the session (to an absolute path, so tests that change the working directory still find it). A test that
needs data files asks for them in one of two ways, and gets the data folder back:

* ``@pytest.mark.needs_data("mnist-victims", ...)`` on the test, plus the ``data_root`` fixture for the path;
* the ``require_data`` fixture, a function: ``root = require_data("nsl-kdd")`` (inside a test or a fixture).

Each argument is a name from ``DATA_SETS`` (the files are listed once, below) or a path relative to the data
folder. A file ``x`` also counts as present as ``x.gz`` where the loaders accept both. If a file is missing:

* without ``FEDSIM_DATA_DIR`` the test SKIPS, with a reason naming the missing path and the variable;
* with ``FEDSIM_DATA_DIR`` set the test FAILS (``pytest_runtest_makereport`` below turns the skip into a
  failure): CI sets the variable, so a green CI run proves that the data tests ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedsim.data.paths import ENV_VAR, data_dir

# One intra-op thread: the tensors here are small, and on a busy machine torch with 2 threads was measured
# 10-100x slower than with 1 (benchmarks/RESULTS.md); fedsim's own default is threads = 1 for the same reason.
torch.set_num_threads(1)

# name -> files (relative to the data folder) that the tests of that name need. A trailing "[.gz]" means the
# file may also be stored gzip'd (the MNIST and NSL-KDD loaders accept both).
DATA_SETS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist/t10k-images-idx3-ubyte[.gz]", "mnist/t10k-labels-idx1-ubyte[.gz]"),
    "mnist-victims": ("mnist/dia_mnist_128.npz",),
    "cifar10-victims": ("cifar10-sample/dia_cifar10_128.npz",),
    "nsl-kdd": ("nsl-kdd/KDDTrain+.txt[.gz]", "nsl-kdd/KDDTest+.txt[.gz]"),            # what fedpca's prepare reads
    "nsl-kdd-test21": ("nsl-kdd/KDDTrain+.txt[.gz]", "nsl-kdd/KDDTest-21.txt[.gz]"),   # ... with test="test21"
    # the four files exactly as the data set is distributed (tests/data checks these very files)
    "nsl-kdd-all": ("nsl-kdd/KDDTrain+.txt.gz", "nsl-kdd/KDDTest+.txt", "nsl-kdd/KDDTest-21.txt",
                    "nsl-kdd/KDDTrain+_20Percent.txt"),
}

_GZ = "[.gz]"


class MissingData(pytest.skip.Exception):
    """The skip a data test raises when its files are missing (recognised by ``pytest_runtest_makereport``)."""


class _DataSetting:
    """The data folder of this session and whether ``FEDSIM_DATA_DIR`` chose it (filled by pytest_configure)."""

    root: Path = Path()
    from_env: str = ""            # the variable's value at the start of the session ("" = not set)
    failures: list[str] = []      # node ids of data tests turned into failures


def _expand(names: tuple[str, ...]) -> list[str]:
    files = []
    for name in names:
        if name in DATA_SETS:
            files += DATA_SETS[name]
        elif "/" in name:
            files.append(name)
        else:   # a typo must not turn into a silent skip
            raise ValueError(f"unknown data set {name!r}: use one of {sorted(DATA_SETS)} or a relative file path")
    return files


def _missing(root: Path, names: tuple[str, ...]) -> list[str]:
    """The files of ``names`` that ``root`` lacks, as absolute paths ("...[.gz]": neither form is there)."""
    out = []
    for f in _expand(names):
        gz = f.endswith(_GZ)
        plain = f[: -len(_GZ)] if gz else f
        candidates = [root / plain] + ([root / (plain + ".gz")] if gz else [])
        if not any(c.is_file() for c in candidates):
            out.append(str(root / plain) + (_GZ if gz else ""))
    return out


def require(*names: str) -> Path:
    """The data folder, if it holds every file of ``names`` (data set names or relative paths); else raise
    ``MissingData`` (a skip, which becomes a failure when ``FEDSIM_DATA_DIR`` is set)."""
    root = _DataSetting.root
    missing = _missing(root, names)
    if missing:
        shown = ", ".join(missing)
        if _DataSetting.from_env:
            raise MissingData(f"missing data: {shown} not found, but {ENV_VAR} is set (data folder {root}), so the "
                              f"data tests must run; put the files there or point {ENV_VAR} at the folder that "
                              f"holds them (unset it to skip the data tests)")
        raise MissingData(f"missing data: {shown} not found ({ENV_VAR} is not set, so the data folder is the user "
                          f"cache {root}); set {ENV_VAR} to the folder that holds the data to run this test")
    return root


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data(*names): the test needs these data sets or files (tests/conftest.py)")
    env = os.environ.get(ENV_VAR, "")
    _DataSetting.from_env = env
    _DataSetting.root = data_dir().resolve()
    _DataSetting.failures = []
    if env:
        os.environ[ENV_VAR] = str(_DataSetting.root)     # absolute: tests that chdir (or start a subprocess) keep it


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_data"):
        require(*mark.args)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and _DataSetting.from_env and call.excinfo is not None
            and call.excinfo.errisinstance(MissingData)):
        report.outcome = "failed"
        report.longrepr = str(call.excinfo.value.msg)
        _DataSetting.failures.append(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _DataSetting.failures:
        terminalreporter.section("missing data", sep="=", red=True, bold=True)
        terminalreporter.line(f"{len(_DataSetting.failures)} data test(s) FAILED instead of skipping because "
                              f"{ENV_VAR} is set (data folder {_DataSetting.root}) but does not hold their files:")
        for nodeid in _DataSetting.failures:
            terminalreporter.line(f"  {nodeid}")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data folder of this session (absolute); pair with ``@pytest.mark.needs_data(...)``."""
    return _DataSetting.root


@pytest.fixture(scope="session")
def require_data():
    """``require_data(*names) -> data folder``, or a skip (a failure with FEDSIM_DATA_DIR set) if files are missing."""
    return require
